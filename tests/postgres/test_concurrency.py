"""READ COMMITTED interleavings, forced with row locks held by a raw connection.

A batch ``[SendMessage(x), SendMessage("blocker")]`` stops half-way (after ``x``) while
another connection holds the ``blocker`` row; other transactions then queue behind it.
"""

from __future__ import annotations

import asyncio
import random
import time

from stalwart._engine.events import SignalReceived
from stalwart.store.base import AppendEvents, SendMessage, WriteOp, WriteOutcome
from stalwart.store.postgres import PostgresStore
from stalwart.testing import FakeClock
from tests.postgres._helpers import blocked, create_op, holding, running
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import database_dsn


def _stalled_send(instance_id: str, blocker: str = "blocker") -> list[WriteOp]:
    return [SendMessage(instance_id, "signal", "late"), SendMessage(blocker, "signal", "x")]


async def _two_stores(open_pg: StoreFactory) -> tuple[PostgresStore, PostgresStore, FakeClock]:
    clock = FakeClock()
    store = await open_pg(clock=clock)
    peer = await open_pg(clock=clock)
    await store.write([create_op("blocker"), create_op("blk2")])
    return store, peer, clock


async def test_message_committed_during_a_step_keeps_the_instance_due(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """A step that waited for a concurrent SendMessage sees its message: due now."""
    dsn = database_dsn(postgres_database)
    store, peer, clock = await _two_stores(open_pg)
    await running(store, "i1")
    t = clock()
    async with holding(dsn, store.schema, "blocker"):
        send = asyncio.create_task(peer.write(_stalled_send("i1")))
        await blocked(dsn, 1)
        step = asyncio.create_task(
            store.write([AppendEvents("i1", "w1", 1, 2, wake_at=t + 900.0, release=True)])
        )
        await blocked(dsn, 2)
    sent, (stepped,) = (await send), (await step)
    assert [o.ok for o in sent] == [True, True] and stepped.ok
    rec = await store.get_instance("i1")
    assert rec is not None
    assert (rec.owner, rec.wake_at) == (None, t)  # not t + 900: the message is unacked
    assert [m.name for m in await store.fetch_inbox("i1")] == ["late"]


async def test_message_ids_of_an_instance_follow_commit_order(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """A later SendMessage waits for an earlier uncommitted one and gets a higher id."""
    dsn = database_dsn(postgres_database)
    store, peer, _ = await _two_stores(open_pg)
    await store.write([create_op("i1")])
    async with holding(dsn, store.schema, "blocker"):
        first = asyncio.create_task(peer.write(_stalled_send("i1")))
        await blocked(dsn, 1)
        second = asyncio.create_task(store.write([SendMessage("i1", "signal", "second")]))
        await blocked(dsn, 2)
        assert await store.fetch_inbox("i1") == []
        assert not second.done()
    (a, _), (b,) = await first, await second
    assert a.message_id is not None and b.message_id is not None
    assert a.message_id < b.message_id
    assert [m.name for m in await store.fetch_inbox("i1")] == ["late", "second"]


async def test_deadlocked_batches_are_retried(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """Two batches locking two instances in opposite orders: PostgreSQL aborts one,
    the store retries it, both succeed, and nothing is applied twice."""
    dsn = database_dsn(postgres_database)
    store, peer, _ = await _two_stores(open_pg)
    await store.write([create_op("a"), create_op("b")])
    async with holding(dsn, store.schema, "blocker"), holding(dsn, store.schema, "blk2"):
        x = asyncio.create_task(
            store.write(
                [
                    SendMessage("a", "signal", "x"),
                    SendMessage("blocker", "signal", "x"),
                    SendMessage("b", "signal", "x"),
                ]
            )
        )
        y = asyncio.create_task(
            peer.write(
                [
                    SendMessage("b", "signal", "y"),
                    SendMessage("blk2", "signal", "y"),
                    SendMessage("a", "signal", "y"),
                ]
            )
        )
        await blocked(dsn, 2)
    outcomes: list[list[WriteOutcome]] = [await x, await y]
    assert all(o.ok for batch in outcomes for o in batch)
    for instance_id in ("a", "b"):
        assert sorted(m.name for m in await store.fetch_inbox(instance_id)) == ["x", "y"]


async def test_concurrent_senders_and_a_consuming_owner_lose_nothing(
    open_pg: StoreFactory,
) -> None:
    """Senders on several connections race an owner that consumes and acknowledges the
    inbox step by step: every message is consumed exactly once or is still waiting, and
    whenever messages wait, the instance is due."""
    clock = FakeClock()
    owner = await open_pg(clock=clock)
    senders = [await open_pg(clock=clock) for _ in range(3)]
    await running(owner, "i1")
    sent: list[int] = []
    stop = asyncio.Event()

    async def send(store: PostgresStore, k: int) -> None:
        n = 0
        while not stop.is_set():
            (out,) = await store.write([SendMessage("i1", "signal", f"{k}-{n}")])
            assert out.ok and out.message_id is not None
            sent.append(out.message_id)
            n += 1
            await asyncio.sleep(random.uniform(0, 0.003))

    consumed: list[int] = []
    history_len = 2

    async def consume_once() -> None:
        nonlocal history_len
        msgs = await owner.fetch_inbox("i1", consumed[-1] if consumed else 0)
        if not msgs:
            return
        events = [(clock(), SignalReceived(m.name, m.payload)) for m in msgs]
        (out,) = await owner.write(
            [
                AppendEvents(
                    "i1",
                    "w1",
                    1,
                    history_len,
                    events,
                    wake_at=clock() + 900.0,
                    inbox_upto=msgs[-1].id,
                )
            ]
        )
        assert out.ok, out
        history_len += len(events)
        consumed.extend(m.id for m in msgs)

    tasks = [asyncio.create_task(send(s, k)) for k, s in enumerate(senders)]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        await consume_once()
    stop.set()
    await asyncio.gather(*tasks)
    waiting = [m.id for m in await owner.fetch_inbox("i1")]
    assert len(consumed) == len(set(consumed))
    assert sorted(consumed + waiting) == sorted(sent)
    assert consumed == sorted(consumed)
    rec = await owner.get_instance("i1")
    assert rec is not None
    if waiting:
        assert rec.wake_at is not None and rec.wake_at <= clock()
    await consume_once()
    rec = await owner.get_instance("i1")
    assert rec is not None and rec.wake_at == clock() + 900.0
    assert await owner.fetch_inbox("i1") == []
    assert rec.history_len == 2 + len(sent)
