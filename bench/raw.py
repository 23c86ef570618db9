"""The raw commit rate of each store on this machine: the ceiling for one-commit-per-step."""

from __future__ import annotations

import os
import sqlite3
import threading
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
    """SQLite: measure FULL then NORMAL, each on a fresh file."""
    return {
        mode: commit_rate(os.path.join(workdir, f"raw-{mode.lower()}.db"), mode, seconds)
        for mode in ("FULL", "NORMAL")
    }


def pg_commit_rate(url: str, seconds: float, connections: int) -> dict[str, Any]:
    """PostgreSQL: ``connections`` threads, each with its own connection, run
    ``BEGIN; INSERT one row; COMMIT`` in a loop for ``seconds``; returns the total
    commits/s and the durability settings read on the connections."""
    import psycopg

    from bench.pg import read_settings

    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v bytea NOT NULL)")
        settings = read_settings(setup)
    conns = [psycopg.connect(url) for _ in range(connections)]  # not autocommit: BEGIN..COMMIT
    payload = os.urandom(100)
    counts = [0] * connections
    barrier = threading.Barrier(connections + 1)
    stop_at = [0.0]

    def loop(i: int) -> None:
        conn = conns[i]
        barrier.wait()
        deadline = stop_at[0]
        n = 0
        while time.perf_counter() < deadline:
            conn.execute("INSERT INTO t (v) VALUES (%s)", (payload,))
            conn.commit()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for conn in conns:
        conn.close()
    total = sum(counts)
    return {
        "connections": connections,
        "commits": total,
        "elapsed_s": elapsed,
        "commits_per_s": total / elapsed,
        "us_per_commit": elapsed / total * 1e6 * connections if total else None,
        "settings": settings,
    }


def run_pg(url: str, seconds: float, connections: int) -> dict[str, Any]:
    """PostgreSQL: one connection, then ``connections`` connections concurrently."""
    return {
        "1": pg_commit_rate(url, seconds, 1),
        str(connections): pg_commit_rate(url, seconds, connections),
    }
