"""Queues on PostgreSQL: limits that hold across concurrent claimers, tasks, dedup keys."""

from __future__ import annotations

import asyncio

from stalwart.store.base import (
    TASK_MESSAGE,
    AppendEvents,
    CompleteTask,
    EnqueueTask,
    QueueLimits,
    SendMessage,
)
from stalwart.store.postgres import PostgresStore
from stalwart.testing import FakeClock
from tests.postgres._helpers import (
    WF,
    Notifications,
    blocked,
    create_op,
    holding,
    register,
    running,
)
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import database_dsn


async def _stores(open_pg: StoreFactory, count: int) -> tuple[list[PostgresStore], FakeClock]:
    clock = FakeClock()
    stores = [await open_pg(clock=clock) for _ in range(count)]
    for k in range(count):
        await register(stores[0], f"w{k}")
    return stores, clock


def _task(task_id: str, queue: str = "q", **kwargs: object) -> EnqueueTask:
    fields: dict[str, object] = {
        "instance_id": "i1",
        "run_id": "run-i1",
        "cmd": int(task_id.rsplit("-", 1)[-1]) if "-" in task_id else 0,
        "attempt": 1,
        "name": "charge",
        "input": [task_id],
        "options": {"timeout": 5},
    }
    fields.update(kwargs)
    return EnqueueTask(task_id, queue, **fields)  # type: ignore[arg-type]


async def test_queue_concurrency_holds_across_concurrent_claimers(open_pg: StoreFactory) -> None:
    """Four stores claiming a queue limited to two at once start exactly two."""
    stores, clock = await _stores(open_pg, 4)
    await stores[0].write([create_op(f"q{k}", queue="q") for k in range(12)])
    await stores[0].write([create_op("plain")])
    clock.advance(1.0)
    limits = {"q": QueueLimits(concurrency=2)}
    rounds = await asyncio.gather(
        *(s.claim(f"w{k}", [WF], queues=limits) for k, s in enumerate(stores))
    )
    claimed = [c.instance_id for claims in rounds for c in claims if c.newly_claimed]
    assert sorted(i for i in claimed if i.startswith("q")) == sorted(
        set(i for i in claimed if i.startswith("q"))
    )
    assert len([i for i in claimed if i.startswith("q")]) == 2
    assert "plain" in claimed  # instances on no queue are not held back
    again = await asyncio.gather(
        *(s.claim(f"w{k}", [WF], queues=limits) for k, s in enumerate(stores))
    )
    assert [c for claims in again for c in claims if c.newly_claimed] == []
    # One of them ends: one more may start.
    first = next(i for i in claimed if i.startswith("q"))
    rec = await stores[0].get_instance(first)
    assert rec is not None and rec.owner is not None
    (out,) = await stores[0].write(
        [AppendEvents(first, rec.owner, rec.epoch, rec.history_len, status="completed")]
    )
    assert out.ok
    rounds = await asyncio.gather(
        *(s.claim(f"w{k}", [WF], queues=limits) for k, s in enumerate(stores))
    )
    assert len([c for claims in rounds for c in claims if c.newly_claimed]) == 1


async def test_queue_rate_limit_counts_starts_in_the_period(open_pg: StoreFactory) -> None:
    """A rate limit of three per 10 s lets three start, then three more 10 s later."""
    stores, clock = await _stores(open_pg, 3)
    await stores[0].write([create_op(f"r{k}", queue="r", priority=k) for k in range(8)])
    limits = {"r": QueueLimits(rate_limit=3, rate_period=10.0)}
    clock.advance(1.0)

    async def claim_all() -> list[str]:
        rounds = await asyncio.gather(
            *(s.claim(f"w{k}", [WF], queues=limits) for k, s in enumerate(stores))
        )
        return [c.instance_id for claims in rounds for c in claims if c.newly_claimed]

    first = await claim_all()
    assert len(first) == 3
    assert await claim_all() == []
    clock.advance(10.5)
    assert len(await claim_all()) == 3


