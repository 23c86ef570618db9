"""Opening a new SQLite file while another connection writes to it waits instead of failing.

Processes that open a new file at once all switch it to WAL. SQLite refuses that switch
at once (``database is locked``, busy handler not called) to a connection that holds a
read lock while another holds the write lock, since waiting could deadlock; the store
retries it within its busy timeout.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from stalwart.errors import StoreError
from stalwart.store.sqlite import SQLiteStore


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_refuses_the_switch_without_waiting(tmp_path: Path) -> None:
    """The premise: a busy timeout alone does not help here."""
    path = tmp_path / "new.db"
    holder = _hold_write_lock(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("PRAGMA journal_mode = WAL")
    assert time.monotonic() - started < 1.0
    conn.close()
    holder.close()


async def test_open_waits_for_the_writer_and_switches_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    holder = _hold_write_lock(path)
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    store = SQLiteStore(str(path))
    try:
        started = time.monotonic()
        await store.open()
        assert time.monotonic() - started >= 0.2  # it waited for the holder
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        holder.close()
        await store.close()


async def test_open_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    holder = _hold_write_lock(path)
    store = SQLiteStore(str(path), busy_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            await store.open()
        assert time.monotonic() - started < 2.0
    finally:
        holder.close()
        await store.close()
