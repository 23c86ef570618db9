"""A handful of programs run by a worker process that dies (``os._exit``, like kill -9)
at an exact commit point, then by a fresh worker process: same result, same commands,
every call recorded once, every run replays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .checks import check_against_reference
from .harness import run_with_process_kill
from .program import Program
from .test_fixtures import load_fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
SCALE = 0.0005

CASES = [
    # (fixture, fault plan of the doomed worker)
    ("gather_inside_saga", "activity.after_result:exit:3"),  # an outcome is lost
    ("continue_as_new_carries_accumulator", "commit.after:exit:5"),  # committed, not told
    ("nested_saga_handover", "commit.before:exit:7"),  # during a rollback, write lost
]


@pytest.mark.parametrize(("fixture", "fault"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_worker_killed_at_a_commit_point(tmp_path: Path, fixture: str, fault: str) -> None:
    program: Program = load_fixture(fixture).program
    observed, died = asyncio.run(run_with_process_kill(program, tmp_path, fault, scale=SCALE))
    assert died, f"the fault {fault} was never reached: pick a smaller hit number"
    check_against_reference(program, observed, scale=SCALE)