async def test_tasks_respect_concurrency_across_claimers_and_complete_once(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """Task claims hold the queue's concurrency globally; completing a task delivers its
    outcome to the instance's inbox (and announces the instance) exactly once."""
    stores, clock = await _stores(open_pg, 4)
    await running(stores[0], "i1")
    await stores[0].write([_task(f"t-{k}", priority=k % 3) for k in range(10)])
    clock.advance(1.0)
    limits = {"q": QueueLimits(concurrency=3)}
    rounds = await asyncio.gather(
        *(s.claim_tasks(f"w{k}", limits, {"q": 10}) for k, s in enumerate(stores))
    )
    tasks = [t for claimed in rounds for t in claimed]
    assert len(tasks) == 3 == len({t.id for t in tasks})
    assert all(t.status == "running" and t.started_at == clock() for t in tasks)
    assert await stores[0].queue_stats("q") == {"ready": 7, "running": 3, "done": 0}
    task = tasks[0]
    assert task.owner is not None
    async with Notifications.listen(database_dsn(postgres_database), stores[0].channel) as notes:
        wrong = await stores[1].write([CompleteTask(task.id, "intruder", {"type": "X"})])
        assert [(o.ok, o.error) for o in wrong] == [(False, "conflict")]
        outcome = {"type": "ActivityCompleted", "cmd": task.cmd, "result": 7}
        (done,) = await stores[1].write([CompleteTask(task.id, task.owner, outcome)])
        assert done.ok
        assert await notes.take(1) == ["i1"]
        (again,) = await stores[2].write([CompleteTask(task.id, task.owner, outcome)])
        assert (again.ok, again.error) == (False, "conflict")
        (ghost,) = await stores[2].write([CompleteTask("nope", task.owner, outcome)])
        assert (ghost.ok, ghost.error) == (False, "not_found")
    inbox = await stores[0].fetch_inbox("i1")
    assert [(m.kind, m.name, m.payload) for m in inbox] == [(TASK_MESSAGE, str(task.cmd), outcome)]
    rec = await stores[0].get_instance("i1")
    assert rec is not None and rec.wake_at == clock()
    more = await stores[3].claim_tasks("w3", limits, {"q": 10})
    assert len(more) == 1  # the finished task freed one slot
    assert await stores[0].queue_stats("q") == {"ready": 6, "running": 3, "done": 1}


async def test_tasks_of_expired_workers_are_reclaimed(open_pg: StoreFactory) -> None:
    """A running task whose worker's lease expired is claimable again."""
    stores, clock = await _stores(open_pg, 2)
    await running(stores[0], "i1")
    await stores[0].write([_task("t-1"), _task("t-2", not_before=clock() + 60.0)])
    (task,) = await stores[0].claim_tasks("w0", {}, {"q": 5})
    assert task.id == "t-1"
    assert await stores[1].claim_tasks("w1", {}, {"q": 5}) == []
    await stores[0].expire_worker("w0")
    (taken,) = await stores[1].claim_tasks("w1", {}, {"q": 5})
    assert (taken.id, taken.owner) == ("t-1", "w1")
    clock.advance(61.0)
    assert [t.id for t in await stores[1].claim_tasks("w1", {}, {"q": 5})] == ["t-2"]


async def test_concurrent_creates_with_one_dedup_key(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """Two transactions creating different ids with the same dedup key at once: the second
    waits for the first and reports "duplicate" (not an error)."""
    dsn = database_dsn(postgres_database)
    stores, _ = await _stores(open_pg, 2)
    await stores[0].write([create_op("blocker")])
    async with holding(dsn, stores[0].schema, "blocker"):
        first = asyncio.create_task(
            stores[0].write(
                [create_op("a", dedup_key="order-42"), SendMessage("blocker", "signal", "x")]
            )
        )
        await blocked(dsn, 1)
        second = asyncio.create_task(stores[1].write([create_op("b", dedup_key="order-42")]))
        await blocked(dsn, 2)
    (a, _), (b,) = await first, await second
    assert a.ok and a.created
    assert (b.ok, b.error) == (False, "duplicate")
    assert b.record is not None and b.record.id == "a"
    assert await stores[0].get_instance("b") is None
    # Once the holder has ended, the key is free again.
    await register(stores[0], "w0")
    (claim,) = [c for c in await stores[0].claim("w0", [WF]) if c.instance_id == "a"]
    (end,) = await stores[0].write([AppendEvents("a", "w0", claim.epoch, 1, status="completed")])
    assert end.ok
    (c,) = await stores[1].write([create_op("c", dedup_key="order-42")])
    assert c.ok and c.created
