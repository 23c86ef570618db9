"""The worker process of the integration tests: ``python app.py --db ... --side ...``.

It serves one workflow, ``kr_sum``, which calls the activity ``kr_step`` ``steps`` times
in sequence and returns the sum of the values they return. Each execution of
``kr_step`` records ``(instance, step, pid, attempt, started_at, finished_at)`` in a side
table, in its own SQLite file written with autocommit outside the engine: the tests
compare it with the workflows' histories.

The process runs ``engine.run_worker()`` until SIGTERM. ``--host-id`` makes the worker
register under another host identity, so that workers on this host cannot see, by its
pid, that it died: only its lease expiring gives it away (the "worker on another host"
case). This script imports nothing from the test suite, only ``stalwart``.
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

from stalwart import Engine, WorkerOptions, WorkflowContext, activity, activity_context, workflow

SIDE_PATH = ""
STEP_SECONDS = 0.003
_local = threading.local()


def step_value(instance_no: int, step: int) -> int:
    """What ``kr_step`` returns for a step (the tests recompute it)."""
    return (instance_no * 37 + step * 11) % 97 + 1


def _side() -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(SIDE_PATH, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        _local.conn = conn
    return conn


@activity(name="kr_step")
def kr_step(instance_no: int, step: int) -> int:
    """Do a little "I/O", record the execution, return the step's value."""
    ctx = activity_context()
    started = time.time()
    time.sleep(STEP_SECONDS)
    _side().execute(
        "INSERT INTO executions (instance, step, pid, attempt, started_at, finished_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (ctx.instance_id, step, os.getpid(), ctx.attempt, started, time.time()),
    )
    return step_value(instance_no, step)


@workflow(name="kr_sum")
async def kr_sum(ctx: WorkflowContext, instance_no: int, steps: int) -> int:
    """Run ``steps`` activities one after the other and add up their values."""
    total = 0
    for step in range(steps):
        total += await kr_step(instance_no, step)
    return total


async def serve(url: str, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM."""
    async with Engine(url, options=options, workflows=[kr_sum], activities=[kr_step]) as engine:
        await engine.run_worker()


def main() -> int:
    """Parse the arguments and run the worker."""
    global SIDE_PATH, STEP_SECONDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    parser.add_argument("--host-id", default=None)
    args = parser.parse_args()
    SIDE_PATH = args.side
    STEP_SECONDS = args.step_seconds
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    options = WorkerOptions(
        name=args.name,
        lease_seconds=args.lease,
        poll_interval=args.poll,
        activity_threads=args.concurrency,
        max_concurrent_activities=args.concurrency,
        # Another host id: the other workers can only detect this one's death by lease.
        host_id=args.host_id,
    )
    asyncio.run(serve(f"sqlite:///{os.path.abspath(args.db)}", options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
