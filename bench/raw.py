"""The raw commit rate of SQLite on this machine: the ceiling for one-commit-per-step."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from bench.common import SYNC_NAMES


def commit_rate(path: str, synchronous: str, seconds: float) -> dict[str, Any]:
    """Single-row ``BEGIN IMMEDIATE; INSERT; COMMIT`` transactions in a loop on a WAL
    database for ``seconds``; returns commits/s and the settings actually in effect."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        payload = os.urandom(100)
        count = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        now = t0
        while now < deadline:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (payload,))
            conn.execute("COMMIT")
            count += 1
            now = time.perf_counter()
        elapsed = now - t0
    finally:
        conn.close()
    return {
        "commits": count,
        "elapsed_s": elapsed,
        "commits_per_s": count / elapsed,
        "us_per_commit": elapsed / count * 1e6,
        "settings": {"journal_mode": str(journal), "synchronous": SYNC_NAMES.get(sync, str(sync))},
    }


def run(workdir: str, seconds: float) -> dict[str, Any]:
    """Measure FULL then NORMAL, each on a fresh file."""
    return {
        mode: commit_rate(os.path.join(workdir, f"raw-{mode.lower()}.db"), mode, seconds)
        for mode in ("FULL", "NORMAL")
    }
