"""The worker process of the PostgreSQL acceptance test: ``python pg_app.py --url ...``.

Its workflow, ``pg_order``, runs four activity calls one after the other: two inline
steps (``pg_step``), one step on the ``payments`` task queue, then one more inline step,
and returns the sum of the values they returned. The queued step is the activity
``pg_charge`` (declared ``@activity(queue="payments")``) when the variant is 0, and
``pg_step`` sent to the queue per call (``ctx.activity(pg_step, ..., queue="payments")``)
when it is 1. The process serves the queue with ``Queue("payments", concurrency=...)``.

Every execution of an activity records itself in a side table of a SQLite file written
with autocommit outside the engine: a row inserted when the execution *starts*
``(instance, step, pid, attempt, task, started_at)`` and completed with ``finished_at``
when it ends, so an execution cut short by a SIGKILL leaves a row without an end. For a
queued execution ``task`` is the id of the queue task it executes (``<run>:<cmd>:<attempt>``,
the id the worker gives the task it enqueues). The side table is deliberately not in
PostgreSQL: the test terminates every connection to the store's database.

The process runs ``engine.run_worker()`` until SIGTERM. This script imports nothing from
the test suite, only ``stalwart``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import sys
import threading
import time
from typing import Any

from stalwart import (
    ActivityDefinition,
    Engine,
    Queue,
    WorkerOptions,
    WorkflowContext,
    WorkflowDefinition,
    activity,
    activity_context,
    workflow,
)

QUEUE = "payments"
QUEUED_STEP = 2
"""The step of ``pg_order`` that runs on the queue."""
STEPS = 4
SIDE_PATH = ""
STEP_SECONDS = 0.005
PAY_SECONDS = 0.08
_local = threading.local()

SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    step        INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    task        TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL
)
"""
"""One row per activity execution; ``finished_at`` is NULL while (or if it never) ends."""


def step_value(instance_no: int, step: int) -> int:
    """What a step returns (the test recomputes it)."""
    return (instance_no * 37 + step * 11) % 97 + 1


def _side() -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(SIDE_PATH, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        _local.conn = conn
    return conn


def _execute(instance_no: int, step: int, seconds: float, queued: bool) -> int:
    """Record the start, do some "I/O", record the end; return the step's value."""
    ctx = activity_context()
    task = f"{ctx.run_id}:{ctx.cmd}:{ctx.attempt}" if queued else None
    cur = _side().execute(
        "INSERT INTO runs (instance, step, pid, attempt, task, started_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (ctx.instance_id, step, os.getpid(), ctx.attempt, task, time.time()),
    )
    time.sleep(seconds)
    _side().execute("UPDATE runs SET finished_at = ? WHERE id = ?", (time.time(), cur.lastrowid))
    return step_value(instance_no, step)


@activity(name="pg_step")
def pg_step(instance_no: int, step: int, queued: bool = False) -> int:
    """An activity run inline, or on the queue when the call says so (``queued``)."""
    return _execute(instance_no, step, PAY_SECONDS if queued else STEP_SECONDS, queued)


@activity(name="pg_charge", queue=QUEUE)
def pg_charge(instance_no: int, step: int) -> int:
    """An activity declared on the queue: every call is a task of ``payments``."""
    return _execute(instance_no, step, PAY_SECONDS, True)


@workflow(name="pg_order")
async def pg_order(ctx: WorkflowContext, instance_no: int, variant: int) -> int:
    """Steps 0 and 1 inline, step 2 on the queue (declared or per call), step 3 inline."""
    total = await pg_step(instance_no, 0)
    total += await pg_step(instance_no, 1)
    if variant == 0:
        total += await pg_charge(instance_no, QUEUED_STEP)
    else:
        total += await ctx.activity(pg_step, instance_no, QUEUED_STEP, True, queue=QUEUE)
    total += await pg_step(instance_no, 3)
    return int(total)


WORKFLOWS: list[WorkflowDefinition[Any, Any]] = [pg_order]
ACTIVITIES: list[ActivityDefinition[Any, Any]] = [pg_step, pg_charge]


def init_side(path: str) -> None:
    """Create the side table (WAL, so the test can read while workers write)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SIDE_SCHEMA)
    finally:
        conn.close()


async def serve(url: str, options: WorkerOptions, queue_concurrency: int) -> None:
    """Run a worker until SIGTERM."""
    async with Engine(
        url,
        options=options,
        workflows=WORKFLOWS,
        activities=ACTIVITIES,
        queues=[Queue(QUEUE, concurrency=queue_concurrency)],
    ) as engine:
        await engine.run_worker()


def main() -> int:
    """Parse the arguments and run the worker."""
    global SIDE_PATH, STEP_SECONDS, PAY_SECONDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--queue-concurrency", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    parser.add_argument("--pay-seconds", type=float, default=PAY_SECONDS)
    args = parser.parse_args()
    SIDE_PATH = args.side
    STEP_SECONDS = args.step_seconds
    PAY_SECONDS = args.pay_seconds
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(created).3f %(process)d %(levelname)s %(name)s: %(message)s",
    )
    options = WorkerOptions(
        name=args.name,
        lease_seconds=args.lease,
        poll_interval=args.poll,
        activity_threads=args.concurrency,
        max_concurrent_activities=args.concurrency,
    )
    asyncio.run(serve(args.url, options, args.queue_concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
