"""Generated programs on a SQLite file with the real clock, restarted at random points.

The engine is replaced once a random number of write batches were committed: either
gracefully (closed, so it hands its instances back, then a new one opens) or by a
takeover (the first one's lease is declared expired as if its process had died; a
second engine claims everything with a new epoch while the first one is still running
and gets fenced). Some examples keep no instance in memory (``max_cached=0``), so every
step replays the history. The result, the commands and the replays must not change.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from .checks import check_against_reference
from .harness import SHRINK_TIMEOUT, property_settings, run_on_sqlite
from .program import Program, program_json
from .strategies import programs

SCALE = 0.0005
"""Real seconds per program second: the longest timer (600) takes 0.3 s."""


@pytest.mark.timeout(SHRINK_TIMEOUT)
@property_settings(share=0.25, floor=5)
@given(
    programs(max_ops=4),
    st.sampled_from(["graceful", "takeover", "takeover", None]),
    st.integers(0, 8),
    st.sampled_from([10_000, 0]),
)
def test_programs_survive_engine_restarts_on_sqlite(
    program: Program, restart: str | None, after_batches: int, max_cached: int
) -> None:
    note(
        f"program JSON: {program_json(program)}; restart={restart} after {after_batches} "
        f"batches, max_cached={max_cached}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        observed = asyncio.run(
            run_on_sqlite(
                program,
                Path(tmp) / "store.db",
                scale=SCALE,
                restart=restart,
                after_batches=after_batches,
                max_cached=max_cached,
            )
        )
    event(f"restart: {restart if observed.restarted else 'none (ended first)'}")
    check_against_reference(program, observed, scale=SCALE)
