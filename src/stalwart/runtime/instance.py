"""A workflow instance held in a worker's memory, and how to build one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stalwart._engine import events as ev
from stalwart._engine.run import WorkflowRun
from stalwart.codec import TypeConverter
from stalwart.context import CONTEXT_VAR, WorkflowContext
from stalwart.decorators import WorkflowDefinition
from stalwart.runtime.clock import Cancellable


@dataclass(eq=False, slots=True)
class LiveInstance:
    """One owned instance: its replayed run plus the runtime's bookkeeping."""

    id: str
    run_id: str
    epoch: int
    defn: WorkflowDefinition[Any, Any]
    run: WorkflowRun
    seq: int
    deadline: float | None
    inbox_cursor: int = 0
    inbox_dirty: bool = True
    incoming: list[ev.Event] = field(default_factory=list)
    unsaved: list[ev.Event] = field(default_factory=list)
    driving: asyncio.Task[None] | None = None
    activity_tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    adopter: asyncio.Task[None] | None = None
    """The activity task driving the instance, which may run the next activity itself."""
    adopted: int | None = None
    """The activity ``adopter`` set aside to run once its drive ends (no task spawned)."""
    retry_handles: dict[int, Cancellable] = field(default_factory=dict)
    wake_handle: Cancellable | None = None
    acks: list[asyncio.Future[None]] = field(default_factory=list)
    warned_long_history: bool = False
    saved_search: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def next_wake(self) -> float | None:
        """When the instance next needs attention by itself (timer, retry or deadline)."""
        run = self.run
        times = [t.fire_at for t in run.timers.values()] if run.timers else []
        times += [a.retry_at for a in run.activities.values() if a.retry_at is not None]
        if self.deadline is not None and run.outcome is None:
            times.append(self.deadline)
        return min(times) if times else None

    def due_timer_events(self, now: float) -> list[ev.Event]:
        """TimerFired events for every timer due at ``now``, in firing order."""
        if not self.run.timers:
            return []  # the common case, once per step
        due = sorted(
            (t for t in self.run.timers.values() if t.fire_at <= now),
            key=lambda t: (t.fire_at, t.cmd),
        )
        return [ev.TimerFired(cmd=t.cmd) for t in due]

    def current_step(self) -> str | None:
        """A short description of what the instance waits for (shown by ``describe()``)."""
        run = self.run
        if run.outcome is not None:
            return None
        if run.intervention is not None and not run.intervention.done():
            return "waiting for an operator (retry_compensation)"
        for act in run.activities.values():
            suffix = f", attempt {act.attempt}" if act.attempt > 1 else ""
            return f"activity {act.name!r} (#{act.cmd}{suffix})"
        if run.timers:
            first = min(run.timers.values(), key=lambda t: t.fire_at)
            when = datetime.fromtimestamp(first.fire_at, tz=UTC).isoformat(timespec="seconds")
            return f"timer #{first.cmd} until {when}"
        names = run.pending_signal_names()
        if names:
            return "waiting for signal " + ", ".join(repr(n) for n in names)
        return None

    def cancel_everything(self) -> None:
        """Stop activity tasks and timers and close the run (the instance leaves memory)."""
        self.closed = True
        current = asyncio.current_task()
        for task in self.activity_tasks.values():
            if task is not current:  # an adopter mid-drive: it sees `closed` and stops
                task.cancel()
        self.activity_tasks.clear()
        self.adopted = None
        for handle in self.retry_handles.values():
            handle.cancel()
        self.retry_handles.clear()
        if self.wake_handle is not None:
            self.wake_handle.cancel()
            self.wake_handle = None
        for ack in self.acks:
            if not ack.done():
                ack.set_result(None)
        self.acks.clear()
        self.run.close()


def build_instance(
    *,
    instance_id: str,
    run_id: str,
    epoch: int,
    defn: WorkflowDefinition[Any, Any],
    started: ev.WorkflowStarted,
    start_time: float,
    converter: TypeConverter,
) -> LiveInstance:
    """Create the in-memory instance for a run (its code has not run yet).

    Raises :class:`stalwart.EncodingError` if the stored input no longer decodes into the
    workflow's parameter types.
    """
    args = defn.signature.decode_args(converter, started.input)

    def make_context(run: WorkflowRun) -> WorkflowContext:
        return WorkflowContext(
            run,
            instance_id=instance_id,
            run_id=run_id,
            workflow_name=defn.name,
            converter=converter,
            signature=defn.signature,
        )

    def encode_result(value: Any) -> Any:
        return defn.signature.encode_result(converter, value)

    run = WorkflowRun(
        instance_id,
        started,
        start_time,
        entry=lambda ctx: ctx.run_main(defn.fn(ctx, *args)),
        encode_result=encode_result,
        context_var=CONTEXT_VAR,
        make_context=make_context,
    )
    deadline = start_time + started.timeout if started.timeout is not None else None
    return LiveInstance(
        id=instance_id, run_id=run_id, epoch=epoch, defn=defn, run=run, seq=1, deadline=deadline
    )
