"""Replaying recorded histories against the current code, to catch breaking changes early.

Export a history with ``await handle.history()`` or ``stalwart history ID --json`` and
replay it in a test (or in CI before a deploy)::

    result = Replayer([process_order]).replay(history)
    assert result.ok, result.error
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stalwart._engine.events import HistoryEvent, WorkflowStarted, history_from_json
from stalwart.codec import TypeConverter
from stalwart.decorators import Registry, WorkflowDefinition
from stalwart.errors import EncodingError, NonDeterminismError, WorkflowNotRegisteredError
from stalwart.runtime.instance import build_instance


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The outcome of replaying one history.

    ``ok`` is True when the code reproduced every recorded command. ``error`` is the first
    divergence (a :class:`NonDeterminismError` naming the event index, what the history
    holds and what the code asked for) or the reason the history could not be replayed.
    ``status`` is the run's status after the replay (``running`` while it still waits).
    ``pending`` lists commands the code issued beyond the end of the history.
    """

    ok: bool
    status: str
    error: Exception | None = None
    pending: tuple[str, ...] = ()


class Replayer:
    """Replays histories against registered workflow definitions (no store, no I/O)."""

    def __init__(self, workflows: Sequence[WorkflowDefinition[Any, Any]]) -> None:
        self._registry = Registry()
        for defn in workflows:
            self._registry.add_workflow(defn)
        self._registry.check_unique()
        self._converter = TypeConverter()

    def replay(
        self,
        history: Sequence[HistoryEvent] | Sequence[dict[str, Any]] | str | Path,
        *,
        instance_id: str = "replay",
    ) -> ReplayResult:
        """Replay one history: events, their JSON export, JSON text or a JSON file path."""
        events = _load(history)
        if not events or not isinstance(events[0].event, WorkflowStarted):
            return ReplayResult(
                False, "invalid", ValueError("history must start with WorkflowStarted")
            )
        started = events[0].event
        defn = self._registry.workflow(started.name, started.version)
        if defn is None:
            err = WorkflowNotRegisteredError(started.name, started.version)
            return ReplayResult(False, "unregistered", err)
        try:
            inst = build_instance(
                instance_id=instance_id,
                run_id=started.run_id,
                epoch=0,
                defn=defn,
                started=started,
                start_time=events[0].time,
                converter=self._converter,
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


def _load(
    history: Sequence[HistoryEvent] | Sequence[dict[str, Any]] | str | Path,
) -> list[HistoryEvent]:
    if isinstance(history, Path) or (
        isinstance(history, str) and not history.lstrip().startswith("[")
    ):
        history = Path(history).read_text("utf-8")
    if isinstance(history, str):
        history = json.loads(history)
    items: list[Any] = list(history)  # type: ignore[arg-type]
    if items and isinstance(items[0], dict):
        return history_from_json(items)
    return [h for h in items if isinstance(h, HistoryEvent)]
