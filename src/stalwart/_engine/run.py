"""The replay state machine of one workflow run. Pure: no I/O, no clock, no threads.

A :class:`WorkflowRun` turns history events into workflow progress and workflow code into
new command events:

* :meth:`WorkflowRun.replay` feeds a recorded history to the code. Every command the code
  issues must match the next command event in the history (same type, same activity name);
  incoming events (results, timers, signals) are applied in history order, and the code is
  run until it blocks after each one. Any mismatch raises :class:`NonDeterminismError`
  naming the event index, what history holds and what the code asked for.
* :meth:`WorkflowRun.apply` feeds one new incoming event live and returns the events to
  append (the incoming event followed by the commands it caused).

Because command identity is the command's position (``cmd``) in deterministic creation
order, and incoming events are applied one at a time in history order, completion order
and race winners are part of the history and replay exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from stalwart._engine import events as ev
from stalwart._engine.loop import WorkflowLoop
from stalwart.errors import (
    ActivityError,
    CompensatedError,
    NonDeterminismError,
    UnknownHandlerError,
    error_info,
)

JSON = Any


class _Diverged(BaseException):
    """Unwinds workflow code once a divergence has been detected (never seen by users)."""


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``: ends the run and starts a new one."""

    def __init__(self, input: list[JSON]) -> None:
        super().__init__("continue as new")
        self.input = input


@dataclass(frozen=True, slots=True)
class UpdateHandler:
    """How the run validates and starts one named update."""

    validate: Callable[[list[JSON]], None]
    start: Callable[[str, list[JSON]], None]


@dataclass(slots=True)
class ChildState:
    """A child workflow started by this run."""

    cmd: int
    child_id: str
    parent_close: str
    future: asyncio.Future[ev.ChildWorkflowCompleted]
    done: bool = False


@dataclass(slots=True)
class PendingActivity:
    """An activity the code is waiting for (or that is still in flight)."""

    cmd: int
    name: str
    input: list[JSON]
    options: dict[str, JSON]
    future: asyncio.Future[JSON]
    scheduled_at: float = 0.0
    attempt: int = 1
    retry_at: float | None = None
    last_error: dict[str, JSON] | None = None
    heartbeat: JSON = None


@dataclass(slots=True)
class PendingTimer:
    """A durable timer that has not fired yet."""

    cmd: int
    fire_at: float
    on_fire: Callable[[], None]


@dataclass(slots=True)
class RunOutcome:
    """How the run ended: a terminal status and its event, or ``None`` while running."""

    status: str
    event: ev.Event


@dataclass(slots=True)
class _SignalChannel:
    buffered: deque[JSON] = field(default_factory=deque)
    waiters: deque[asyncio.Future[JSON]] = field(default_factory=deque)


EntryFactory = Callable[[Any], Coroutine[Any, Any, Any]]
"""Builds the workflow's main coroutine from the context object."""
ResultEncoder = Callable[[Any], JSON]


