"""The floor under a SQLite step: the store's own write of one step, without the engine.

``python -m bench.step_floor`` times, alternating in rounds on fresh WAL files:

* the raw commit of ``bench/raw.py`` (one 100-byte row into a one-column table), the
  denominator of the seq table's "% of raw" column;
* one workflow step as the SQLite store commits it (``SQLiteStore._write_batch`` with one
  ``AppendEvents``: the compare-and-set ``UPDATE`` of the instance row and the history
  row, on the real schema), called directly, with no engine, event loop or thread hop;

for ``synchronous`` FULL and NORMAL, and prints medians, the store step as a share of the
raw commit rate, and WAL frames (pages) written per commit. It shows how much of the seq
target (60% of the raw rate) is already taken before any Python engine work: a step
writes a row in two tables (two pages to fsync), the raw commit one.

On PostgreSQL (``--pg-url``, loopback; skipped with a note when the server is not
reachable) the same pair, in a fresh database dropped afterwards: the raw commit of
``bench/raw.py`` (``INSERT`` one row, ``COMMIT``, one connection) against
``PostgresStore.write`` of one step (its one prepared statement on the held connection,
through the async driver as the worker calls it). Both tables also give the client's CPU
per commit (the calling thread's), which is what a slower CPU makes longer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import pg
from stalwart._engine.events import ActivityCompleted, WorkflowStarted
from stalwart.store.base import AppendEvents, CreateInstance, WorkerRecord
from stalwart.store.postgres import PostgresStore
from stalwart.store.sqlite import SQLiteStore

COMMITS = 1_000
"""Commits per measurement."""
ROUNDS = 5
"""Alternating rounds per mode (the median is reported)."""
FRAME = 4096 + 24
"""A WAL frame: one page plus its header."""


def _wal_size(path: str) -> int:
    wal = path + "-wal"
    return os.path.getsize(wal) if os.path.exists(wal) else 0


def raw_commits(path: str, synchronous: str) -> tuple[float, float, float]:
    """µs per raw single-row commit, CPU µs per commit and WAL frames per commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        payload = os.urandom(100)
        wal0 = _wal_size(path)
        t0, cpu0 = time.perf_counter(), time.thread_time()
        for _ in range(COMMITS):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (payload,))
            conn.execute("COMMIT")
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        frames = (_wal_size(path) - wal0) / FRAME / COMMITS
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return elapsed / COMMITS * 1e6, cpu / COMMITS * 1e6, frames


async def _open_store(path: str, synchronous: str) -> SQLiteStore:
    store = SQLiteStore(path, synchronous=synchronous)
    await store.open()
    now = store.now()
    await store.register_worker(WorkerRecord("w", "w", "host", 1, now, now + 3600.0))
    started = WorkflowStarted(name="chain", version=1, input=[], run_id="run-1")
    (created,) = await store.write([CreateInstance("i1", "chain", 1, "run-1", [], started, "w")])
    assert created.ok, created
    return store


def _step(seq: int) -> AppendEvents:
    """The write of one no-op activity's step at history position ``seq``."""
    return AppendEvents(
        "i1",
        "w",
        1,
        seq,
        [(time.time(), ActivityCompleted(cmd=seq, result=seq))],
        active_status="running",
        current_step="step",
    )


def store_steps(store: SQLiteStore, seq: int) -> tuple[float, float, float, int]:
    """µs per step write, CPU µs per step, WAL frames per commit, the next position."""
    conn = store._w  # the writer connection: the same statements the worker's steps run
    conn.execute("PRAGMA wal_autocheckpoint=0")
    wal0 = _wal_size(store.path)
    t0, cpu0 = time.perf_counter(), time.thread_time()
    for _ in range(COMMITS):
        outcomes = store._write_batch([_step(seq)], wait=True)  # wait=True: never None
        assert outcomes is not None and outcomes[0].ok, outcomes
        seq += 1
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    frames = (_wal_size(store.path) - wal0) / FRAME / COMMITS
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return elapsed / COMMITS * 1e6, cpu / COMMITS * 1e6, frames, seq


def _medians(
    raw_us: list[float], raw_cpu: list[float], step_us: list[float], step_cpu: list[float]
) -> dict[str, float]:
    """Medians of the rounds, and the store step's rate as a share of the raw one."""
    raw = statistics.median(raw_us)
    step = statistics.median(step_us)
    return {
        "raw_us": raw,
        "step_us": step,
        "raw_cpu": statistics.median(raw_cpu),
        "step_cpu": statistics.median(step_cpu),
        "share": raw / step,
    }


def measure(workdir: str, synchronous: str) -> dict[str, Any]:
    """Alternate raw commits and store steps for ``ROUNDS`` rounds; medians."""
    raw_path = os.path.join(workdir, f"raw-{synchronous}.db")
    store_path = os.path.join(workdir, f"store-{synchronous}.db")
    store = asyncio.run(_open_store(store_path, synchronous))
    raw_us: list[float] = []
    raw_cpu: list[float] = []
    step_us: list[float] = []
    step_cpu: list[float] = []
    raw_frames = step_frames = 0.0
    seq = 1
    try:
        # The first step moves the instance from pending to running (the general UPDATE).
        *_, seq = store_steps(store, seq)
        for _ in range(ROUNDS):
            us, cpu, raw_frames = raw_commits(raw_path, synchronous)
            raw_us.append(us)
            raw_cpu.append(cpu)
            us, cpu, step_frames, seq = store_steps(store, seq)
            step_us.append(us)
            step_cpu.append(cpu)
    finally:
        asyncio.run(store.close())
    return {
        **_medians(raw_us, raw_cpu, step_us, step_cpu),
        "raw_frames": raw_frames,
        "step_frames": step_frames,
    }


