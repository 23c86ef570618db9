"""SQLite: waiting for another process's write lock happens on the writer thread only."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from stalwart.store.sqlite import SQLiteStore
from stalwart.testing.contract._support import _create_op


def _busy_timeout(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


async def test_an_inline_commit_hands_a_held_write_lock_to_the_writer_thread(
    tmp_path: Path,
) -> None:
    """While another connection (another process) holds the write lock, a lone write
    neither blocks the event loop in SQLite's busy handler nor fails: it waits on the
    writer thread and commits once the lock is released."""
    path = str(tmp_path / "lock.db")
    store = SQLiteStore(path, busy_timeout=10.0)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        conn = store._wconn
        assert conn is not None
        assert _busy_timeout(conn) == 0  # outside the writer thread
        inside = await store._in(store._writer, lambda: _busy_timeout(store._w))
        assert inside == 10_000

        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        loop = asyncio.get_running_loop()
        ticking = loop.create_task(ticker())
        write = loop.create_task(store.write([_create_op("i1")]))
        await asyncio.sleep(0.3)
        assert not write.done()
        assert ticks >= 10  # the loop kept running while the write waited
        other.execute("COMMIT")
        (outcome,) = await asyncio.wait_for(write, timeout=10)
        ticking.cancel()
        assert outcome.ok and outcome.created
        assert _busy_timeout(conn) == 0
        record = await store.get_instance("i1")
        assert record is not None and record.status == "pending"
    finally:
        other.close()
        await store.close()
