"""Heartbeats, heartbeat and schedule-to-close timeouts, cancellation of running activities."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import stalwart
from stalwart import (
    ActivityCancelledError,
    ActivityError,
    RetryPolicy,
    WorkflowContext,
    WorkflowFailedError,
    activity,
    workflow,
)
from tests.conftest import EngineFactory

SEEN: list[object] = []


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
def h_resumable(total: int) -> int:
    ctx = stalwart.activity_context()
    start = ctx.heartbeat_details or 0
    SEEN.append((ctx.attempt, start))
    for done in range(start, total):
        ctx.heartbeat(done)
        if ctx.attempt == 1 and done == 3:
            raise ConnectionError("link dropped")
    return total


@workflow(name="h_copy")
async def h_copy(ctx: WorkflowContext, total: int) -> int:
    return await h_resumable(total)


async def test_retry_resumes_from_last_heartbeat_details(make_engine: EngineFactory) -> None:
    SEEN.clear()
    engine = make_engine(workflows=[h_copy], activities=[h_resumable], max_cached=0)
    async with engine:
        assert await h_copy.run(engine, 10, id="copy", timeout=10) == 10
    assert SEEN == [(1, 0), (2, 3)]


@activity(heartbeat_timeout=0.1, retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
async def h_stalls() -> str:
    ctx = stalwart.activity_context()
    if ctx.attempt == 1:
        await asyncio.sleep(5)  # silent: the heartbeat timeout fails this attempt
    for _ in range(5):
        ctx.heartbeat()
        await asyncio.sleep(0.03)
    return f"attempt {ctx.attempt}"


@workflow(name="h_watchdog")
async def h_watchdog(ctx: WorkflowContext) -> str:
    return await h_stalls()


async def test_heartbeat_timeout_fails_silent_attempt(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[h_watchdog], activities=[h_stalls])
    async with engine:
        h = await h_watchdog.start(engine, id="watchdog")
        assert await h.result(timeout=10) == "attempt 2"
        failed = [e.event for e in await h.history() if e.kind == "ActivityAttemptFailed"]
    assert len(failed) == 1
    assert failed[0].error["type"] == "HeartbeatTimeoutError"  # type: ignore[attr-defined]


@activity(retry=RetryPolicy(max_attempts=100, initial_interval=0.05, backoff=1.0))
async def h_never() -> None:
    raise RuntimeError("down")


@workflow(name="h_budget")
async def h_budget(ctx: WorkflowContext) -> int:
    try:
        await ctx.activity(h_never, schedule_to_close=0.3)
    except ActivityError as exc:
        return exc.attempts
    return 0


async def test_schedule_to_close_bounds_all_retries(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[h_budget], activities=[h_never])
    async with engine:
        start = time.monotonic()
        attempts = await h_budget.run(engine, id="budget", timeout=10)
        elapsed = time.monotonic() - start
    assert 2 <= attempts <= 8
    assert elapsed < 2


STOPPED = threading.Event()


@activity
def h_worker_loop() -> None:
    ctx = stalwart.activity_context()
    try:
        for _ in range(500):
            ctx.heartbeat()
            time.sleep(0.01)
    except ActivityCancelledError:
        STOPPED.set()
        raise


@workflow(name="h_cancel_me")
async def h_cancel_me(ctx: WorkflowContext) -> None:
    await h_worker_loop()


async def test_cancellation_reaches_heartbeating_activity(make_engine: EngineFactory) -> None:
    STOPPED.clear()
    engine = make_engine(workflows=[h_cancel_me], activities=[h_worker_loop])
    async with engine:
        h = await h_cancel_me.start(engine, id="cancel-act")
        await asyncio.sleep(0.1)
        await h.cancel("enough")
        with pytest.raises(WorkflowFailedError):
            await h.result(timeout=10)
        assert await asyncio.to_thread(STOPPED.wait, 5)