def pg_raw_commits(url: str) -> tuple[float, float]:
    """µs and client CPU µs per raw commit: ``bench/raw.py``'s loop on one connection."""
    import psycopg

    with psycopg.connect(url) as conn:  # not autocommit: INSERT, then COMMIT
        conn.execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v bytea NOT NULL)")
        conn.commit()
        payload = os.urandom(100)
        t0, cpu0 = time.perf_counter(), time.thread_time()
        for _ in range(COMMITS):
            conn.execute("INSERT INTO t (v) VALUES (%s)", (payload,))
            conn.commit()
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    return elapsed / COMMITS * 1e6, cpu / COMMITS * 1e6


async def pg_store_steps(store: PostgresStore, seq: int) -> tuple[float, float, int]:
    """µs and client CPU µs per step write, and the next history position."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    for _ in range(COMMITS):
        (outcome,) = await store.write([_step(seq)])
        assert outcome.ok, outcome
        seq += 1
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    return elapsed / COMMITS * 1e6, cpu / COMMITS * 1e6, seq


def measure_pg(server_url: str) -> dict[str, Any]:
    """The PostgreSQL pair, alternating for ``ROUNDS`` rounds in a fresh database."""
    dbname = pg.new_db_name()
    url = pg.create_database(server_url, dbname)
    raw_us: list[float] = []
    raw_cpu: list[float] = []
    step_us: list[float] = []
    step_cpu: list[float] = []

    async def steps(seq: int) -> int:
        store = PostgresStore(url)
        await store.open()
        try:
            now = store.now()
            await store.register_worker(WorkerRecord("w", "w", "host", 1, now, now + 3600.0))
            started = WorkflowStarted(name="chain", version=1, input=[], run_id="run-1")
            if seq == 1:
                (created,) = await store.write(
                    [CreateInstance("i1", "chain", 1, "run-1", [], started, "w")]
                )
                assert created.ok, created
                *_, seq = await pg_store_steps(store, seq)  # pending -> running, warm-up
            us, cpu, seq = await pg_store_steps(store, seq)
            step_us.append(us)
            step_cpu.append(cpu)
            return seq
        finally:
            await store.close()

    try:
        seq = 1
        for _ in range(ROUNDS):
            us, cpu = pg_raw_commits(url)
            raw_us.append(us)
            raw_cpu.append(cpu)
            seq = asyncio.run(steps(seq))
    finally:
        pg.drop_database(server_url, dbname)
    return _medians(raw_us, raw_cpu, step_us, step_cpu)


def main(argv: list[str] | None = None) -> None:
    """Measure FULL and NORMAL (and PostgreSQL when reachable) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", pg.DEFAULT_PG_URL),
        help=f"PostgreSQL server, loopback only (default {pg.DEFAULT_PG_URL})",
    )
    args = parser.parse_args(argv)
    pg.check_loopback(args.pg_url)
    console = Console()
    table = Table(title="SQLite: raw commit vs the store's write of one step (no engine)")
    for column in (
        "synchronous",
        "raw commit µs",
        "store step µs",
        "store step as % of raw rate",
        "client CPU µs: raw / step",
        "WAL frames: raw / step",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="step-floor-") as workdir:
        for mode in ("FULL", "NORMAL"):
            m = measure(workdir, mode)
            table.add_row(
                mode,
                f"{m['raw_us']:.0f}",
                f"{m['step_us']:.0f}",
                f"{m['share'] * 100:.0f}%",
                f"{m['raw_cpu']:.0f} / {m['step_cpu']:.0f}",
                f"{m['raw_frames']:.1f} / {m['step_frames']:.1f}",
            )
    console.print(table)
    available, reason = pg.stalwart_available(args.pg_url)
    if not available:
        console.print(f"PostgreSQL: not measured ({reason})")
    else:
        m = measure_pg(args.pg_url)
        pg_table = Table(
            title="PostgreSQL: raw commit vs the store's write of one step (no engine)"
        )
        for column in (
            "raw commit µs",
            "store step µs",
            "store step as % of raw rate",
            "client CPU µs: raw / step",
        ):
            pg_table.add_column(column, justify="right")
        pg_table.add_row(
            f"{m['raw_us']:.0f}",
            f"{m['step_us']:.0f}",
            f"{m['share'] * 100:.0f}%",
            f"{m['raw_cpu']:.0f} / {m['step_cpu']:.0f}",
        )
        console.print(pg_table)
    console.print(
        f"medians of {ROUNDS} alternating rounds of {COMMITS:,} commits each; the engine's "
        "own per-step work comes on top (the seq table's memory:// row)."
    )


if __name__ == "__main__":
    main()
