"""Replaying a recorded history against the current code, without a store or I/O.

Used by ``Replayer`` (tests), ``engine.check_compat()`` (before a deploy) and ``fork``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stalwart._engine.events import HistoryEvent, WorkflowStarted
from stalwart.codec import TypeConverter
from stalwart.decorators import Registry
from stalwart.errors import EncodingError, NonDeterminismError, WorkflowNotRegisteredError
from stalwart.runtime.instance import build_instance


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The outcome of replaying one history.

    ``ok`` is True when the code reproduced every recorded command. ``error`` is the first
    divergence (a :class:`NonDeterminismError` naming the event index, what the history
    holds and what the code asked for) or the reason the history could not be replayed.
    ``status`` is the run's status after the replay (``running`` while it still waits,
    ``diverged``, ``unregistered`` or ``invalid`` when it could not be replayed).
    ``pending`` lists commands the code issued beyond the end of the history.
    """

    ok: bool
    status: str
    error: Exception | None = None
    pending: tuple[str, ...] = ()


def replay_history(
    registry: Registry,
    converter: TypeConverter,
    events: Sequence[HistoryEvent],
    *,
    instance_id: str = "replay",
) -> ReplayResult:
    """Replay ``events`` (a run's history, from WorkflowStarted) on the registered code."""
    if not events or not isinstance(events[0].event, WorkflowStarted):
        return ReplayResult(False, "invalid", ValueError("history must start with WorkflowStarted"))
    started = events[0].event
    defn = registry.workflow(started.name, started.version)
    if defn is None:
        return ReplayResult(
            False, "unregistered", WorkflowNotRegisteredError(started.name, started.version)
        )
    try:
        inst = build_instance(
            instance_id=instance_id,
            run_id=started.run_id,
            epoch=0,
            defn=defn,
            started=started,
            start_time=events[0].time,
            converter=converter,
        )
    except EncodingError as exc:
        return ReplayResult(False, "invalid", exc)
    try:
        pending = inst.run.replay(events)
    except NonDeterminismError as exc:
        return ReplayResult(False, "diverged", exc)
    finally:
        inst.run.close()
    outcome = inst.run.outcome
    status = outcome.status if outcome is not None else "running"
    return ReplayResult(True, status, None, tuple(e.describe() for e in pending))
