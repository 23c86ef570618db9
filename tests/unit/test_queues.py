"""Task queues (remote activities) and flow control: limits, priorities, dedup, queued starts."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from stalwart import (
    Engine,
    Queue,
    RetryPolicy,
    WorkerOptions,
    WorkflowAlreadyStartedError,
    WorkflowContext,
    activity,
    workflow,
)

SPANS: list[tuple[str, float, float, str]] = []
FAILS: dict[str, int] = {}


@activity(queue="payments", retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
async def q_pay(order: str, seconds: float) -> str:
    start = time.monotonic()
    await asyncio.sleep(seconds)
    if FAILS.get(order, 0) > 0:
        FAILS[order] -= 1
        raise ConnectionError("gateway busy")
    SPANS.append((order, start, time.monotonic(), "pay"))
    return f"paid {order}"


@workflow(name="q_checkout")
async def q_checkout(ctx: WorkflowContext, order: str, seconds: float = 0.0) -> str:
    return await q_pay(order, seconds)


@workflow(name="q_prioritized")
async def q_prioritized(ctx: WorkflowContext, order: str, priority: int) -> str:
    return await ctx.activity(q_pay, order, 0.02, priority=priority)


def max_overlap(spans: list[tuple[str, float, float, str]]) -> int:
    points = sorted([(s, 1) for _, s, _, _ in spans] + [(e, -1) for _, _, e, _ in spans])
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


OPTS = WorkerOptions(poll_interval=0.02, shutdown_grace=1.0)


@pytest.fixture(autouse=True)
def reset() -> None:
    SPANS.clear()
    FAILS.clear()


async def test_queued_activity_runs_on_the_worker_serving_the_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    FAILS["o-2"] = 1  # the retry is a new task, enqueued with its backoff
    async with (
        Engine(url, workflows=[q_checkout], activities=[], options=OPTS) as orchestrator,
        Engine(
            url, workflows=[], activities=[q_pay], options=OPTS, queues=[Queue("payments")]
        ) as payer,
    ):
        assert payer.worker is not None and orchestrator.worker is not None
        h1 = await q_checkout.start(orchestrator, "o-1", id="q1")
        h2 = await q_checkout.start(orchestrator, "o-2", id="q2")
        assert await h1.result(timeout=10) == "paid o-1"
        assert await h2.result(timeout=10) == "paid o-2"
        kinds = [e.kind for e in await h2.history()]
        assert kinds.count("ActivityAttemptFailed") == 1
        assert await payer.store.queue_stats("payments") == {"ready": 0, "running": 0, "done": 3}


@pytest.mark.parametrize(
    ("queue", "expected"),
    [(Queue("payments", concurrency=2), 2), (Queue("payments", worker_concurrency=1), 1)],
)
async def test_concurrency_limits_hold(tmp_path: Path, queue: Queue, expected: int) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with Engine(
        url, workflows=[q_checkout], activities=[q_pay], options=OPTS, queues=[queue]
    ) as engine:
        handles = [await q_checkout.start(engine, f"c{i}", 0.03, id=f"c{i}") for i in range(8)]
        for h in handles:
            await h.result(timeout=20)
    assert len(SPANS) == 8
    assert max_overlap(SPANS) == expected


async def test_rate_limit_spaces_starts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with Engine(
        url,
        workflows=[q_checkout],
        activities=[q_pay],
        options=OPTS,
        queues=[Queue("payments", rate_limit=2, rate_period=0.3)],
    ) as engine:
        handles = [await q_checkout.start(engine, f"r{i}", id=f"r{i}") for i in range(6)]
        for h in handles:
            await h.result(timeout=20)
    # The limit holds on claim times (the store's clock); a body may begin a moment after
    # its claim, so the bodies' own clocks would measure scheduling lag, not the limiter.
    with sqlite3.connect(tmp_path / "q.db") as conn:
        starts = sorted(
            t for (t,) in conn.execute("SELECT started_at FROM tasks WHERE queue = 'payments'")
        )
    assert len(starts) == 6
    for i in range(len(starts) - 2):
        assert starts[i + 2] - starts[i] >= 0.3 - 1e-9  # never 3 starts within one period


async def test_priorities_order_waiting_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with Engine(
        url,
        workflows=[q_prioritized],
        activities=[q_pay],
        options=OPTS,
        queues=[Queue("payments", concurrency=1)],
    ) as engine:
        handles = [await q_prioritized.start(engine, f"low{i}", 0, id=f"low{i}") for i in range(4)]
        handles.append(await q_prioritized.start(engine, "high", 10, id="high"))
        for h in handles:
            await h.result(timeout=20)
    order = [o for o, *_ in sorted(SPANS, key=lambda s: s[1])]
    assert order.index("high") <= 1  # at most the first low, already running, goes first


@activity
async def q_track(name: str) -> None:
    start = time.monotonic()
    await asyncio.sleep(0.03)
    SPANS.append((name, start, time.monotonic(), "wf"))


@workflow(name="q_bulk")
async def q_bulk(ctx: WorkflowContext, name: str) -> str:
    await q_track(name)
    await q_track(name + "-2")
    return name


async def test_workflows_started_on_a_queue_respect_its_limit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with Engine(
        url,
        workflows=[q_bulk],
        activities=[q_track],
        options=OPTS,
        queues=[Queue("bulk", concurrency=1)],
    ) as engine:
        handles = [
            await engine.start(q_bulk.invoke(f"w{i}"), id=f"w{i}", queue="bulk") for i in range(4)
        ]
        assert [await h.result(timeout=20) for h in handles] == ["w0", "w1", "w2", "w3"]
    by_workflow: dict[str, tuple[float, float]] = {}
    for name, start, end, _ in SPANS:
        key = name.removesuffix("-2")
        lo, hi = by_workflow.get(key, (start, end))
        by_workflow[key] = (min(lo, start), max(hi, end))
    spans = [(k, s, e, "wf") for k, (s, e) in by_workflow.items()]
    assert max_overlap(spans) == 1


async def test_dedup_key_refuses_a_second_active_instance() -> None:
    async with Engine("memory://", workflows=[q_bulk], activities=[q_track]) as engine:
        first = await engine.start(q_bulk.invoke("a"), id="d1", dedup_key="customer-7")
        with pytest.raises(WorkflowAlreadyStartedError, match=r"'d1'.*customer-7"):
            await engine.start(q_bulk.invoke("b"), id="d2", dedup_key="customer-7")
        await first.result(timeout=10)
        again = await engine.start(q_bulk.invoke("c"), id="d3", dedup_key="customer-7")
        assert await again.result(timeout=10) == "c"


async def test_task_of_a_dead_worker_is_taken_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with (
        Engine(url, workflows=[q_checkout], activities=[], options=OPTS) as orchestrator,
        Engine(
            url, workflows=[], activities=[q_pay], options=OPTS, queues=[Queue("payments")]
        ) as first,
    ):
        h = await q_checkout.start(orchestrator, "slow", 0.5, id="dead")
        for _ in range(200):
            if (await first.store.queue_stats("payments"))["running"] == 1:
                break
            await asyncio.sleep(0.01)
        assert first.worker is not None
        await first.store.expire_worker(first.worker.id)  # as if it had died mid-task
        async with Engine(
            url, workflows=[], activities=[q_pay], options=OPTS, queues=[Queue("payments")]
        ) as second:
            assert second.worker is not None
            assert await h.result(timeout=10) == "paid slow"
    completions = [e for e in await _history(url, "dead") if e == "ActivityCompleted"]
    assert completions == ["ActivityCompleted"]  # two executions, one recorded result


async def _history(url: str, instance_id: str) -> list[str]:
    async with Engine(url, worker=False, workflows=[q_checkout], activities=[]) as client:
        return [e.kind for e in await client.get_handle(instance_id).history()]


def test_queue_validation() -> None:
    with pytest.raises(Exception, match="concurrency"):
        Queue("q", concurrency=0)
    with pytest.raises(Exception, match="queue name"):
        Queue("")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_claim_whose_reply_was_lost_runs_without_waiting_for_the_lease(
    tmp_path: Path, kind: str
) -> None:
    """The claim commits but its reply never arrives (the worker sees an error): the
    worker's next claim gets the orphaned task back at once, not after its lease."""
    from stalwart.errors import StoreError

    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'q.db'}"
    options = WorkerOptions(poll_interval=0.02, shutdown_grace=1.0, lease_seconds=60.0)
    async with Engine(
        url, workflows=[q_checkout], activities=[q_pay], options=options, queues=[Queue("payments")]
    ) as engine:
        store = engine.store
        claim = store.claim_tasks
        lost: list[str] = []

        async def claim_then_lose_the_reply(*args: object, **kwargs: object) -> object:
            claimed = await claim(*args, **kwargs)  # type: ignore[arg-type]
            if claimed and not lost:
                lost.extend(t.id for t in claimed)
                raise StoreError("connection lost after COMMIT")
            return claimed

        store.claim_tasks = claim_then_lose_the_reply  # type: ignore[method-assign]
        started = time.monotonic()
        handle = await q_checkout.start(engine, "o-lost", id="lost-reply")
        assert await handle.result(timeout=10) == "paid o-lost"
        assert lost, "the fault was not injected"
        assert time.monotonic() - started < 5.0  # far below the 60 s lease
        assert [s[0] for s in SPANS] == ["o-lost"]  # ran once
