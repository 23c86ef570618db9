"""Child workflows, parent-close policies and continue-as-new."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from stalwart import Cancelled, ChildWorkflowError, WorkflowContext, activity, workflow
from tests.conftest import EngineFactory


@dataclass
class Quote:
    sku: str
    price: int


@activity
async def c_price(sku: str) -> int:
    return len(sku) * 10


@workflow(name="c_quote")
async def c_quote(ctx: WorkflowContext, sku: str) -> Quote:
    return Quote(sku, await c_price(sku))


@workflow(name="c_basket")
async def c_basket(ctx: WorkflowContext, skus: list[str]) -> int:
    quotes = await asyncio.gather(*(c_quote(s) for s in skus))  # children, in parallel
    assert all(isinstance(q, Quote) for q in quotes)
    return sum(q.price for q in quotes)


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_parent_awaits_typed_child_results(
    make_engine: EngineFactory, max_cached: int
) -> None:
    engine = make_engine(workflows=[c_basket, c_quote], activities=[c_price], max_cached=max_cached)
    async with engine:
        h = await c_basket.start(engine, ["a", "bb", "ccc"], id=f"basket-{max_cached}")
        assert await h.result(timeout=10) == 60
        kinds = [e.kind for e in await h.history()]
        assert kinds.count("ChildWorkflowStarted") == 3
        assert kinds.count("ChildWorkflowCompleted") == 3
        desc = await h.describe()
        assert sorted(desc.children) == [f"basket-{max_cached}/{i}" for i in range(3)]
        child = engine.get_handle(f"basket-{max_cached}/0")
        assert (await child.describe()).parent_id == h.id
        assert (await engine.list(parent=h.id)).items[0].parent_id == h.id


@workflow(name="c_waiter")
async def c_waiter(ctx: WorkflowContext) -> str:
    try:
        return str(await ctx.wait_for_signal("poke"))
    except Cancelled:
        return "child saw cancel"


@workflow(name="c_boss")
async def c_boss(ctx: WorkflowContext, mode: str) -> str:
    child = await ctx.start_child(c_waiter, id=f"{ctx.instance_id}-kid", parent_close="abandon")
    if mode == "signal":
        await child.signal("poke", "hello")
        return await child
    await child.cancel("boss says no")
    return await child.result()


@pytest.mark.parametrize("mode", ["signal", "cancel"])
async def test_child_handle_signal_and_cancel(make_engine: EngineFactory, mode: str) -> None:
    engine = make_engine(workflows=[c_boss, c_waiter], activities=[])
    async with engine:
        result = await c_boss.run(engine, mode, id=f"boss-{mode}", timeout=10)
    assert result == ("hello" if mode == "signal" else "child saw cancel")


@workflow(name="c_failing_child")
async def c_failing_child(ctx: WorkflowContext) -> None:
    raise ValueError("child broke")


@workflow(name="c_catching_parent")
async def c_catching_parent(ctx: WorkflowContext) -> str:
    try:
        await c_failing_child()
    except ChildWorkflowError as exc:
        return f"{exc.status}:{exc.error_type}:{exc.message}"
    return "no error"


async def test_child_failure_surfaces_as_child_workflow_error(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[c_catching_parent, c_failing_child], activities=[])
    async with engine:
        assert await c_catching_parent.run(engine, id="p-fail", timeout=10) == (
            "failed:ValueError:child broke"
        )


@workflow(name="c_sleeper")
async def c_sleeper(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(3600)
    except Cancelled:
        return "cancelled politely"
    return "slept"


@workflow(name="c_short_parent")
async def c_short_parent(ctx: WorkflowContext, policy: str) -> str:
    child = await ctx.start_child(c_sleeper, id=f"kid-{policy}", parent_close=policy)
    return child.id


@pytest.mark.parametrize(
    ("policy", "child_status"),
    [("terminate", "terminated"), ("cancel", "completed"), ("abandon", "running")],
)
async def test_parent_close_policy(
    make_engine: EngineFactory, policy: str, child_status: str
) -> None:
    engine = make_engine(workflows=[c_short_parent, c_sleeper], activities=[])
    async with engine:
        child_id = await c_short_parent.run(engine, policy, id=f"short-{policy}", timeout=10)
        child = engine.get_handle(child_id)
        for _ in range(200):
            if await child.status() == child_status:
                break
            await asyncio.sleep(0.02)
        assert await child.status() == child_status
        if policy == "cancel":
            assert await child.result(timeout=5) == "cancelled politely"


@workflow(name="c_squatter")
async def c_squatter(ctx: WorkflowContext) -> None:
    return None


@workflow(name="c_collider")
async def c_collider(ctx: WorkflowContext) -> str:
    try:
        await ctx.start_child(c_quote, "x", id="taken")
        return await (await ctx.start_child(c_quote, "x", id="taken")).result()  # type: ignore[return-value]
    except ChildWorkflowError as exc:
        return exc.error_type


async def test_child_id_taken_by_another_instance(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[c_collider, c_quote, c_squatter], activities=[c_price])
    async with engine:
        await c_squatter.run(engine, id="taken", timeout=10)
        assert await c_collider.run(engine, id="collider", timeout=10) == (
            "WorkflowAlreadyStartedError"
        )


@workflow(name="c_counter")
async def c_counter(ctx: WorkflowContext, total: int, start: int = 0) -> int:
    value = start
    for _ in range(5):
        value += await c_price("ab")
        if value >= total:
            return value
    ctx.continue_as_new(total, value)


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_continue_as_new_chains_runs(make_engine: EngineFactory, max_cached: int) -> None:
    engine = make_engine(workflows=[c_counter], activities=[c_price], max_cached=max_cached)
    async with engine:
        h = await c_counter.start(engine, 400, id=f"counter-{max_cached}")
        first_run = (await h.describe()).run_id
        assert await h.result(timeout=10) == 400
        desc = await h.describe()
        assert desc.run_id != first_run
        history = await h.history()
        assert history[0].kind == "WorkflowStarted"
        assert history[0].event.input == [400, 300]  # type: ignore[attr-defined]
        assert len(history) < 20  # the last run only
        old = await engine.store.load_history(h.id, first_run)
        assert old[-1].kind == "WorkflowContinuedAsNew"


@workflow(name="c_long")
async def c_long(ctx: WorkflowContext, n: int) -> int:
    for i in range(n):
        await c_price("x" * (i % 3))
    return n


async def test_long_history_warns_once(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(workflows=[c_long], activities=[c_price], history_warning=20)
    with caplog.at_level("WARNING", logger="stalwart.runtime"):
        async with engine:
            assert await c_long.run(engine, 30, id="long", timeout=10) == 30
    warnings = [r for r in caplog.records if "consider ctx.continue_as_new()" in r.message]
    assert len(warnings) == 1 and "'long'" not in warnings[0].message
