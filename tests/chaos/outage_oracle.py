"""The audit log of the outage chaos tests: activity executions, kept outside the engine.

Every activity body of ``outage_app`` appends one row per execution to a SQLite file of
its own (autocommit, WAL, a 30 s busy timeout, so several worker processes and the test
can share it): the durable call it executed ``(instance, step)``, the attempt, the
process and worker incarnation, the instance's lease epoch under which it ran, when it
started and ended, and a reading of the store's clock (the database clock on PostgreSQL)
where the scenario needs one. The engine never reads it, so a database outage, a killed
worker or a lost write cannot make it lie: the tests compare it with the histories.

An execution cut short by a SIGKILL leaves no row (the row is written at its end); a
killed worker therefore executed nothing after its death if no row of its pid ends later.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    step        INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    worker_id   TEXT,
    lease_epoch INTEGER,
    started_at  REAL NOT NULL,
    time        REAL NOT NULL,
    clock       REAL
)
"""
"""One row per finished execution; ``time`` is when it ended (this host's clock),
``clock`` the store's clock read by the activity (``NULL`` when not asked for)."""

_local = threading.local()


def _connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    # WAL + NORMAL survives a process crash (the kill this log must outlive), not a power
    # cut, which no test here simulates.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def init(path: str | Path) -> None:
    """Create the log (WAL, so readers and the writers of other processes do not block)."""
    conn = _connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SCHEMA)
    finally:
        conn.close()


def log(
    path: str | Path,
    *,
    instance: str,
    step: int,
    attempt: int,
    worker_id: str | None,
    lease_epoch: int | None,
    started_at: float,
    clock: float | None = None,
    pid: int,
) -> None:
    """Append one finished execution (one connection per thread, reused)."""
    conns: dict[str, sqlite3.Connection] | None = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    key = str(path)
    conn = conns.get(key)
    if conn is None:
        conn = conns[key] = _connect(path)
    conn.execute(
        "INSERT INTO executions (instance, step, attempt, pid, worker_id, lease_epoch, "
        "started_at, time, clock) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (instance, step, attempt, pid, worker_id, lease_epoch, started_at, time.time(), clock),
    )


@dataclass(frozen=True, slots=True)
class Execution:
    """One row of the log."""

    id: int
    instance: str
    step: int
    attempt: int
    pid: int
    worker_id: str | None
    lease_epoch: int | None
    started_at: float
    time: float
    clock: float | None

    @property
    def call(self) -> tuple[str, int]:
        """The durable call this was an execution of."""
        return (self.instance, self.step)


def read(path: str | Path) -> list[Execution]:
    """Every execution logged so far, in insertion order."""
    conn = _connect(path)
    try:
        rows = conn.execute(
            "SELECT id, instance, step, attempt, pid, worker_id, lease_epoch, started_at, "
            "time, clock FROM executions ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Execution(*row) for row in rows]


def count(path: str | Path) -> int:
    """How many executions are logged so far."""
    conn = _connect(path)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM executions").fetchone()
    finally:
        conn.close()
    return int(n)


def integrity(path: str | Path) -> str:
    """``PRAGMA integrity_check`` of any SQLite file (``"ok"`` when sound)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "\n".join(str(r[0]) for r in rows)
