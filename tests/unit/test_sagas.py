"""Sagas: three authoring styles, compensation rules, durability, intervention, visibility."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stalwart import (
    ActivityError,
    CompensatedError,
    Engine,
    RetryPolicy,
    Saga,
    WorkerOptions,
    WorkflowContext,
    WorkflowFailedError,
    activity,
    saga_step,
    workflow,
)
from tests.conftest import EngineFactory

LOG: list[str] = []
FAIL: set[str] = set()


def maybe_fail(name: str) -> None:
    if name in FAIL:
        raise RuntimeError(f"{name} failed")


@activity
async def s_refund(txn: str) -> None:
    LOG.append(f"refund {txn}")


@activity(compensate=s_refund, retry=RetryPolicy(max_attempts=1))
async def s_charge(card: str, amount: int) -> str:
    LOG.append(f"charge {amount}")
    maybe_fail("charge")
    return f"txn-{card}-{amount}"


@activity
async def s_release(item: str, qty: int) -> None:
    LOG.append(f"release {item}x{qty}")


@activity(compensate=s_release, compensate_with="input")
async def s_reserve(item: str, qty: int) -> str:
    LOG.append(f"reserve {item}x{qty}")
    maybe_fail("reserve")
    return f"res-{item}"


@activity(retry=RetryPolicy(max_attempts=1))
async def s_ship(address: str) -> str:
    LOG.append(f"ship {address}")
    maybe_fail("ship")
    return "tracking-1"


@workflow(name="s_order")
async def s_order(ctx: WorkflowContext, card: str) -> str:
    async with ctx.saga():
        await s_reserve("book", 2)
        await s_charge(card, 30)
        return await s_ship("home")


ALL = [s_refund, s_charge, s_release, s_reserve, s_ship]


@pytest.fixture(autouse=True)
def reset() -> None:
    LOG.clear()
    FAIL.clear()


async def test_pairing_happy_path_runs_no_compensation(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[s_order], activities=ALL)
    async with engine:
        assert await s_order.run(engine, "visa", id="ok", timeout=10) == "tracking-1"
    assert LOG == ["reserve bookx2", "charge 30", "ship home"]


async def test_failure_compensates_in_reverse_with_result_or_input(
    make_engine: EngineFactory,
) -> None:
    FAIL.add("ship")
    engine = make_engine(workflows=[s_order], activities=ALL, max_cached=0)
    async with engine:
        h = await s_order.start(engine, "visa", id="undo")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "compensated" == await h.status()
        kinds = [e.kind for e in await h.history()]
        steps = {s.name: s for s in await h.steps()}
    # charge's undo got its result; reserve's undo got its input; most recent first.
    assert LOG == [
        "reserve bookx2",
        "charge 30",
        "ship home",
        "refund txn-visa-30",
        "release bookx2",
    ]
    assert kinds.count("CompensationStarted") == 2 and kinds.count("StepCompensated") == 2
    assert kinds[-1] == "WorkflowCompensated"
    assert steps["s_reserve"].status == "compensated" and steps["s_charge"].status == "compensated"
    assert steps["s_ship"].status == "failed" and steps["s_ship"].compensation is None
    assert steps["s_charge"].compensation == "s_refund"


@activity
async def s_undo_step(label: str) -> None:
    LOG.append(f"undo {label}")


@activity(retry=RetryPolicy(max_attempts=1))
async def s_do(label: str, delay: float) -> str:
    await asyncio.sleep(delay)
    LOG.append(f"do {label}")
    maybe_fail(label)
    return label


@workflow(name="s_fluent")
async def s_fluent(ctx: WorkflowContext) -> str:
    await ctx.step(s_do, "a", 0.0).compensate(s_undo_step)
    # b and c run in parallel; c finishes first, so c is undone before b.
    await asyncio.gather(
        ctx.step(s_do, "b", 0.05).compensate(s_undo_step),
        ctx.step(s_do, "c", 0.0).compensate(s_undo_step),
    )
    email = await ctx.step(s_do, "email", 0.0).optional()
    await ctx.step(s_do, "d", 0.0).compensate(s_undo_step).compensate_on_failure()
    return str(email)


async def test_fluent_parallel_optional_and_compensate_on_failure(
    make_engine: EngineFactory,
) -> None:
    FAIL.update({"email", "d"})
    engine = make_engine(workflows=[s_fluent], activities=[s_do, s_undo_step])
    async with engine:
        h = await s_fluent.start(engine, id="fluent")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "compensated"
        steps = {s.name + str(s.step): s.status for s in await h.steps()}
    undone = [line for line in LOG if line.startswith("undo")]
    # d failed but is compensable on failure (its input); the optional email triggered
    # nothing; parallel b and c are both undone, in reverse completion order.
    assert undone == ["undo d", "undo b", "undo c", "undo a"]
    assert sorted(steps.values()).count("compensated") == 4
    assert "skipped" in steps.values()


@activity
async def s_slow(label: str) -> str:
    LOG.append(f"start {label}")
    await asyncio.sleep(30)
    return label


@workflow(name="s_cancellable")
async def s_cancellable(ctx: WorkflowContext) -> None:
    async with ctx.saga():
        await s_reserve("lamp", 1)
        await s_charge("amex", 5)
        await s_slow("wait")


async def test_cancel_compensates_then_ends_compensated(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[s_cancellable], activities=[*ALL, s_slow])
    async with engine:
        h = await s_cancellable.start(engine, id="cancel-saga")
        for _ in range(200):
            if "start wait" in LOG:
                break
            await asyncio.sleep(0.01)
        await h.cancel("customer changed mind")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "compensated"
        last = (await h.history())[-1].event
    assert LOG[-2:] == ["refund txn-amex-5", "release lampx1"]
    assert "cancelled: customer changed mind" in last.reason  # type: ignore[attr-defined]


BROKEN = {"on": True}
ALERTS: list[dict[str, Any]] = []


@activity(retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
async def s_fragile_refund(txn: str) -> None:
    LOG.append(f"try refund {txn}")
    if BROKEN["on"]:
        raise ConnectionError("payment provider down")


@activity(compensate=s_fragile_refund)
async def s_charge2(card: str) -> str:
    LOG.append("charge2")
    return f"txn-{card}"


@workflow(name="s_stuck")
async def s_stuck(ctx: WorkflowContext) -> None:
    async with ctx.saga():
        await s_reserve("chair", 1)
        await s_charge2("visa")
        await s_ship("nowhere")


async def test_failed_compensation_parks_alerts_once_and_can_be_retried(tmp_path: Path) -> None:
    FAIL.add("ship")
    BROKEN["on"] = True
    ALERTS.clear()
    url = f"sqlite:///{tmp_path / 'saga.db'}"
    opts = WorkerOptions(poll_interval=0.05, max_cached=0, shutdown_grace=0.5)
    async with Engine(
        url,
        workflows=[s_stuck],
        activities=[*ALL, s_charge2, s_fragile_refund],
        options=opts,
        alert_hook=ALERTS.append,
    ) as engine:
        h = await s_stuck.start(engine, id="stuck")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        desc = await h.describe()
        assert desc.status == "failed" and desc.needs_intervention
        assert desc.error is not None and desc.error["step_name"] == "s_charge2"
        assert len(ALERTS) == 1
        assert ALERTS[0]["instance_id"] == "stuck" and ALERTS[0]["step_name"] == "s_charge2"
        assert "payment provider down" in ALERTS[0]["error"]["message"]
        assert LOG.count("try refund txn-visa") == 2  # the compensation's own retry policy
        assert "release chairx1" not in LOG  # LIFO: nothing older is undone meanwhile
        assert info.value.status == "failed"

    BROKEN["on"] = False  # the operator fixes the cause, then resumes the rollback
    async with Engine(
        url,
        workflows=[s_stuck],
        activities=[*ALL, s_charge2, s_fragile_refund],
        options=opts,
        alert_hook=ALERTS.append,
    ) as engine:
        h = engine.get_handle("stuck")
        assert await h.retry_compensation() is True
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "compensated"
        assert not (await h.describe()).needs_intervention
        assert await h.retry_compensation() is False
        kinds = [e.kind for e in await h.history()]
    assert len(ALERTS) == 1
    assert LOG[-2:] == ["try refund txn-visa", "release chairx1"]
    assert kinds.count("CompensationFailed") == 1 and kinds.count("StepCompensated") == 2


GATE = asyncio.Event()


@activity
async def s_gated_release(item: str, qty: int) -> None:
    LOG.append(f"gated release {item}")
    await GATE.wait()


@activity(compensate=s_gated_release, compensate_with="input")
async def s_reserve2(item: str, qty: int) -> str:
    return item


@workflow(name="s_crashy")
async def s_crashy(ctx: WorkflowContext) -> None:
    async with ctx.saga():
        await s_reserve2("desk", 1)
        await s_charge("mc", 7)
        await s_ship("moon")


async def test_restart_during_compensation_does_not_repeat_finished_ones(tmp_path: Path) -> None:
    FAIL.add("ship")
    GATE.clear()
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    opts = WorkerOptions(poll_interval=0.05, shutdown_grace=0.2)
    acts = [*ALL, s_reserve2, s_gated_release]
    async with Engine(url, workflows=[s_crashy], activities=acts, options=opts) as first:
        h = await s_crashy.start(first, id="crashy")
        for _ in range(300):
            if "gated release desk" in LOG:
                break
            await asyncio.sleep(0.01)
        assert (await h.describe()).status == "compensating"
    # The worker stopped mid-rollback; a new one finishes it.
    GATE.set()
    async with Engine(url, workflows=[s_crashy], activities=acts, options=opts) as second:
        with pytest.raises(WorkflowFailedError):
            await second.get_handle("crashy").result(timeout=10)
        assert await second.get_handle("crashy").status() == "compensated"
    assert LOG.count("refund txn-mc-7") == 1
    assert LOG.count("gated release desk") == 2  # the one in flight at the stop ran again


@activity(retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
async def s_book(what: str) -> str:
    LOG.append(f"book {what}")
    maybe_fail(what)
    return f"{what}-ref"


@activity
async def s_cancel_booking(ref: str) -> None:
    LOG.append(f"cancel {ref}")


class TripBooking(Saga):
    traveller: str
    flight: str | None = None
    hotel: str | None = None
    car: str | None = None

    steps = ["book_flight", ["book_hotel", "book_car"], "send_itinerary"]

    @saga_step(compensate="cancel_flight")
    async def book_flight(self, ctx: WorkflowContext) -> str:
        self.flight = await s_book("flight")
        return self.flight

    async def cancel_flight(self, ctx: WorkflowContext, ref: str) -> None:
        await s_cancel_booking(ref)
        self.flight = None

    @saga_step(compensate="cancel_hotel")
    async def book_hotel(self, ctx: WorkflowContext) -> str:
        self.hotel = await s_book("hotel")
        return self.hotel

    async def cancel_hotel(self, ctx: WorkflowContext, ref: str) -> None:
        await s_cancel_booking(ref)
        self.hotel = None

    @saga_step(compensate="cancel_car")
    async def book_car(self, ctx: WorkflowContext) -> str:
        self.car = await s_book("car")
        return self.car

    async def cancel_car(self, ctx: WorkflowContext, ref: str) -> None:
        await s_cancel_booking(ref)

    @saga_step
    async def send_itinerary(self, ctx: WorkflowContext) -> None:
        await s_book("itinerary")


@pytest.mark.parametrize("failing", [None, "car", "itinerary"])
async def test_declarative_saga(make_engine: EngineFactory, failing: str | None) -> None:
    if failing:
        FAIL.add(failing)
    engine = make_engine(workflows=[TripBooking.workflow], activities=[s_book, s_cancel_booking])
    async with engine:
        h = await TripBooking.start(engine, TripBooking("ada"), id=f"trip-{failing}")
        if failing is None:
            final = await h.result(timeout=10)
            assert final == TripBooking("ada", "flight-ref", "hotel-ref", "car-ref")
            assert [s.status for s in await h.steps()] == ["completed"] * 4
            return
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "compensated"
        rows = {s.name: s.status for s in await h.steps()}
    cancels = [line for line in LOG if line.startswith("cancel")]
    if failing == "car":
        # the parallel group: the hotel (completed) is undone, the failed car is not
        assert cancels == ["cancel hotel-ref", "cancel flight-ref"]
        assert rows == {
            "book_flight": "compensated",
            "book_hotel": "compensated",
            "book_car": "failed",
            "send_itinerary": "pending",
        }
    else:
        assert sorted(cancels[:2]) == ["cancel car-ref", "cancel hotel-ref"]
        assert cancels[2] == "cancel flight-ref"


async def test_compensated_error_can_be_caught(make_engine: EngineFactory) -> None:
    @workflow(name="s_catcher")
    async def s_catcher(ctx: WorkflowContext) -> str:
        try:
            async with ctx.saga():
                await s_charge("jcb", 1)
                await s_ship("x")
        except CompensatedError as exc:
            return f"rolled back: {exc.reason}"
        return "shipped"

    FAIL.add("ship")
    engine = make_engine(workflows=[s_catcher], activities=ALL)
    async with engine:
        result = await s_catcher.run(engine, id="catcher", timeout=10)
    assert result.startswith("rolled back: ActivityError")
    assert "refund txn-jcb-1" in LOG


def test_compensation_must_be_an_activity() -> None:
    with pytest.raises(Exception, match="must be an @activity"):
        activity(compensate=print)(lambda: None)  # type: ignore[call-overload]


_ = ActivityError
