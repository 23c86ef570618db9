"""Small builders shared by the PostgreSQL-specific tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql

from stalwart._engine.events import TimerStarted, WorkflowStarted
from stalwart.store.base import AppendEvents, CreateInstance, Store, WorkerRecord

WF = "order"


def create_op(instance_id: str, *, owner: str | None = None, **kwargs: Any) -> CreateInstance:
    """A CreateInstance of workflow ``order`` with run id ``run-<id>``."""
    run_id = kwargs.pop("run_id", f"run-{instance_id}")
    started = WorkflowStarted(name=WF, version=1, input=[instance_id], run_id=run_id)
    return CreateInstance(instance_id, WF, 1, run_id, [instance_id], started, owner, **kwargs)


async def register(store: Store, worker_id: str, ttl: float = 3600.0) -> None:
    """Register a worker whose lease lasts ``ttl`` seconds from the store's now."""
    now = store.now()
    await store.register_worker(WorkerRecord(worker_id, worker_id, "host", 1, now, now + ttl))


async def running(store: Store, instance_id: str, worker: str = "w1") -> None:
    """An instance owned by ``worker`` at epoch 1, running, history_len 2, not due."""
    await register(store, worker)
    (created,) = await store.write([create_op(instance_id, owner=worker)])
    assert created.created
    t = store.now()
    step = AppendEvents(
        instance_id, worker, 1, 1, [(t, TimerStarted(cmd=0, fire_at=t + 600))], wake_at=t + 600
    )
    (out,) = await store.write([step])
    assert out.ok, out


@contextlib.asynccontextmanager
async def raw_connection(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A plain autocommit connection to the test database."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


class Notifications:
    """Collects the notifications of one channel over a raw connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], channel: str) -> None:
        self.conn = conn
        self.channel = channel

    @classmethod
    @contextlib.asynccontextmanager
    async def listen(cls, dsn: str, channel: str) -> AsyncIterator[Notifications]:
        """LISTEN on ``channel`` for the duration of the block."""
        async with raw_connection(dsn) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            yield cls(conn, channel)

    async def take(self, count: int, timeout: float = 5.0) -> list[str]:
        """The next ``count`` payloads (fewer if ``timeout`` passes first)."""
        if count == 0:
            return []
        got: list[str] = []
        async for note in self.conn.notifies(timeout=timeout, stop_after=count):
            assert note.channel == self.channel
            got.append(note.payload)
        return got

    async def quiet(self, timeout: float = 0.15) -> list[str]:
        """Whatever arrives within ``timeout`` (expected: nothing)."""
        return [n.payload async for n in self.conn.notifies(timeout=timeout)]


async def blocked(dsn: str, count: int) -> None:
    """Wait until ``count`` backends of the database wait for a lock."""
    deadline = time.monotonic() + 10.0
    async with raw_connection(dsn) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= count:
                return
            assert time.monotonic() < deadline, "transactions never blocked"
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def holding(dsn: str, schema: str, instance_id: str) -> AsyncIterator[None]:
    """Hold ``instance_id``'s row lock until the block ends (then commit)."""
    async with raw_connection(dsn) as conn:
        await conn.execute("BEGIN")
        await conn.execute(
            sql.SQL("SELECT 1 FROM {}.instances WHERE id = %s FOR UPDATE").format(
                sql.Identifier(schema)
            ),
            (instance_id,),
        )
        try:
            yield
        finally:
            await conn.execute("COMMIT")