class WorkflowRun:
    """Drives one run of a workflow function; see the module docstring."""

    # Slots: a worker keeps up to max_cached runs in memory; a __dict__ each cost ~1.3 KiB.
    __slots__ = (
        "_closing",
        "_compensation_depth",
        "_conditions",
        "_context_var",
        "_cursor",
        "_diverged",
        "_encode_result",
        "_entry",
        "_history",
        "_main",
        "_new",
        "_next_cmd",
        "_now",
        "_patches",
        "_querying",
        "_signals",
        "activities",
        "cancel_requested",
        "children",
        "context",
        "instance_id",
        "intervention",
        "loop",
        "outcome",
        "query_handlers",
        "search_attributes",
        "seen_updates",
        "signal_handlers",
        "started",
        "timers",
        "update_handlers",
    )

    def __init__(
        self,
        instance_id: str,
        started: ev.WorkflowStarted,
        start_time: float,
        entry: EntryFactory,
        encode_result: ResultEncoder,
        context_var: contextvars.ContextVar[Any] | None = None,
        make_context: Callable[[WorkflowRun], Any] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.started = started
        self._now = start_time
        self.loop = WorkflowLoop(  # type: ignore[abstract]
            self.now, self._new_timer, self._cancel_timer
        )
        self._entry = entry
        self._encode_result = encode_result
        self._context_var = context_var
        self.context: Any = make_context(self) if make_context is not None else None
        self._next_cmd = 0
        self.activities: dict[int, PendingActivity] = {}
        self.timers: dict[int, PendingTimer] = {}
        self._signals: dict[str, _SignalChannel] = {}
        self.children: dict[str, ChildState] = {}
        self.signal_handlers: dict[str, Callable[[JSON], None]] = {}
        self.update_handlers: dict[str, UpdateHandler] = {}
        self.query_handlers: dict[str, Callable[[list[JSON]], Any]] = {}
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._querying = False
        self.search_attributes: dict[str, JSON] = {}
        self._compensation_depth = 0
        self.seen_updates: set[str] = set()
        self.intervention: asyncio.Future[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self.outcome: RunOutcome | None = None
        self.cancel_requested: str | None = None
        # Replay bookkeeping.
        self._history: Sequence[ev.HistoryEvent] = ()
        self._cursor = 0
        self._new: list[ev.Event] = []
        self._diverged: NonDeterminismError | None = None
        self._closing = False
        self._patches: dict[str, bool] = {}

    # -- public driving API ------------------------------------------------------------
    @property
    def is_replaying(self) -> bool:
        """True while the code is re-running recorded history."""
        return self._closing or self._cursor < len(self._history)

    @property
    def next_cmd(self) -> int:
        """The command number the next command will take."""
        return self._next_cmd

    @property
    def next_seq(self) -> int:
        """The history position the next appended event will take."""
        return len(self._history) + len(self._new)

    def now(self) -> float:
        """Workflow time: the time of the event being processed (deterministic)."""
        return self._now

    def replay(self, history: Sequence[ev.HistoryEvent]) -> list[ev.Event]:
        """Re-run the code against a recorded history (``history[0]`` is WorkflowStarted).

        Returns the commands the code issued after the end of the history (not yet
        recorded); raises :class:`NonDeterminismError` on divergence.
        """
        self._history = history
        self._cursor = 1
        self._now = history[0].time
        self._start_main()
        self._run()
        while self._cursor < len(history):
            item = history[self._cursor]
            if item.event.is_command:
                self._diverge(self._cursor, item.event.describe(), self._blocked_description())
            self._cursor += 1
            self._now = item.time
            self._apply(item.event)
            self._run()
        # The recorded events are no longer needed in memory, only how many there are.
        self._history = _Length(len(history))
        return self._take_new()

    def start_fresh(self) -> list[ev.Event]:
        """Run a new run's code until it blocks; return the commands it issued."""
        self._history = _Length(1)
        self._cursor = 1
        self._start_main()
        self._run()
        return self._take_new()

    def apply(self, event: ev.Event, time: float) -> list[ev.Event]:
        """Apply one new incoming event live; return it followed by the commands it caused."""
        self._now = time
        self._new.append(event)
        self._apply(event)
        self._run()
        return self._take_new()

    def mark_committed(self, count: int) -> None:
        """Record that ``count`` more events were durably appended to the history."""
        # The history itself is not needed after replay; only its length matters.
        self._history = _Length(len(self._history) + count)
        self._cursor = len(self._history)

    def close(self) -> None:
        """Drop the run from memory without running workflow code's cancel handlers.

        The instance will be rebuilt by replay when it is needed again; while closing,
        the run counts as replaying (logging is silent) and issues no command.
        """
        self._closing = True
        self.loop.discard()
        detach = getattr(self.context, "detach", None)
        if callable(detach):
            detach()  # the workflow context and the run would keep each other alive

    # -- commands issued by workflow code (called through the WorkflowContext) ----------
    def schedule_activity(
        self, name: str, input: list[JSON], options: dict[str, JSON]
    ) -> asyncio.Future[JSON]:
        """Issue an ActivityScheduled command; the future gets the JSON result."""
        cmd = self._take_cmd()
        self._emit(ev.ActivityScheduled(cmd=cmd, name=name, input=input, options=options))
        fut: asyncio.Future[JSON] = self.loop.create_future()
        self.activities[cmd] = PendingActivity(cmd, name, input, options, fut, self._now)
        fut.add_done_callback(functools.partial(self._activity_future_done, cmd))
        return fut

    def side_effect(self, compute: Callable[[], JSON]) -> JSON:
        """Record (live) or return the recorded (replay) value of ``compute()``."""
        cmd = self._take_cmd()
        if self.is_replaying:
            recorded = self._match(ev.SideEffectRecorded(cmd=cmd, value=None))
            assert isinstance(recorded, ev.SideEffectRecorded)
            return recorded.value
        value = compute()
        self._emit(ev.SideEffectRecorded(cmd=cmd, value=value))
        return value

    def patched(self, change_id: str) -> bool:
        """Whether the run takes the patched code path for ``change_id``.

        New runs (and runs past their recorded history) take it and record a marker.
        Replaying a history recorded before the patch existed (no marker at this point)
        answers False, so the old code path replays. The answer is fixed for the run.
        """
        if change_id in self._patches:
            return self._patches[change_id]
        marker = f"patch:{change_id}"
        if self.is_replaying:
            recorded = self._history[self._cursor].event
            taken = isinstance(recorded, ev.MarkerRecorded) and recorded.name == marker
            if taken:
                self._cursor += 1
        else:
            self._emit(ev.MarkerRecorded(name=marker, value=True))
            taken = True
        self._patches[change_id] = taken
        return taken

    def deprecate_patch(self, change_id: str) -> None:
        """Accept a history that still holds ``change_id``'s marker, without recording one.

        Call it in place of ``patched()`` once every run started before the patch ended.
        """
        if self.is_replaying:
            recorded = self._history[self._cursor].event
            if isinstance(recorded, ev.MarkerRecorded) and recorded.name == f"patch:{change_id}":
                self._cursor += 1
        self._patches[change_id] = True

    def start_child(
        self, child_id: str, name: str, version: int, input: list[JSON], parent_close: str
    ) -> ChildState:
        """Issue a ChildWorkflowStarted command; the state's future gets its completion."""
        cmd = self._take_cmd()
        self._emit(
            ev.ChildWorkflowStarted(
                cmd=cmd,
                child_id=child_id,
                name=name,
                version=version,
                input=input,
                parent_close=parent_close,
            )
        )
        fut: asyncio.Future[ev.ChildWorkflowCompleted] = self.loop.create_future()
        state = ChildState(cmd, child_id, parent_close, fut)
        self.children[child_id] = state
        return state

    def signal_external(self, target_id: str, name: str, payload: JSON) -> None:
        """Issue an ExternalSignalSent command (the signal is sent with the next write)."""
        cmd = self._take_cmd()
        self._emit(ev.ExternalSignalSent(cmd=cmd, target_id=target_id, name=name, payload=payload))

    def cancel_external(self, target_id: str, reason: str) -> None:
        """Issue an ExternalCancelRequested command."""
        cmd = self._take_cmd()
        self._emit(ev.ExternalCancelRequested(cmd=cmd, target_id=target_id, reason=reason))

    def open_children(self) -> list[ChildState]:
        """Children that have not ended (subject to the parent-close policy)."""
        return [c for c in self.children.values() if not c.done]

    def set_signal_handler(self, name: str, handler: Callable[[JSON], None]) -> None:
        """Route signals called ``name`` to ``handler``, starting with buffered ones."""
        self.signal_handlers[name] = handler
        channel = self._signals.get(name)
        while channel is not None and channel.buffered:
            handler(channel.buffered.popleft())

    def wait_condition(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        """A future resolved once ``predicate()`` holds (checked whenever the code blocks)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._conditions.append((predicate, fut))
        return fut

    def validate_update(self, name: str, args: list[JSON]) -> dict[str, JSON] | None:
        """Run the validator of update ``name`` live; the error that refuses it, or None."""
        handler = self.update_handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.update_handlers)) or "none"
            return {
                "type": "UnknownHandlerError",
                "message": f"no update handler named {name!r} (known: {known})",
            }
        try:
            self._querying = True
            handler.validate(args)
        except Exception as exc:  # noqa: BLE001 - the refusal is reported to the caller
            return error_info(exc)
        finally:
            self._querying = False
        return None

    def complete_update(self, update_id: str, result: JSON, error: dict[str, JSON] | None) -> None:
        """Record the end of an update handler (called from its task)."""
        self._emit(ev.UpdateCompleted(update_id=update_id, result=result, error=error))

    def query(self, name: str, args: list[JSON]) -> Any:
        """Call query handler ``name``; it may read state but not issue commands."""
        handler = self.query_handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.query_handlers)) or "none"
            raise UnknownHandlerError(f"no query handler named {name!r} (known: {known})")
        self._querying = True
        try:
            return handler(args)
        finally:
            self._querying = False

    def upsert_search_attributes(self, attributes: dict[str, JSON]) -> None:
        """Issue a SearchAttributesUpserted command (stored with the next write)."""
        self._emit(ev.SearchAttributesUpserted(attributes=dict(attributes)))
        self.search_attributes.update(attributes)
        for key, value in attributes.items():
            if value is None:
                self.search_attributes.pop(key, None)

    def record(self, event: ev.Event) -> None:
        """Record a saga bookkeeping command (CompensationStarted, StepCompensated...)."""
        self._emit(event)

    @property
    def compensating(self) -> bool:
        """Whether a saga of this run is undoing its steps right now (the status shown)."""
        return self._compensation_depth > 0

    def begin_compensation(self) -> None:
        """A saga starts undoing its steps (sagas nest: each begin has its end)."""
        self._compensation_depth += 1

    def end_compensation(self) -> None:
        """A saga finished undoing its steps; code that catches its error runs on."""
        self._compensation_depth -= 1

    def await_intervention(
        self, step: int, name: str, error: dict[str, JSON]
    ) -> asyncio.Future[None]:
        """Park the run until an operator reopens it; the future resolves then."""
        self._emit(ev.InterventionRequired(step=step, name=name, error=error))
        fut: asyncio.Future[None] = self.loop.create_future()
        self.intervention = fut
        return fut

    def wait_signal(self, name: str) -> asyncio.Future[JSON]:
        """A future for the next signal called ``name`` (buffered ones are taken first)."""
        channel = self._signals.setdefault(name, _SignalChannel())
        fut: asyncio.Future[JSON] = self.loop.create_future()
        if channel.buffered:
            fut.set_result(channel.buffered.popleft())
        else:
            channel.waiters.append(fut)
        return fut

    def pending_signal_names(self) -> list[str]:
        """Names of signals the code is currently waiting for."""
        return [name for name, ch in self._signals.items() if any(not w.done() for w in ch.waiters)]

    # -- internals ---------------------------------------------------------------------
    def _new_timer(self, fire_at: float, on_fire: Callable[[], None]) -> int:
        cmd = self._take_cmd()
        recorded = self._emit(ev.TimerStarted(cmd=cmd, fire_at=fire_at))
        assert isinstance(recorded, ev.TimerStarted)
        self.timers[cmd] = PendingTimer(cmd, recorded.fire_at, on_fire)
        return cmd

    def _cancel_timer(self, cmd: int) -> None:
        self.timers.pop(cmd, None)

    def _activity_future_done(self, cmd: int, fut: asyncio.Future[JSON]) -> None:
        # A cancelled activity future (a race loser, or cancellation) is abandoned: it is
        # no longer in flight as far as the run is concerned.
        if fut.cancelled():
            self.activities.pop(cmd, None)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this workflow (handlers started by incoming events)."""
        return self.loop.create_task(coro, context=self._workflow_context())

    def _workflow_context(self) -> contextvars.Context:
        context = contextvars.copy_context()
        if self._context_var is not None:
            context.run(self._context_var.set, self.context)
        return context

    def _start_main(self) -> None:
        context = self._workflow_context()
        self._main = self.loop.create_task(
            self._entry(self.context), name=self.instance_id, context=context
        )
        self._main.add_done_callback(self._on_main_done)

    def _on_main_done(self, task: asyncio.Task[Any]) -> None:
        if self._diverged is not None or self.outcome is not None:
            return
        if task.cancelled():
            self._finish("cancelled", ev.WorkflowCancelled(reason=self.cancel_requested or ""))
            return
        exc = task.exception()
        if isinstance(exc, _Diverged):
            return
        if isinstance(exc, ContinueAsNew):
            digest = hashlib.sha256(f"{self.started.run_id}:next".encode()).hexdigest()
            new_run_id = digest[:32]
            self._finish(
                "continued", ev.WorkflowContinuedAsNew(input=exc.input, new_run_id=new_run_id)
            )
            return
        if isinstance(exc, CompensatedError):
            event = ev.WorkflowCompensated(reason=exc.reason, error=exc.cause)
            self._finish("compensated", event)
        elif isinstance(exc, asyncio.CancelledError):
            self._finish("cancelled", ev.WorkflowCancelled(reason=self.cancel_requested or ""))
        elif exc is not None:
            self._finish("failed", ev.WorkflowFailed(error=error_info(exc)))
        else:
            try:
                data = self._encode_result(task.result())
            except Exception as enc_exc:  # noqa: BLE001 - recorded as the run's failure
                self._finish("failed", ev.WorkflowFailed(error=error_info(enc_exc)))
            else:
                self._finish("completed", ev.WorkflowCompleted(result=data))

    def _finish(self, status: str, event: ev.Event) -> None:
        try:
            recorded = self._emit(event)
        except _Diverged:
            return
        self.outcome = RunOutcome(status, recorded)

    def _run(self) -> None:
        while True:
            self.loop.run_ready()
            if self._diverged is not None:
                raise self._diverged
            if not self._check_conditions():
                return

    def _check_conditions(self) -> bool:
        """Resolve the wait_condition futures whose predicate now holds."""
        fired = False
        pending = []
        for predicate, fut in self._conditions:
            if fut.done():
                continue
            try:
                ok = predicate()
            except Exception as exc:  # noqa: BLE001 - surfaces at the waiter's await
                fut.set_exception(exc)
                fired = True
                continue
            if ok:
                fut.set_result(None)
                fired = True
            else:
                pending.append((predicate, fut))
        self._conditions = pending
        return fired

    def _take_new(self) -> list[ev.Event]:
        new, self._new = self._new, []
        return new

    def _apply(self, event: ev.Event) -> None:
        if self.outcome is not None:
            return
        if isinstance(event, ev.ActivityCompleted):
            act = self.activities.pop(event.cmd, None)
            if act is not None and not act.future.done():
                act.future.set_result(event.result)
        elif isinstance(event, ev.ActivityAttemptFailed):
            act = self.activities.get(event.cmd)
            if act is not None:
                act.attempt = event.attempt + 1
                act.retry_at = event.retry_at
                act.last_error = event.error
                act.heartbeat = event.details
        elif isinstance(event, ev.ActivityFailed):
            act = self.activities.pop(event.cmd, None)
            if act is not None and not act.future.done():
                err = event.error
                act.future.set_exception(
                    ActivityError(
                        act.name,
                        str(err.get("type", "Exception")),
                        str(err.get("message", "")),
                        traceback=str(err.get("traceback", "")),
                        attempts=event.attempts,
                        non_retryable=event.non_retryable,
                    )
                )
        elif isinstance(event, ev.TimerFired):
            timer = self.timers.pop(event.cmd, None)
            if timer is not None:
                timer.on_fire()
        elif isinstance(event, ev.ChildWorkflowCompleted):
            child = self.children.get(event.child_id)
            if child is not None and not child.done:
                child.done = True
                if not child.future.done():
                    child.future.set_result(event)
        elif isinstance(event, ev.UpdateAccepted | ev.UpdateRejected) and (
            event.update_id in self.seen_updates
        ):
            pass  # a retried request with an id already decided: applied once
        elif isinstance(event, ev.UpdateAccepted):
            self.seen_updates.add(event.update_id)
            handler = self.update_handlers.get(event.name)
            if handler is None:
                error = {
                    "type": "UnknownHandlerError",
                    "message": f"no update handler named {event.name!r}",
                }
                self.complete_update(event.update_id, None, error)
            else:
                handler.start(event.update_id, event.args)
        elif isinstance(event, ev.InterventionResolved):
            fut, self.intervention = self.intervention, None
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(event, ev.UpdateRejected):
            self.seen_updates.add(event.update_id)  # the workflow's state is untouched
        elif isinstance(event, ev.SignalReceived) and event.name in self.signal_handlers:
            self.signal_handlers[event.name](event.payload)
        elif isinstance(event, ev.SignalReceived):
            channel = self._signals.setdefault(event.name, _SignalChannel())
            while channel.waiters:
                waiter = channel.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(event.payload)
                    return
            channel.buffered.append(event.payload)
        elif isinstance(event, ev.WorkflowTerminated | ev.WorkflowTimedOut):
            status = ev.TERMINAL_EVENTS[type(event)]
            self.outcome = RunOutcome(status, event)
        elif isinstance(event, ev.CancelRequested):
            if self.cancel_requested is None:
                self.cancel_requested = event.reason
                if self._main is not None and not self._main.done():
                    self._main.cancel(msg=event.reason)
        else:
            raise ValueError(f"{event.kind} is not an incoming event")

    def _take_cmd(self) -> int:
        """The next command number (refused inside queries: they must change nothing)."""
        self.check_not_querying("a durable call")
        cmd = self._next_cmd
        self._next_cmd += 1
        return cmd

    def check_not_querying(self, what: str) -> None:
        """Refuse ``what`` inside a query handler or update validator."""
        if self._querying:
            raise RuntimeError(
                f"{what} inside a query handler or update validator: they may read the "
                "workflow's state but not change it"
            )

    def _emit(self, event: ev.Event) -> ev.Event:
        """Record a command (live) or check it against history (replay)."""
        if self._querying:
            self.check_not_querying(event.describe())
        if self._diverged is not None or self._closing:
            raise _Diverged()
        if self.is_replaying:
            return self._match(event)
        self._new.append(event)
        return event

    def _match(self, event: ev.Event) -> ev.Event:
        index = self._cursor
        recorded = self._history[index].event
        if not _same_command(recorded, event):
            self._diverge(index, recorded.describe(), event.describe())
        self._cursor += 1
        return recorded

    def _diverge(self, index: int, expected: str, got: str) -> None:
        self._diverged = NonDeterminismError(self.instance_id, index, expected, got)
        raise _Diverged()

    def _blocked_description(self) -> str:
        waits = [f"activity #{a.cmd} {a.name!r}" for a in self.activities.values()]
        waits += [f"timer #{t.cmd}" for t in self.timers.values()]
        waits += [f"signal {n!r}" for n in self.pending_signal_names()]
        if self.outcome is not None:
            return f"nothing more (the run {self.outcome.status})"
        return "nothing more (it waits for " + (", ".join(waits) or "nothing") + ")"


class _Length(Sequence[ev.HistoryEvent]):
    """Stands in for a committed history whose events are no longer kept in memory."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        raise IndexError("committed history is not kept in memory")


def _same_command(recorded: ev.Event, issued: ev.Event) -> bool:
    if type(recorded) is not type(issued):
        return False
    if isinstance(recorded, ev.ActivityScheduled):
        assert isinstance(issued, ev.ActivityScheduled)
        return recorded.cmd == issued.cmd and recorded.name == issued.name
    if isinstance(recorded, ev.ChildWorkflowStarted):
        assert isinstance(issued, ev.ChildWorkflowStarted)
        return (recorded.cmd, recorded.name, recorded.child_id) == (
            issued.cmd,
            issued.name,
            issued.child_id,
        )
    if isinstance(recorded, ev.ExternalSignalSent | ev.ExternalCancelRequested):
        return recorded.cmd == getattr(issued, "cmd", None) and recorded.target_id == getattr(
            issued, "target_id", None
        )
    if isinstance(
        recorded,
        ev.CompensationStarted
        | ev.StepCompensated
        | ev.CompensationFailed
        | ev.InterventionRequired,
    ):
        return recorded.step == getattr(issued, "step", None)
    if isinstance(recorded, ev.SearchAttributesUpserted):
        return recorded.attributes == getattr(issued, "attributes", None)
    if isinstance(recorded, ev.UpdateCompleted):
        return recorded.update_id == getattr(issued, "update_id", None)
    if isinstance(recorded, ev.MarkerRecorded):
        assert isinstance(issued, ev.MarkerRecorded)
        return recorded.name == issued.name
    if isinstance(recorded, ev.TimerStarted | ev.SideEffectRecorded):
        return recorded.cmd == getattr(issued, "cmd", None)
    return True
