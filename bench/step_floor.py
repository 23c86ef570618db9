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
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from stalwart._engine.events import ActivityCompleted, WorkflowStarted
from stalwart.store.base import AppendEvents, CreateInstance, WorkerRecord
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


def raw_commits(path: str, synchronous: str) -> tuple[float, float]:
    """µs per raw single-row commit and WAL frames per commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        payload = os.urandom(100)
        wal0 = _wal_size(path)
        t0 = time.perf_counter()
        for _ in range(COMMITS):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (payload,))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        frames = (_wal_size(path) - wal0) / FRAME / COMMITS
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return elapsed / COMMITS * 1e6, frames


async def _open_store(path: str, synchronous: str) -> SQLiteStore:
    store = SQLiteStore(path, synchronous=synchronous)
    await store.open()
    now = store.now()
    await store.register_worker(WorkerRecord("w", "w", "host", 1, now, now + 3600.0))
    started = WorkflowStarted(name="chain", version=1, input=[], run_id="run-1")
    (created,) = await store.write([CreateInstance("i1", "chain", 1, "run-1", [], started, "w")])
    assert created.ok, created
    return store


def store_steps(store: SQLiteStore, seq: int) -> tuple[float, float, int]:
    """µs per step write, WAL frames per commit, and the next history position."""
    conn = store._w  # the writer connection: the same statements the worker's steps run
    conn.execute("PRAGMA wal_autocheckpoint=0")
    wal0 = _wal_size(store.path)
    t0 = time.perf_counter()
    for _ in range(COMMITS):
        now = time.time()
        op = AppendEvents(
            "i1",
            "w",
            1,
            seq,
            [(now, ActivityCompleted(cmd=seq, result=seq))],
            active_status="running",
            current_step="step",
        )
        outcomes = store._write_batch([op], wait=True)  # wait=True: never None
        assert outcomes is not None and outcomes[0].ok, outcomes
        seq += 1
    elapsed = time.perf_counter() - t0
    frames = (_wal_size(store.path) - wal0) / FRAME / COMMITS
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return elapsed / COMMITS * 1e6, frames, seq


def measure(workdir: str, synchronous: str) -> dict[str, Any]:
    """Alternate raw commits and store steps for ``ROUNDS`` rounds; medians."""
    raw_path = os.path.join(workdir, f"raw-{synchronous}.db")
    store_path = os.path.join(workdir, f"store-{synchronous}.db")
    store = asyncio.run(_open_store(store_path, synchronous))
    raw_us: list[float] = []
    step_us: list[float] = []
    raw_frames = step_frames = 0.0
    seq = 1
    try:
        # The first step moves the instance from pending to running (the general UPDATE).
        _, _, seq = store_steps(store, seq)
        for _ in range(ROUNDS):
            us, raw_frames = raw_commits(raw_path, synchronous)
            raw_us.append(us)
            us, step_frames, seq = store_steps(store, seq)
            step_us.append(us)
    finally:
        asyncio.run(store.close())
    raw = statistics.median(raw_us)
    step = statistics.median(step_us)
    return {
        "raw_us": raw,
        "step_us": step,
        "share": raw / step,
        "raw_frames": raw_frames,
        "step_frames": step_frames,
    }


def main() -> None:
    """Measure FULL and NORMAL and print the table."""
    table = Table(title="SQLite: raw commit vs the store's write of one step (no engine)")
    for column in (
        "synchronous",
        "raw commit µs",
        "store step µs",
        "store step as % of raw rate",
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
                f"{m['raw_frames']:.1f} / {m['step_frames']:.1f}",
            )
    Console().print(table)
    Console().print(
        f"medians of {ROUNDS} alternating rounds of {COMMITS:,} commits each; the engine's "
        "own per-step work comes on top (the seq table's memory:// row)."
    )


if __name__ == "__main__":
    main()
