"""LISTEN/NOTIFY: which transitions announce an instance, and wait_for_wake()."""

from __future__ import annotations

import asyncio
import time

import pytest

from stalwart.errors import StoreError
from stalwart.store.base import (
    AppendEvents,
    CompleteTask,
    EnqueueTask,
    Reopen,
    Resume,
    SendMessage,
    Suspend,
)
from stalwart.store.postgres import PostgresStore
from stalwart.testing import FakeClock
from tests.postgres._helpers import Notifications, create_op, register, running
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import database_dsn, store_url, unique_schema


@pytest.fixture
def dsn(postgres_database: str) -> str:
    """A plain URL of the session database."""
    return database_dsn(postgres_database)


async def test_send_message_notifies_the_instance_id(open_pg: StoreFactory, dsn: str) -> None:
    """SendMessage sends NOTIFY <schema>_wake with the instance id as payload, on commit."""
    store = await open_pg(clock=FakeClock())
    await running(store, "i1")
    assert store.channel == f"{store.schema}_wake"
    async with Notifications.listen(dsn, store.channel) as notes:
        (out,) = await store.write([SendMessage("i1", "signal", "go", {"x": 1})])
        assert out.ok
        assert await notes.take(1) == ["i1"]
        (closed,) = await store.write([SendMessage("ghost", "signal", "go")])
        assert closed.error == "not_found"
        assert await notes.quiet() == []


async def test_transitions_that_make_an_instance_due_notify(
    open_pg: StoreFactory, dsn: str
) -> None:
    """Created unowned, resumed, reopened, released due, handed back, parent of an ended
    child: each announces the instance; owned or future work does not."""
    clock = FakeClock()
    store = await open_pg(clock=clock)
    await register(store, "w1")
    async with Notifications.listen(dsn, store.channel) as notes:
        await store.write([create_op("free")])
        assert await notes.take(1) == ["free"]
        await store.write([create_op("owned", owner="w1")])
        assert await notes.quiet() == []

        await running(store, "later")
        t = clock()
        (out,) = await store.write(
            [AppendEvents("later", "w1", 1, 2, wake_at=t + 60, release=True)]
        )
        assert out.ok
        assert await notes.quiet() == []  # released, but due in a minute
        await running(store, "now")
        (out,) = await store.write([AppendEvents("now", "w1", 1, 2, wake_at=t, release=True)])
        assert out.ok
        assert await notes.take(1) == ["now"]

        await running(store, "parked")
        (out,) = await store.write([Suspend("parked", "w1", 1, {"type": "X"})])
        assert out.ok and await notes.quiet() == []
        (out,) = await store.write([Resume("parked")])
        assert out.ok
        assert await notes.take(1) == ["parked"]

        await running(store, "saga")
        (out,) = await store.write(
            [AppendEvents("saga", "w1", 1, 2, status="failed", needs_intervention=True)]
        )
        assert out.ok and await notes.quiet() == []
        (out,) = await store.write([Reopen("saga")])
        assert out.ok
        assert await notes.take(1) == ["saga"]

        await running(store, "parent")
        (out,) = await store.write([create_op("child", owner="w1", parent_id="parent")])
        assert out.ok and await notes.quiet() == []
        (out,) = await store.write([AppendEvents("child", "w1", 1, 1, status="completed")])
        assert out.ok
        assert await notes.take(1) == ["parent"]

        await running(store, "a", worker="w2")
        await running(store, "b", worker="w2")
        await store.deregister_worker("w2")
        assert sorted(await notes.take(2)) == ["a", "b"]


async def test_effects_notify_and_rolled_back_batches_do_not(
    open_pg: StoreFactory, dsn: str
) -> None:
    """A step's effects announce what they make due; a failed batch announces nothing."""
    store = await open_pg(clock=FakeClock())
    await running(store, "parent")
    async with Notifications.listen(dsn, store.channel) as notes:
        (out,) = await store.write(
            [AppendEvents("parent", "w1", 1, 2, effects=[create_op("child", parent_id="parent")])]
        )
        assert out.ok
        assert await notes.take(1) == ["child"]
        # The second create reuses the run id of "child": the events insert violates the
        # primary key and the whole batch is rolled back, its NOTIFY included.
        with pytest.raises(StoreError):
            await store.write(
                [SendMessage("parent", "signal", "x"), create_op("dup", run_id="run-child")]
            )
        assert await notes.quiet() == []
        assert await store.fetch_inbox("parent") == []
        assert await store.get_instance("dup") is None


