"""Exact crash points (stalwart.faults): a worker dies right after an activity returned but
before its result committed, or right after a commit but before anyone was told.

Unlike random kills, these land on the exact commit boundary every time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from .harness import (
    WorkerProcess,
    client,
    expected_sum,
    histories,
    init_side,
    read_side,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
STEPS = 6


@pytest.mark.parametrize(
    ("fault", "twice"),
    [
        ("activity.after_result:exit:3", {2}),  # the 3rd step ran; its result was lost
        ("commit.after:exit:3", set()),  # committed, then died: nothing may run again
    ],
)
async def test_crash_at_a_commit_boundary(tmp_path: Path, fault: str, twice: set[int]) -> None:
    db, side = tmp_path / "store.db", tmp_path / "side.db"
    init_side(side)
    async with client(db) as engine:
        doomed = WorkerProcess(
            db, side, tmp_path / "w1.log", concurrency=1, env={"STALWART_FAULTS": fault}
        )
        try:
            await doomed.wait_ready(engine)
            handle = await engine.start_by_name("kr_sum", [7, STEPS], id="exact")

            async def died() -> bool:
                return not doomed.alive()

            await wait_until(died, 30, "the injected crash")
            assert doomed.proc.returncode == 137, doomed.log_text()
            healthy = WorkerProcess(db, side, tmp_path / "w2.log", concurrency=1)
            try:
                assert await handle.result(timeout=60) == expected_sum(7, STEPS)
                final = await histories(engine)
            finally:
                await healthy.terminate()
        finally:
            doomed.cleanup()
    runs = Counter(ex.step for ex in read_side(side) if ex.instance == "exact")
    assert {step for step, n in runs.items() if n == 2} == twice
    assert all(n <= 2 for n in runs.values()) and sorted(runs) == list(range(STEPS))
    record = final["exact"]
    assert all(len(record[step].completions) == 1 for step in range(STEPS))
