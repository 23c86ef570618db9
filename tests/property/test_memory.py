"""Generated programs on the in-memory store with the virtual clock (``TestEngine``).

(a) the result and every recorded command match the reference interpreter; (b) with
store outages injected at random commit points (the worker drops the instances of the
failed batch and rebuilds them from the store by replay, as after a crash of that write)
nothing changes and every call still has exactly one recorded result; (c) every
recorded run replays from scratch to the same commands and end.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from stalwart import faults
from stalwart.testing import TestEngine

from .checks import Observed, check_against_reference
from .harness import (
    SHRINK_TIMEOUT,
    VIRTUAL_TIMEOUT,
    StoreOutage,
    await_outcome,
    features,
    load_instances,
    property_settings,
    run_program,
    start_program,
)
from .interpreter import ACTIVITIES, prop_interp
from .program import Program, program_json
from .strategies import programs


def memory_engine() -> TestEngine:
    """A fresh test engine serving the interpreter."""
    return TestEngine(workflows=[prop_interp], activities=ACTIVITIES)


async def _run(program: Program) -> Observed:
    async with memory_engine() as env:
        return await run_program(env, program, timeout=VIRTUAL_TIMEOUT)


@pytest.mark.timeout(SHRINK_TIMEOUT)
@property_settings(share=0.45)
@given(programs())
def test_programs_match_the_reference(program: Program) -> None:
    note(f"program JSON: {program_json(program)}")
    for label in features(program):
        event(label)
    observed = asyncio.run(_run(program))
    check_against_reference(program, observed)


async def _run_with_outages(program: Program, plan: StoreOutage) -> Observed:
    async with memory_engine() as env:
        await start_program(env, program, "p", 1.0)
        handle = env.get_handle("p")
        faults.install(plan)  # after the start, which is not retried (signals are)
        try:
            outcome = await await_outcome(lambda: handle, program, timeout=VIRTUAL_TIMEOUT)
        finally:
            faults.install(None)
        return Observed(outcome, await load_instances(env.store, "p"))


@pytest.mark.timeout(SHRINK_TIMEOUT)
@property_settings(share=0.25)
@given(
    programs(),
    st.sampled_from(["commit.before", "commit.after"]),
    st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
)
def test_store_outages_at_random_commit_points_change_nothing(
    program: Program, point: str, hits: list[int]
) -> None:
    note(f"program JSON: {program_json(program)}; outage at {point} hits {hits}")
    plan = StoreOutage(point, hits)
    observed = asyncio.run(_run_with_outages(program, plan))
    event(f"outages injected: {plan.fired}")
    check_against_reference(program, observed)
