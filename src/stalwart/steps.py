"""The step table of a workflow (``handle.steps()``), derived from its history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stalwart._engine import events as ev
from stalwart.saga import ALERT_ACTIVITY

STEP_STATUSES = (
    "pending",
    "running",
    "completed",
    "failed",
    "compensating",
    "compensated",
    "skipped",
)
"""Every status a step can have."""


@dataclass(slots=True)
class StepInfo:
    """One step (activity call) of a workflow, with its compensation if it has one."""

    step: int | None
    """The step's command number (``#n`` in the history); None for planned steps."""
    name: str
    status: str
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    compensation: str | None = None
    """The activity that undid (or is undoing) the step."""
    compensation_error: dict[str, Any] | None = None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def steps_from_history(history: Sequence[ev.HistoryEvent]) -> list[StepInfo]:
    """Rebuild the step table: one row per activity call, compensations folded in; for a
    declarative saga, one row per step method of its plan."""
    if any(isinstance(h.event, ev.MarkerRecorded) and h.event.name == "saga:plan" for h in history):
        return _declared_steps(history)
    return _activity_steps(history)


def _declared_steps(history: Sequence[ev.HistoryEvent]) -> list[StepInfo]:
    rows: dict[str, StepInfo] = {}
    for item in history:
        event, when = item.event, _dt(item.time)
        if isinstance(event, ev.MarkerRecorded) and event.name.startswith("saga:"):
            kind, _, name = event.name[len("saga:") :].partition(":")
            if kind == "plan":
                for i, step in enumerate(event.value or []):
                    rows.setdefault(str(step), StepInfo(i, str(step), "pending"))
            elif name in rows:
                row = rows[name]
                if kind == "started":
                    row.status, row.started_at, row.attempts = "running", when, row.attempts + 1
                elif kind == "completed":
                    row.status, row.ended_at = "completed", when
                elif kind in ("failed", "skipped-step"):
                    row.status = "failed" if kind == "failed" else "skipped"
                    row.ended_at, row.error = when, event.value
        elif isinstance(event, ev.CompensationStarted) and event.name in rows:
            rows[event.name].status = "compensating"
            rows[event.name].compensation = event.undo or None
        elif isinstance(event, ev.StepCompensated) and event.name in rows:
            rows[event.name].status = "compensated"
        elif isinstance(event, ev.CompensationFailed) and event.name in rows:
            rows[event.name].compensation_error = event.error
    return list(rows.values())


def _activity_steps(history: Sequence[ev.HistoryEvent]) -> list[StepInfo]:
    steps: dict[int, StepInfo] = {}
    undoing: dict[int, int] = {}  # compensation activity cmd -> step it undoes
    pending_comp: int | None = None
    for item in history:
        event, when = item.event, _dt(item.time)
        if isinstance(event, ev.ActivityScheduled):
            if event.name == ALERT_ACTIVITY:
                continue
            if pending_comp is not None:
                undoing[event.cmd] = pending_comp
                steps[pending_comp].compensation = event.name
                pending_comp = None
                continue
            steps[event.cmd] = StepInfo(event.cmd, event.name, "running", 1, started_at=when)
        elif isinstance(event, ev.ActivityAttemptFailed) and event.cmd in steps:
            steps[event.cmd].attempts = event.attempt + 1
            steps[event.cmd].error = event.error
        elif isinstance(event, ev.ActivityCompleted | ev.ActivityFailed):
            _finish(steps, undoing, event, when)
        elif isinstance(event, ev.CompensationStarted) and event.step in steps:
            steps[event.step].status = "compensating"
            pending_comp = event.step
        elif isinstance(event, ev.StepCompensated) and event.step in steps:
            steps[event.step].status = "compensated"
        elif isinstance(event, ev.CompensationFailed) and event.step in steps:
            steps[event.step].compensation_error = event.error
        elif isinstance(event, ev.MarkerRecorded) and event.name.startswith("saga:skipped:"):
            cmd = int(event.name.rsplit(":", 1)[1])
            if cmd in steps:
                steps[cmd].status = "skipped"
    if history and type(history[-1].event) in ev.TERMINAL_EVENTS:
        for info in steps.values():
            if info.status == "running":  # the workflow ended without waiting for it
                info.status = "failed"
                info.ended_at = _dt(history[-1].time)
                info.error = {"type": "Abandoned", "message": "the workflow ended first"}
    return sorted(steps.values(), key=lambda s: s.step or 0)


def _finish(
    steps: dict[int, StepInfo],
    undoing: dict[int, int],
    event: ev.ActivityCompleted | ev.ActivityFailed,
    when: datetime,
) -> None:
    if event.cmd in undoing:
        info = steps[undoing[event.cmd]]
        if isinstance(event, ev.ActivityFailed):
            info.compensation_error = event.error
        return
    info_or_none = steps.get(event.cmd)
    if info_or_none is None:
        return
    info = info_or_none
    info.ended_at = when
    if isinstance(event, ev.ActivityCompleted):
        info.status, info.result, info.attempts, info.error = (
            "completed",
            event.result,
            event.attempt,
            None,
        )
    else:
        info.status, info.error, info.attempts = "failed", event.error, event.attempts
