"""Operator tools over the client: fork from a step, deploy compatibility checks, bulk ops.

These answer the most common way in-flight work is lost: a deploy whose code no longer
replays old histories. ``check_compat`` finds such instances *before* the deploy;
``fork`` re-runs an instance from a chosen step on the current code, reusing what was
recorded before it; the bulk forms apply ``resume``/``cancel``/``fork`` by filter.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart._engine import events as ev
from stalwart.errors import ConfigurationError, NonDeterminismError, WorkflowNotFoundError
from stalwart.ids import validate_instance_id
from stalwart.runtime.replay_check import replay_history
from stalwart.store.base import (
    ACTIVE_STATUSES,
    CreateInstance,
    InstanceRecord,
    ListFilter,
)

if TYPE_CHECKING:
    from stalwart.client import Engine, WorkflowHandle


@dataclass(frozen=True, slots=True)
class CompatReport:
    """Whether one in-flight instance's history replays on the current code."""

    instance_id: str
    name: str
    version: int
    status: str
    ok: bool
    problem: str | None = None
    """Why not: the divergence (event index, what history holds, what the code asked
    for), or that no registered workflow matches the instance's name and version."""
    event_index: int | None = None


async def check_compat(
    engine: Engine,
    *,
    name: str | None = None,
    statuses: Sequence[str] = (*ACTIVE_STATUSES, "suspended"),
) -> list[CompatReport]:
    """Replay every in-flight instance's history against this engine's registered code."""
    reports = []
    for status in statuses:
        async for rec in iter_instances(engine, ListFilter(name=name, status=status)):
            history = await engine.store.load_history(rec.id, rec.run_id)
            result = replay_history(engine.registry, engine.converter, history, instance_id=rec.id)
            index = (
                result.error.event_index if isinstance(result.error, NonDeterminismError) else None
            )
            reports.append(
                CompatReport(
                    rec.id,
                    rec.name,
                    rec.version,
                    rec.status,
                    result.ok,
                    None if result.ok else str(result.error),
                    index,
                )
            )
    return reports


async def iter_instances(engine: Engine, flt: ListFilter) -> AsyncIterator[InstanceRecord]:
    """Every instance matching ``flt``, page by page."""
    cursor = None
    while True:
        page = await engine.store.list_instances(flt, limit=500, cursor=cursor)
        for rec in page.items:
            yield rec
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def fork_prefix(history: Sequence[ev.HistoryEvent], from_step: int) -> list[ev.HistoryEvent]:
    """The part of a history a fork keeps: everything before step ``from_step``.

    A step is a command number (``#n`` in histories). The prefix stops at the first event
    of a step numbered ``from_step`` or more, at the end of the run, and before a child
    started or an update accepted whose outcome it would not contain.
    """
    prefix: list[ev.HistoryEvent] = []
    for item in history[1:]:
        event = item.event
        if type(event) in ev.TERMINAL_EVENTS or isinstance(event, ev.WorkflowContinuedAsNew):
            break
        cmd = getattr(event, "cmd", None)
        if cmd is not None and cmd >= from_step:
            break
        prefix.append(item)
    done_children = {
        e.event.child_id for e in prefix if isinstance(e.event, ev.ChildWorkflowCompleted)
    }
    done_updates = {e.event.update_id for e in prefix if isinstance(e.event, ev.UpdateCompleted)}
    for index, item in enumerate(prefix):
        event = item.event
        if (isinstance(event, ev.ChildWorkflowStarted) and event.child_id not in done_children) or (
            isinstance(event, ev.UpdateAccepted) and event.update_id not in done_updates
        ):
            return prefix[:index]
    return prefix


async def fork(
    engine: Engine,
    instance_id: str,
    from_step: int,
    *,
    new_id: str | None = None,
    version: int | None = None,
) -> WorkflowHandle[Any]:
    """Start a new instance that reuses ``instance_id``'s results before ``from_step``
    and runs the rest on the current code (its version, or ``version``).

    When the workflow is registered in this engine the reused prefix is replayed first:
    a prefix the current code cannot reproduce raises :class:`NonDeterminismError` and
    nothing is stored.
    """
    if not isinstance(from_step, int) or from_step < 0:
        raise ConfigurationError(f"from_step must be an integer >= 0, got {from_step!r}")
    source = await engine.store.get_instance(instance_id)
    if source is None:
        raise WorkflowNotFoundError(instance_id)
    history = await engine.store.load_history(source.id, source.run_id)
    prefix = fork_prefix(history, from_step)
    original = history[0].event
    assert isinstance(original, ev.WorkflowStarted)
    run_id = uuid.uuid4().hex
    started = ev.WorkflowStarted(
        name=source.name,
        version=version or source.version,
        input=source.input,
        run_id=run_id,
        timeout=original.timeout,
    )
    target = validate_instance_id(new_id) if new_id else f"{source.id}-fork-{run_id[:8]}"
    trial = [ev.HistoryEvent(0, history[0].time, started), *prefix]
    if engine.registry.workflow(started.name, started.version) is not None:
        result = replay_history(engine.registry, engine.converter, trial, instance_id=target)
        if isinstance(result.error, NonDeterminismError):
            raise result.error
    outcome = await engine.committer.submit(
        CreateInstance(
            target,
            started.name,
            started.version,
            run_id,
            started.input,
            started,
            prefix=[(h.time, h.event) for h in prefix],
        )
    )
    if not outcome.created:
        raise ConfigurationError(f"cannot fork into {target!r}: that id is already used")
    if engine.worker is not None:
        engine.worker.kick()
    return engine.get_handle(target)


async def bulk(
    engine: Engine,
    action: str,
    flt: ListFilter,
    *,
    reason: str = "",
    from_step: int = 0,
) -> list[str]:
    """Apply ``resume``, ``cancel`` or ``fork`` to every instance matching ``flt``.

    Returns the ids acted on (for ``fork``, the new instances' ids).
    """
    if action not in ("resume", "cancel", "fork"):
        raise ConfigurationError(f"bulk action must be resume, cancel or fork, got {action!r}")
    targets = [rec.id async for rec in iter_instances(engine, flt)]
    done = []
    for target in targets:
        handle = engine.get_handle(target)
        if action == "resume":
            if await handle.resume():
                done.append(target)
        elif action == "cancel":
            await handle.cancel(reason)
            done.append(target)
        else:
            done.append((await fork(engine, target, from_step)).id)
    return done