async def test_wait_for_wake_reports_work_from_another_process(open_pg: StoreFactory) -> None:
    """A waiting store wakes when another store makes an instance due."""
    store = await open_pg()
    peer = await open_pg()
    assert await store.listen()
    assert await store.wait_for_wake(0.05) is False
    waiter = asyncio.create_task(store.wait_for_wake(10.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await peer.write([create_op("i1")])
    assert await waiter is True
    assert time.monotonic() - started < 1.0
    assert await store.wait_for_wake(0.05) is False  # that wake-up was consumed
    # A notification that arrives while nobody waits is kept for the next call.
    await peer.write([SendMessage("i1", "signal", "go")])
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert await store.wait_for_wake(5.0) is True
    assert time.monotonic() - started < 0.1


async def test_schemas_have_separate_channels(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """A store does not wake for instances of another schema in the same database."""
    store = await open_pg()
    other = await open_pg(url=store_url(postgres_database, schema=unique_schema("other")))
    assert store.channel != other.channel
    assert await store.listen()
    await other.write([create_op("elsewhere")])
    assert await store.wait_for_wake(0.2) is False
    await store.write([create_op("here")])
    assert await store.wait_for_wake(5.0) is True


async def test_wait_for_wake_needs_an_open_store(postgres_url: str) -> None:
    """Listening on a store that is not open is a StoreError, not a hang."""
    store = PostgresStore(postgres_url)
    with pytest.raises(StoreError):
        await store.wait_for_wake(0.01)


async def test_queues_with_work_are_announced(open_pg: StoreFactory, dsn: str) -> None:
    """<schema>_queue carries queue names: a task ready now, a finished task or queued
    instance (a slot is free), the running tasks of an expired worker."""
    clock = FakeClock()
    store = await open_pg(clock=clock)
    await running(store, "i1")

    def task(task_id: str, queue: str = "q", not_before: float = 0.0) -> EnqueueTask:
        return EnqueueTask(task_id, queue, "i1", "run-i1", 0, 1, "charge", [], {}, 0, not_before)

    async with Notifications.listen(dsn, f"{store.schema}_queue") as notes:
        assert (await store.write([task("t1")]))[0].ok
        assert await notes.take(1) == ["q"]
        assert (await store.write([task("t1")]))[0].ok  # already there: nothing new
        assert (await store.write([task("t2", "slow", clock() + 60.0)]))[0].ok
        assert await notes.quiet() == []  # not ready yet
        (claimed,) = await store.claim_tasks("w1", {}, {"q": 1})
        (done,) = await store.write([CompleteTask(claimed.id, "w1", {"type": "X"})])
        assert done.ok
        assert await notes.take(1) == ["q"]  # a slot is free
        assert (await store.write([task("t3")]))[0].ok
        assert await notes.take(1) == ["q"]
        assert [t.id for t in await store.claim_tasks("w1", {}, {"q": 1})] == ["t3"]
        await store.expire_worker("w1")
        assert await notes.take(1) == ["q"]  # t3 can be taken over
        await register(store, "w2")
        (created,) = await store.write([create_op("queued", owner="w2", queue="iq")])
        assert created.ok and await notes.quiet() == []
        (ended,) = await store.write([AppendEvents("queued", "w2", 1, 1, status="completed")])
        assert ended.ok
        assert await notes.take(1) == ["iq"]


async def test_wait_for_wake_reports_tasks_from_another_process(open_pg: StoreFactory) -> None:
    """A task enqueued by another store wakes a waiting store (its task runner claims)."""
    store = await open_pg()
    peer = await open_pg()
    await running(peer, "i1")
    assert await store.listen()
    waiter = asyncio.create_task(store.wait_for_wake(10.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await peer.write([EnqueueTask("t1", "q", "i1", "run-i1", 0, 1, "charge", [], {})])
    assert await waiter is True
