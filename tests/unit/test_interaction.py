"""Signal handlers, queries, updates, wait_condition and first()."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from stalwart import (
    UnknownHandlerError,
    UpdateFailedError,
    WorkflowContext,
    activity,
    workflow,
)
from tests.conftest import EngineFactory


@dataclass
class Cart:
    items: list[str] = field(default_factory=list)
    total: int = 0
    checked_out: bool = False


@activity
async def i_price(item: str) -> int:
    return len(item)


@workflow(name="i_cart")
async def i_cart(ctx: WorkflowContext, owner: str) -> Cart:
    cart = Cart()

    @ctx.signal_handler("add")
    def add(item: str) -> None:
        cart.items.append(item)

    @ctx.query_handler("summary")
    def summary(prefix: str = "") -> str:
        return f"{prefix}{owner}: {len(cart.items)} items, total {cart.total}"

    @ctx.query_handler("bad")
    def bad() -> None:
        ctx.uuid()
        ctx.side_effect(lambda: 1)

    def check_discount(percent: int) -> None:
        if not 0 < percent <= 50:
            raise ValueError(f"discount {percent}% is out of range")

    @ctx.update_handler("discount", validator=check_discount)
    async def discount(percent: int) -> int:
        base = sum([await i_price(i) for i in cart.items])
        cart.total = base * (100 - percent) // 100
        return cart.total

    @ctx.update_handler("explode")
    def explode() -> None:
        raise RuntimeError("kaboom")

    @ctx.signal_handler("checkout")
    def checkout() -> None:
        cart.checked_out = True

    await ctx.wait_condition(lambda: cart.checked_out, timeout=30)
    return cart


async def settle(engine: object) -> None:
    await asyncio.sleep(0.1)


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_signal_handlers_queries_and_updates(
    make_engine: EngineFactory, max_cached: int
) -> None:
    engine = make_engine(workflows=[i_cart], activities=[i_price], max_cached=max_cached)
    async with engine:
        h = await i_cart.start(engine, "zoe", id=f"cart-{max_cached}")
        await h.signal("add", "apple")
        await h.signal("add", "kiwi")
        for _ in range(100):
            if await h.query("summary") == "zoe: 2 items, total 0":
                break
            await asyncio.sleep(0.02)
        assert await h.query("summary", "> ") == "> zoe: 2 items, total 0"
        with pytest.raises(UnknownHandlerError, match=r"'nope'.*known: bad, summary"):
            await h.query("nope")
        with pytest.raises(RuntimeError, match="may read the workflow's state"):
            await h.query("bad")

        before = len(await h.history())
        with pytest.raises(UpdateFailedError, match="out of range") as refused:
            await h.update("discount", 90)
        assert refused.value.rejected is True
        assert len(await h.history()) == before  # refused before anything was recorded

        assert await h.update("discount", 10, timeout=10) == 8  # (5 + 4) * 0.9
        with pytest.raises(UpdateFailedError, match="kaboom") as failed:
            await h.update("explode", timeout=10)
        assert failed.value.rejected is False
        with pytest.raises(UnknownHandlerError):
            await h.update("nope", timeout=10)

        await h.signal("checkout")
        cart = await h.result(timeout=10)
        assert cart == Cart(items=["apple", "kiwi"], total=8, checked_out=True)
        assert await h.query("summary") == "zoe: 2 items, total 8"  # answered by replay
        kinds = [e.kind for e in await h.history()]
        assert kinds.count("UpdateAccepted") == 2 and kinds.count("UpdateCompleted") == 2
        # The update handler's activity calls were durable calls, recorded in history.
        assert kinds.count("ActivityScheduled") == 2 and kinds.count("ActivityCompleted") == 2


@activity
async def i_slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@workflow(name="i_race")
async def i_race(ctx: WorkflowContext, mode: str) -> list[object]:
    if mode == "timer":
        return list(await ctx.first(ctx.wait_for_signal("never"), ctx.sleep(0.05)))
    if mode == "signal":
        return list(await ctx.first(ctx.sleep(30), ctx.wait_for_signal("go")))
    if mode == "activity":
        return list(await ctx.first(i_slow(0.01), ctx.sleep(30)))
    try:
        await ctx.first(ctx.wait_for_signal("never"), timeout=0.05)
    except TimeoutError as exc:
        return [str(exc)]
    return []


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_first_races_deterministically(make_engine: EngineFactory, max_cached: int) -> None:
    engine = make_engine(workflows=[i_race], activities=[i_slow], max_cached=max_cached)
    async with engine:
        timer = await i_race.run(engine, "timer", id=f"r1-{max_cached}", timeout=10)
        h = await i_race.start(engine, "signal", id=f"r2-{max_cached}")
        await asyncio.sleep(0.05)
        await h.signal("go", "now")
        assert await h.result(timeout=10) == [1, "now"]
        act = await i_race.run(engine, "activity", id=f"r3-{max_cached}", timeout=10)
        late = await i_race.run(engine, "timeout", id=f"r4-{max_cached}", timeout=10)
    assert timer == [1, None]
    assert act == [0, "slept 0.01"]
    assert late == ["nothing finished within 0.05 seconds"]


@workflow(name="i_batches")
async def i_batches(ctx: WorkflowContext, count: int) -> int:
    seen = 0

    @ctx.update_handler("bump")
    def bump() -> int:
        nonlocal seen
        seen += 1
        return count + seen

    await ctx.wait_condition(lambda: seen > 0)
    if count + seen >= 2:
        return count + seen
    ctx.continue_as_new(count + seen)


async def test_update_answered_across_continue_as_new_and_retried_by_id(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine(workflows=[i_batches], activities=[])
    async with engine:
        h = await i_batches.start(engine, 0, id="batches")
        assert await h.update("bump", timeout=5, update_id="u-1") == 1
        # A retry with the same id returns the first outcome and applies nothing again.
        assert await h.update("bump", timeout=5, update_id="u-1") == 1
        assert await h.update("bump", timeout=5) == 2
        assert await h.result(timeout=5) == 2
