"""The worker process of the integration tests: ``python app.py --db ... --side ...``.

Its main workflow, ``kr_sum``, calls the activity ``kr_step`` ``steps`` times in
sequence and returns the sum of the values they return. Each execution of ``kr_step``
records ``(instance, step, pid, attempt, started_at, finished_at)`` in a side table, in
its own SQLite file written with autocommit outside the engine: the tests compare it
with the workflows' histories.

The ``kc_*`` workflows exercise features composed with process kills (see
``test_kill_composition.py``): child workflows (``kc_parent``, whose children are
``kr_sum`` instances), continue-as-new (``kc_loop``), updates (``kc_account``) and
heartbeating activities (``kc_copier`` running ``kc_copy``, which also records every item
it processes in the side file's ``progress`` table). Every activity takes the step it
stands for as its second argument, which is how the tests read histories.

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
from typing import Any

from stalwart import (
    Engine,
    RetryPolicy,
    WorkerOptions,
    WorkflowContext,
    activity,
    activity_context,
    workflow,
)

SIDE_PATH = ""
STEP_SECONDS = 0.003
ITEM_SECONDS = 0.05
HEARTBEAT_TIMEOUT = 2.0
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


# ----------------------------------------------------------------------------- children
@workflow(name="kc_parent")
async def kc_parent(ctx: WorkflowContext, n_awaited: int, n_handles: int, steps: int) -> list[int]:
    """Run ``kr_sum`` children: ``n_handles`` started with ``ctx.start_child`` (ids
    ``<parent>-h<j>``, instance numbers after the awaited ones), then ``n_awaited`` called
    as ``await kr_sum(i, steps)`` under ``asyncio.gather``; the results in that order."""
    handles = [
        await ctx.start_child(kr_sum, n_awaited + j, steps, id=f"{ctx.instance_id}-h{j}")
        for j in range(n_handles)
    ]
    awaited = await asyncio.gather(*(kr_sum(i, steps) for i in range(n_awaited)))
    held = [await h for h in handles]
    return [*awaited, *held]


# ----------------------------------------------------------------------------- continue-as-new
@workflow(name="kc_loop")
async def kc_loop(
    ctx: WorkflowContext,
    instance_no: int,
    total: int,
    per_run: int,
    start: int = 0,
    acc: int = 0,
    runs: list[str] | None = None,
) -> dict[str, Any]:
    """Run ``kr_step(instance_no, i)`` for ``i`` in ``range(total)``, ``per_run`` per run,
    continuing as new in between; return the sum and the ids of the runs, in order."""
    runs = [*(runs or []), ctx.run_id]
    end = min(start + per_run, total)
    for iteration in range(start, end):
        acc += await kr_step(instance_no, iteration)
    if end < total:
        ctx.continue_as_new(instance_no, total, per_run, end, acc, runs)
    return {"sum": acc, "runs": runs}


# ----------------------------------------------------------------------------- updates
def check_key(key: int) -> None:
    """The validator of ``kc_account``'s ``add`` update: keys are natural numbers."""
    if key < 0:
        raise ValueError(f"key {key} is negative")


@workflow(name="kc_account")
async def kc_account(ctx: WorkflowContext, instance_no: int) -> dict[str, Any]:
    """Add ``kr_step(instance_no, key)`` for each ``add(key)`` update, once per key (a
    repeated key, e.g. a client's retry, returns the first value); end on ``finish``."""
    values: dict[int, int] = {}
    pending: set[int] = set()
    running = 0
    finished = False
    total = 0

    @ctx.update_handler("add", validator=check_key)
    async def add(key: int) -> int:
        nonlocal running, total
        running += 1
        try:
            if key in values or key in pending:
                await ctx.wait_condition(lambda: key in values)
                return values[key]
            pending.add(key)
            value = await kr_step(instance_no, key)
            total += value
            values[key] = value
            pending.discard(key)
            return value
        finally:
            running -= 1

    @ctx.signal_handler("finish")
    def finish() -> None:
        nonlocal finished
        finished = True

    @ctx.query_handler("total")
    def current_total() -> int:
        return total

    await ctx.wait_condition(lambda: finished and running == 0)
    return {"total": total, "keys": sorted(values)}


# ----------------------------------------------------------------------------- heartbeats
def _progress(step: int, item: int) -> None:
    ctx = activity_context()
    _side().execute(
        "INSERT INTO progress (instance, step, item, pid, attempt, at) VALUES (?, ?, ?, ?, ?, ?)",
        (ctx.instance_id, step, item, os.getpid(), ctx.attempt, time.time()),
    )


@activity(
    name="kc_copy",
    heartbeat_timeout=HEARTBEAT_TIMEOUT,
    retry=RetryPolicy(max_attempts=3, initial_interval=0.05),
)
def kc_copy(instance_no: int, step: int, items: int, fail_at: int) -> int:
    """Process ``items`` items, heartbeating the next one to do; resume from the details a
    failed attempt left. The first attempt fails on reaching item ``fail_at`` (-1:
    never). Records each item in ``progress`` and the successful end in ``executions``."""
    ctx = activity_context()
    started = time.time()
    first = ctx.heartbeat_details or 0
    for item in range(first, items):
        if ctx.attempt == 1 and item == fail_at:
            raise ConnectionError(f"link dropped before item {item}")
        time.sleep(ITEM_SECONDS)
        _progress(step, item)
        ctx.heartbeat(item + 1)
    _side().execute(
        "INSERT INTO executions (instance, step, pid, attempt, started_at, finished_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (ctx.instance_id, step, os.getpid(), ctx.attempt, started, time.time()),
    )
    return instance_no * 1000 + items


@workflow(name="kc_copier")
async def kc_copier(ctx: WorkflowContext, instance_no: int, items: int, fail_at: int) -> int:
    """One heartbeating ``kc_copy`` call (step 0)."""
    return await kc_copy(instance_no, 0, items, fail_at)


WORKFLOWS = [kr_sum, kc_parent, kc_loop, kc_account, kc_copier]
ACTIVITIES = [kr_step, kc_copy]


async def serve(url: str, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM."""
    async with Engine(url, options=options, workflows=WORKFLOWS, activities=ACTIVITIES) as engine:
        await engine.run_worker()


def main() -> int:
    """Parse the arguments and run the worker."""
    global SIDE_PATH, STEP_SECONDS, ITEM_SECONDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    parser.add_argument("--item-seconds", type=float, default=ITEM_SECONDS)
    parser.add_argument("--host-id", default=None)
    args = parser.parse_args()
    SIDE_PATH = args.side
    STEP_SECONDS = args.step_seconds
    ITEM_SECONDS = args.item_seconds
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
