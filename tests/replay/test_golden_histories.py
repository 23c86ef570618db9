"""Committed golden histories replay on the current code (the compatibility contract)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from examples.orders import process_order
from examples.user_trial import user_trial

from stalwart.testing import Replayer

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_golden_histories() -> None:
    assert len(HISTORIES) >= 2


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_golden_history_replays(path: Path) -> None:
    recorded = json.loads(path.read_text())
    final = recorded[-1]["type"]
    result = Replayer([process_order, user_trial]).replay(path)
    assert result.ok, f"{path.name}: {result.error}"
    assert result.status == {"WorkflowCompleted": "completed"}.get(final, result.status)
    assert result.pending == ()
