"""Lease renewal over a synchronous connection, for the runtime's heartbeat thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from stalwart.errors import StoreError

_RENEW = (
    "UPDATE workers SET expires_at = t.now + %(ttl)s "
    "FROM (SELECT COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) "
    "AS now) AS t WHERE id = %(id)s AND expires_at >= t.now"
)


class PostgresHeartbeat:
    """Renews leases over its own synchronous connection (opened on first use).

    A broken connection is replaced and the renewal retried once (renewing is
    idempotent); if that fails too, :class:`~stalwart.errors.StoreError` is raised and
    the next call tries again.
    """

    def __init__(self, conninfo: str, clock: Callable[[], float] | None) -> None:
        self._conninfo = conninfo
        self._clock = clock
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def renew(self, worker_id: str, ttl: float) -> bool:
        """Extend the lease to now + ttl; False if the worker row is gone or expired."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._renew(worker_id, ttl)
                except psycopg.OperationalError as exc:
                    self._discard()
                    if attempt == 2:
                        raise StoreError(f"PostgreSQL error renewing a lease: {exc}") from exc
                except psycopg.Error as exc:
                    self._discard()
                    raise StoreError(f"PostgreSQL error renewing a lease: {exc}") from exc
            raise AssertionError("unreachable")

    def _renew(self, worker_id: str, ttl: float) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
        now = self._clock() if self._clock is not None else None
        cur = self._conn.execute(_RENEW, {"ttl": ttl, "now": now, "id": worker_id})
        return cur.rowcount == 1

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._discard()
