"""The side table of step executions for the ``recovery`` scenario.

Every execution of a recovery step inserts one row ``(step, pid, time)`` into a SQLite
file of its own, in autocommit mode, outside either engine. A step executed twice (once
before the kill, again after the restart) shows as two rows: duplicates are counted from
this table, not from what the engine recorded. SIGKILL does not lose committed rows (the
pages are in the OS cache), so ``synchronous=NORMAL`` is enough here.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

_conn: sqlite3.Connection | None = None
_path: str | None = None


def create(path: str) -> None:
    """Create the table (orchestrator, before the first worker starts)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS executions (step INTEGER, pid INTEGER, t REAL)")
    conn.close()


def configure(path: str) -> None:
    """Where this process's steps record their executions."""
    global _path
    _path = path


def record(step: int) -> None:
    """Record one execution of ``step`` by this process (autocommit)."""
    global _conn
    if _conn is None:
        assert _path is not None, "side.configure() was not called"
        _conn = sqlite3.connect(_path, isolation_level=None, timeout=30, check_same_thread=False)
        _conn.execute("PRAGMA synchronous=NORMAL")
    _conn.execute(
        "INSERT INTO executions (step, pid, t) VALUES (?, ?, ?)", (step, os.getpid(), time.time())
    )


def distinct_steps(path: str) -> int:
    """Steps executed at least once so far."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        return int(conn.execute("SELECT count(DISTINCT step) FROM executions").fetchone()[0])
    finally:
        conn.close()


def summary(path: str, steps: int, restart_pid: int) -> dict[str, Any]:
    """Executions per step, duplicates, missing steps, and the first execution by the
    restarted process."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        counts = dict(conn.execute("SELECT step, count(*) FROM executions GROUP BY step"))
        first_after = conn.execute(
            "SELECT min(t) FROM executions WHERE pid = ?", (restart_pid,)
        ).fetchone()[0]
        last_after = conn.execute(
            "SELECT max(t) FROM executions WHERE pid = ?", (restart_pid,)
        ).fetchone()[0]
        by_restart = conn.execute(
            "SELECT count(*) FROM executions WHERE pid = ?", (restart_pid,)
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM executions").fetchone()[0]
    finally:
        conn.close()
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    duplicated_steps = sorted(s for s, c in counts.items() if c > 1)
    missing = [s for s in range(steps) if s not in counts]
    return {
        "executions": int(total),
        "duplicates": duplicates,
        "duplicated_steps": duplicated_steps[:10],
        "missing_steps": missing[:10],
        "executed_by_restart": int(by_restart),
        "first_restart_execution": first_after,
        "last_restart_execution": last_after,
    }
