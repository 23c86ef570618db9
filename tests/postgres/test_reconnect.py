"""Faults: killed backends, an unreachable server; every failure is a StoreError."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from stalwart._engine.events import TimerStarted
from stalwart.errors import StoreError
from stalwart.store.base import AppendEvents, SendMessage
from stalwart.store.postgres import PostgresStore
from tests.postgres._helpers import create_op, register, running
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import admin_url, terminate_backends


async def _warm(store: PostgresStore, connections: int = 4) -> None:
    """Make the pool open several connections (concurrent reads)."""

    async def slow_read() -> None:
        await store.get_instance("warm")
        await asyncio.sleep(0.05)

    await asyncio.gather(*(slow_read() for _ in range(connections)))


async def test_writes_recover_after_pg_terminate_backend(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """Killing every connection of the store: the next write fails with StoreError, then
    writes succeed again within a few seconds, without reopening the store."""
    store = await open_pg()
    await store.write([create_op("i1")])
    await _warm(store)
    assert terminate_backends(postgres_database) >= 1
    failures: list[StoreError] = []
    deadline = time.monotonic() + 5.0
    sent = 0
    while True:
        try:
            (out,) = await store.write([SendMessage("i1", "signal", f"s{sent}")])
        except StoreError as exc:  # anything else fails the test
            failures.append(exc)
            assert time.monotonic() < deadline, f"writes did not recover: {failures}"
            await asyncio.sleep(0.05)
            continue
        assert out.ok
        sent += 1
        break
    assert failures, "the write on a killed connection should have failed"
    assert "PostgreSQL" in str(failures[0])
    # Recovered for good: a burst of concurrent writes and reads all succeed.
    outs = await asyncio.gather(
        *(store.write([SendMessage("i1", "signal", f"b{k}")]) for k in range(8))
    )
    assert all(o.ok for (o,) in outs)
    assert len(await store.fetch_inbox("i1")) == sent + 8


async def test_reads_retry_once_on_a_fresh_connection(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """Reads are idempotent: after the backends were killed they succeed at once."""
    store = await open_pg()
    await store.write([create_op("i1")])
    await _warm(store)
    assert terminate_backends(postgres_database) >= 1
    rec = await store.get_instance("i1")
    assert rec is not None and rec.id == "i1"
    assert len(await store.load_history("i1", "run-i1")) == 1


async def test_listener_reconnects_and_reports_a_wake_up(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """The listening connection comes back after being killed, reports a (possibly
    missed) wake-up, and then receives notifications again."""
    store = await open_pg()
    assert await store.listen()
    assert await store.wait_for_wake(0.05) is False
    terminate_backends(postgres_database)
    assert await store.wait_for_wake(5.0) is True  # reconnected: look for work
    assert await store.listen(5.0)
    assert await store.wait_for_wake(0.05) is False
    peer = await open_pg()
    await peer.write([create_op("after")])
    assert await store.wait_for_wake(5.0) is True


async def test_heartbeat_session_reconnects(open_pg: StoreFactory, postgres_database: str) -> None:
    """A lease renewal on a killed connection reconnects and succeeds."""
    store = await open_pg()
    await register(store, "w1", ttl=30.0)
    session = store.heartbeat_session()
    try:
        assert await asyncio.to_thread(session.renew, "w1", 30.0) is True
        terminate_backends(postgres_database)
        assert await asyncio.to_thread(session.renew, "w1", 30.0) is True
        assert await asyncio.to_thread(session.renew, "unknown", 30.0) is False
    finally:
        await asyncio.to_thread(session.close)


async def test_unreachable_server_is_a_store_error() -> None:
    """Opening a store on a port where nothing listens fails fast with StoreError."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing?pool_timeout=1")
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect"):
        await store.open()
    assert time.monotonic() - started < 5.0
    with pytest.raises(StoreError, match="not open"):
        await store.get_instance("x")
    session = store.heartbeat_session()
    with pytest.raises(StoreError):
        session.renew("w1", 10.0)
    session.close()


async def test_closed_store_refuses_operations(open_pg: StoreFactory) -> None:
    """After close(), operations fail with StoreError; close() twice is harmless."""
    store = await open_pg()
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.write([create_op("i1")])
    await running(await open_pg(), "i2")  # the schema itself is still usable


async def test_the_held_step_connection_is_replaced_after_it_is_killed(
    open_pg: StoreFactory, postgres_url: str
) -> None:
    """Lone steps run on a connection kept out of the pool. Killed, the step on it fails
    with StoreError (it may or may not have committed: never replayed), and the next step
    takes a fresh connection; with ``pool_size=1`` there is none to spare, and steps go
    through the pool."""
    store = await open_pg()
    await running(store, "i1")
    t = store.now()

    def step(seq: int) -> AppendEvents:
        return AppendEvents("i1", "w1", 1, seq, [(t, TimerStarted(cmd=seq, fire_at=t + 600))])

    (out,) = await store.write([step(2)])
    assert out.ok
    held = store._step_conn
    assert held is not None
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (held.info.backend_pid,))
    with pytest.raises(StoreError, match="PostgreSQL"):
        await store.write([step(3)])
    assert store._step_conn is None
    (out,) = await store.write([step(3)])
    assert out.ok and store._step_conn is not None and store._step_conn is not held

    single = await open_pg(url=f"{postgres_url}&pool_size=1")
    await running(single, "i2")
    (out,) = await single.write([AppendEvents("i2", "w1", 1, 2, [])])
    assert out.ok and single._step_conn is None


async def test_an_outage_seen_on_the_pool_also_retires_the_held_step_connection(
    open_pg: StoreFactory, postgres_database: str
) -> None:
    """Every backend killed, the first failure on a pooled connection has the pool test
    its connections, the held step connection included: the next lone step does not fail
    a second time on it (each extra failure re-runs a step after an outage)."""
    store = await open_pg()
    await running(store, "i1")
    t = store.now()
    (out,) = await store.write(
        [AppendEvents("i1", "w1", 1, 2, [(t, TimerStarted(cmd=2, fire_at=t + 600))])]
    )
    assert out.ok and store._step_conn is not None
    await _warm(store)
    assert terminate_backends(postgres_database) >= 2
    rec = await store.get_instance("i1")  # a pooled read: fails once, checks, retries
    assert rec is not None and rec.history_len == 3
    (out,) = await store.write(
        [AppendEvents("i1", "w1", 1, 3, [(t, TimerStarted(cmd=3, fire_at=t + 600))])]
    )
    assert out.ok
