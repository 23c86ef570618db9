"""A workflow whose code changed under a running instance is parked, then resumed."""

from __future__ import annotations

import asyncio

import pytest

from stalwart import NonDeterminismError, WorkflowContext, activity, workflow
from tests.conftest import EngineFactory

CODE_VERSION = {"value": "original"}
RUNS: list[str] = []


@activity
async def n_reserve(item: str) -> str:
    RUNS.append(f"reserve:{item}")
    return f"reserved {item}"


@activity
async def n_charge(item: str) -> str:
    RUNS.append(f"charge:{item}")
    return f"charged {item}"


@workflow(name="n_order")
async def n_order(ctx: WorkflowContext, item: str) -> list[str]:
    if CODE_VERSION["value"] == "original":
        first = await n_reserve(item)
    else:  # a "deploy" swapped the two steps
        first = await n_charge(item)
    approved = await ctx.wait_for_signal("approve")
    second = await n_charge(item)
    return [first, str(approved), second]


async def test_divergence_suspends_then_resume_after_fix(make_engine: EngineFactory) -> None:
    CODE_VERSION["value"] = "original"
    RUNS.clear()
    # max_cached=0: the blocked instance leaves memory and is rebuilt by replay on wake-up.
    engine = make_engine(workflows=[n_order], activities=[n_reserve, n_charge], max_cached=0)
    async with engine:
        h = await n_order.start(engine, "book", id="nd-1")
        for _ in range(200):
            if (await h.describe()).owner is None and await h.status() == "running":
                break
            await asyncio.sleep(0.01)
        CODE_VERSION["value"] = "swapped"
        await h.signal("approve", True)
        for _ in range(500):
            if await h.status() == "suspended":
                break
            await asyncio.sleep(0.01)
        desc = await h.describe()
        assert desc.status == "suspended"
        assert desc.error is not None and desc.error["type"] == "NonDeterminismError"
        message = desc.error["message"]
        assert "event #1" in message
        assert "ActivityScheduled(#0 'n_reserve')" in message
        assert "ActivityScheduled(#0 'n_charge')" in message
        history_before = [e.kind for e in await h.history()]
        assert RUNS == ["reserve:book"]  # nothing re-executed while diverged

        CODE_VERSION["value"] = "original"
        assert await h.resume() is True
        assert await h.result(timeout=10) == ["reserved book", "True", "charged book"]
        history_after = [e.kind for e in await h.history()]
        assert history_after[: len(history_before)] == history_before
        assert await h.resume() is False  # not suspended any more
    assert RUNS == ["reserve:book", "charge:book"]


def test_error_names_index_expected_and_got() -> None:
    err = NonDeterminismError("wf-1", 7, "ActivityScheduled(#3 'a')", "TimerStarted(#3)")
    assert err.event_index == 7
    assert "event #7" in str(err) and "'a'" in str(err) and "TimerStarted" in str(err)
    assert err.code == "non_determinism"


@pytest.fixture(autouse=True)
def restore_code() -> None:
    CODE_VERSION["value"] = "original"
