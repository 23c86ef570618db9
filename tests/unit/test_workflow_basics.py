"""Workflows and activities end to end on every local store (memory, SQLite)."""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pydantic
import pytest

import stalwart
from stalwart import (
    ActivityError,
    EncodingError,
    NonRetryableError,
    RetryPolicy,
    WorkflowAlreadyStartedError,
    WorkflowContext,
    WorkflowFailedError,
    activity,
    workflow,
)
from tests.conftest import EngineFactory


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Item:
    sku: str
    qty: int


@dataclass
class Order:
    id: str
    total: Decimal
    items: list[Item]
    color: Color
    placed: datetime
    ref: uuid.UUID


class Receipt(pydantic.BaseModel):
    order_id: str
    txn: str
    amount: Decimal
    lines: tuple[int, ...]
    note: str | None = None


CALLS: list[tuple[str, object]] = []


@activity
async def b_charge(order: Order, amount: Decimal) -> str:
    CALLS.append(("charge", order.id))
    assert isinstance(amount, Decimal)
    assert isinstance(order.items[0], Item)
    return f"txn-{order.id}"


@activity
def b_count_lines(order: Order) -> list[int]:
    CALLS.append(("count", order.id))
    return [i.qty for i in order.items]


@workflow(name="b_process_order")
async def b_process_order(ctx: WorkflowContext, order: Order) -> Receipt:
    txn = await b_charge(order, order.total)
    lines = await b_count_lines(order)
    return Receipt(order_id=order.id, txn=txn, amount=order.total, lines=tuple(lines))


def make_order(oid: str = "o-1") -> Order:
    return Order(
        id=oid,
        total=Decimal("12.50"),
        items=[Item("a", 1), Item("b", 3)],
        color=Color.BLUE,
        placed=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        ref=uuid.UUID(int=7),
    )


async def test_typed_round_trip(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[b_process_order], activities=[b_charge, b_count_lines])
    async with engine:
        receipt = await b_process_order.run(engine, make_order(), id="o-1", timeout=10)
    assert isinstance(receipt, Receipt)
    assert receipt == Receipt(order_id="o-1", txn="txn-o-1", amount=Decimal("12.50"), lines=(1, 3))


async def test_typed_start_form_and_get_handle(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[b_process_order], activities=[b_charge, b_count_lines])
    async with engine:
        handle = await engine.start(b_process_order(make_order("o-2")), id="o-2")
        assert (await handle.result(timeout=10)).txn == "txn-o-2"
        again = engine.get_handle("o-2")
        assert isinstance(await again.result(timeout=10), Receipt)
        assert await again.exists()
        assert not await engine.get_handle("nope").exists()
        with pytest.raises(stalwart.WorkflowNotFoundError):
            await engine.get_handle("nope").status()


async def test_activity_outside_workflow_is_plain_call() -> None:
    assert b_count_lines(make_order()) == [1, 3]
    assert await b_charge(make_order(), Decimal("1")) == "txn-o-1"


async def test_start_is_idempotent_and_conflicts_are_refused(make_engine: EngineFactory) -> None:
    CALLS.clear()
    engine = make_engine(workflows=[b_process_order], activities=[b_charge, b_count_lines])
    async with engine:
        first = await b_process_order.start(engine, make_order("dup"), id="dup")
        second = await b_process_order.start(engine, make_order("dup"), id="dup")
        assert (await first.result(timeout=10)) == (await second.result(timeout=10))
        with pytest.raises(WorkflowAlreadyStartedError, match="other input"):
            other = make_order("dup")
            other.total = Decimal("99")
            await b_process_order.start(engine, other, id="dup")
        listing = await engine.list(name="b_process_order")
        assert [d.id for d in listing.items] == ["dup"]
    assert CALLS.count(("charge", "dup")) == 1


