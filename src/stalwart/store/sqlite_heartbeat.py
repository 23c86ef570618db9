"""Lease renewal for the SQLite store over a connection of its own (the heartbeat thread)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable


class SQLiteHeartbeat:
    """Renews a worker's lease over its own connection (used from the heartbeat thread)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], now: Callable[[], float]) -> None:
        self._connect = connect
        self._now = now
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def renew(self, worker_id: str, ttl: float) -> bool:
        """Extend the lease; False if the worker row is gone or already expired."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            now = self._now()
            cur = self._conn.execute(
                "UPDATE workers SET expires_at = ? WHERE id = ? AND expires_at >= ?",
                (now + ttl, worker_id, now),
            )
            return cur.rowcount == 1

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
