"""Replaying recorded histories against the current code, to catch breaking changes early.

Export a history with ``await handle.history()`` or ``stalwart history ID --json`` and
replay it in a test (or in CI before a deploy)::

    result = Replayer([process_order]).replay(history)
    assert result.ok, result.error
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stalwart._engine.events import HistoryEvent, history_from_json
from stalwart.codec import TypeConverter
from stalwart.decorators import Registry, WorkflowDefinition
from stalwart.runtime.replay_check import ReplayResult, replay_history

__all__ = ["ReplayResult", "Replayer"]


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
        return replay_history(
            self._registry, self._converter, _load(history), instance_id=instance_id
        )


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