async def test_unencodable_argument_fails_at_start_naming_parameter(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine(workflows=[b_process_order], activities=[b_charge, b_count_lines])
    async with engine:
        with pytest.raises(EncodingError, match=r"b_process_order\(order\)"):
            await b_process_order.start(engine, object(), id="bad")  # type: ignore[arg-type]
        assert not await engine.get_handle("bad").exists()


@activity
async def b_takes_set(values: object) -> int:
    return 1


@workflow(name="b_bad_call")
async def b_bad_call(ctx: WorkflowContext) -> str:
    try:
        await b_takes_set(object())
    except EncodingError as exc:
        return str(exc)
    return "no error"


async def test_unencodable_activity_argument_fails_at_call_site(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine(workflows=[b_bad_call], activities=[b_takes_set])
    async with engine:
        message = await b_bad_call.run(engine, id="bad-call", timeout=10)
    assert "b_takes_set(values)" in message


ATTEMPTS: dict[str, int] = {}


@activity(retry=RetryPolicy(max_attempts=4, initial_interval=0.01, backoff=2.0))
async def b_flaky(key: str, fail_times: int) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    info = stalwart.activity_context()
    assert info.attempt == ATTEMPTS[key]
    if ATTEMPTS[key] <= fail_times:
        raise ValueError(f"failure {ATTEMPTS[key]}")
    return f"{key} ok after {ATTEMPTS[key]} (key {info.idempotency_key})"


@activity(retry=RetryPolicy(max_attempts=5, initial_interval=0.01))
async def b_fatal() -> None:
    ATTEMPTS["fatal"] = ATTEMPTS.get("fatal", 0) + 1
    raise NonRetryableError("card declined")


class Declined(Exception):
    pass


@activity(retry=RetryPolicy(max_attempts=5, initial_interval=0.01, non_retryable=[Declined]))
async def b_declined() -> None:
    ATTEMPTS["declined"] = ATTEMPTS.get("declined", 0) + 1
    raise Declined("nope")


@workflow(name="b_retrying")
async def b_retrying(ctx: WorkflowContext, key: str, fail_times: int) -> str:
    return await b_flaky(key, fail_times)


@workflow(name="b_catches")
async def b_catches(ctx: WorkflowContext, which: str) -> dict[str, object]:
    try:
        if which == "fatal":
            await b_fatal()
        elif which == "declined":
            await b_declined()
        else:
            await b_flaky(which, 99)
    except ActivityError as exc:
        return {
            "type": exc.error_type,
            "message": exc.message,
            "attempts": exc.attempts,
            "non_retryable": exc.non_retryable,
            "has_traceback": "Traceback" in exc.traceback,
        }
    return {}


async def test_retries_then_success(make_engine: EngineFactory) -> None:
    ATTEMPTS.clear()
    engine = make_engine(workflows=[b_retrying], activities=[b_flaky])
    async with engine:
        h = await b_retrying.start(engine, "k1", 2, id="retry-1")
        run = (await h.describe()).run_id[:12]
        assert await h.result(timeout=10) == f"k1 ok after 3 (key retry-1:{run}:0)"
        kinds = [e.kind for e in await h.history()]
    assert kinds.count("ActivityAttemptFailed") == 2
    assert kinds.count("ActivityCompleted") == 1


async def test_activity_errors_surface_with_type_message_and_traceback(
    make_engine: EngineFactory,
) -> None:
    ATTEMPTS.clear()
    engine = make_engine(workflows=[b_catches], activities=[b_flaky, b_fatal, b_declined])
    async with engine:
        exhausted = await b_catches.run(engine, "always", id="c1", timeout=10)
        fatal = await b_catches.run(engine, "fatal", id="c2", timeout=10)
        declined = await b_catches.run(engine, "declined", id="c3", timeout=10)
    assert exhausted == {
        "type": "ValueError",
        "message": "failure 4",
        "attempts": 4,
        "non_retryable": False,
        "has_traceback": True,
    }
    assert fatal["type"] == "NonRetryableError" and fatal["attempts"] == 1
    assert fatal["non_retryable"] is True and ATTEMPTS["fatal"] == 1
    assert declined["type"] == "Declined" and ATTEMPTS["declined"] == 1


@activity(timeout=0.05, retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
async def b_slow() -> str:
    await asyncio.sleep(5)
    return "late"


@activity
async def b_fast_ok() -> str:
    return "fast"


@workflow(name="b_timeouts")
async def b_timeouts(ctx: WorkflowContext) -> list[str]:
    out = []
    try:
        await b_slow()
    except ActivityError as exc:
        out.append(f"{exc.error_type}:{exc.attempts}")
    out.append(await ctx.activity(b_fast_ok, timeout=1))
    try:
        await ctx.activity(b_slow, timeout=timedelta(milliseconds=20), retry=RetryPolicy(1))
    except ActivityError as exc:
        out.append(f"{exc.error_type}:{exc.attempts}")
    return out


async def test_activity_start_to_close_timeout(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[b_timeouts], activities=[b_slow, b_fast_ok])
    async with engine:
        result = await b_timeouts.run(engine, id="t1", timeout=10)
    assert result == ["TimeoutError:2", "fast", "TimeoutError:1"]


@workflow(name="b_forever", timeout=0.2)
async def b_forever(ctx: WorkflowContext) -> None:
    await ctx.wait_for_signal("never")


async def test_workflow_timeout(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[b_forever], activities=[])
    async with engine:
        h = await b_forever.start(engine, id="wf-timeout")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "timed_out"
        assert await h.status() == "timed_out"


@workflow(name="b_raises")
async def b_raises(ctx: WorkflowContext) -> None:
    raise KeyError("missing thing")


async def test_workflow_exception_fails_run(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[b_raises], activities=[])
    async with engine:
        h = await b_raises.start(engine, id="raises")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
    assert info.value.status == "failed"
    assert info.value.error_type == "KeyError"
    assert "missing thing" in info.value.message
    assert "Traceback" in info.value.traceback
