"""The worker process of the outage chaos tests: ``python -m tests.chaos.outage_app ...``.

``--app`` picks what the process serves (a worker claims only the workflows it knows):

* ``chain``: ``og_chain(n, steps)`` runs ``og_step(n, 0..steps-1)`` one after the other
  and returns the sum of their values (``step_value``); the load of the outage, listener
  and SQLite-contention scenarios.
* ``sleeper``: ``og_sleeper(n, seconds)`` sleeps durably, then runs ``og_wake(n)``, which
  reads the store's clock (PostgreSQL: the server's ``clock_timestamp()`` over its own
  connection; SQLite: this host's clock, which is the SQLite store's clock) so the test
  can prove no timer fired early.
* ``code-v1``, ``code-swapped``, ``code-patched``: three codes of one workflow,
  ``cc_order`` version 1, as a deploy changes it in place. v1 runs steps 1 and 2, waits
  for the signal ``go``, then runs step 3. ``swapped`` has steps 2 and 3 swapped (1, 3,
  wait, 2): histories recorded by v1 diverge from it. ``patched`` guards the swap with
  ``ctx.patched("swap-steps-2-3")``: old histories replay v1's branch, new instances take
  the new order. Each returns the steps in the order it ran them.
* ``mixed``: ``og_chain`` and ``cc_order`` v1 together.

Every activity execution appends ``(instance, step, attempt, pid, worker id, lease epoch,
start, end[, clock])`` to the audit log ``--oracle`` (``outage_oracle``), outside the
engine. The process runs ``engine.run_worker()`` until SIGTERM; ``STALWART_FAULTS`` in its
environment installs fault points (``stalwart.faults``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from typing import Any

import psycopg

from stalwart import (
    ActivityDefinition,
    Engine,
    WorkerOptions,
    WorkflowContext,
    WorkflowDefinition,
    activity,
    activity_context,
    workflow,
)
from tests.chaos import outage_oracle

ORACLE = ""
STEP_SECONDS = 0.0
CLOCK_DSN = ""
"""libpq URL of the store's database, to read its clock (empty: the SQLite store)."""
_local = threading.local()


def step_value(n: int, step: int) -> int:
    """What ``og_step(n, step)`` returns (the tests recompute it)."""
    return (n * 37 + step * 11) % 97 + 1


def _record(step: int, started_at: float, clock: float | None = None) -> None:
    ctx = activity_context()
    outage_oracle.log(
        ORACLE,
        instance=ctx.instance_id,
        step=step,
        attempt=ctx.attempt,
        worker_id=ctx.worker_id,
        lease_epoch=ctx.lease_epoch,
        started_at=started_at,
        clock=clock,
        pid=os.getpid(),
    )


def _store_clock() -> float:
    """The store's clock now: the database server's on PostgreSQL, else this host's."""
    if not CLOCK_DSN:
        return time.time()
    conn: psycopg.Connection[Any] | None = getattr(_local, "pg", None)
    if conn is None or conn.closed:
        conn = _local.pg = psycopg.connect(CLOCK_DSN, autocommit=True, connect_timeout=5)
    try:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    except psycopg.Error:
        _local.pg = None  # a broken connection: the attempt fails and is retried
        raise
    assert row is not None
    return float(row[0])


# ----------------------------------------------------------------------------- chain
@activity(name="og_step")
def og_step(n: int, step: int) -> int:
    """A step of a chain: a little "I/O", one audit row, the step's value."""
    started = time.time()
    if STEP_SECONDS:
        time.sleep(STEP_SECONDS)
    _record(step, started)
    return step_value(n, step)


@workflow(name="og_chain")
async def og_chain(ctx: WorkflowContext, n: int, steps: int) -> int:
    """``steps`` activity calls in sequence; the sum of their values."""
    total = 0
    for step in range(steps):
        total += await og_step(n, step)
    return total


# ----------------------------------------------------------------------------- timers
WAKE_STEP = 1
"""The oracle step number of ``og_wake`` (the call after the timer)."""


@activity(name="og_wake")
def og_wake(n: int) -> float:
    """Runs right after the timer: records (and returns) the store's clock."""
    started = time.time()
    clock = _store_clock()
    _record(WAKE_STEP, started, clock)
    return clock


@workflow(name="og_sleeper")
async def og_sleeper(ctx: WorkflowContext, n: int, seconds: float) -> float:
    """Sleep durably for ``seconds``, then run ``og_wake``."""
    await ctx.sleep(seconds)
    clock: float = await og_wake(n)
    return clock


# ----------------------------------------------------------------------------- code change
PATCH = "swap-steps-2-3"
SIGNAL = "go"


@activity(name="cc_step1")
def cc_step1(n: int) -> int:
    """Step 1 (logged as step 1)."""
    started = time.time()
    _record(1, started)
    return 1


@activity(name="cc_step2")
def cc_step2(n: int) -> int:
    """Step 2 (logged as step 2)."""
    started = time.time()
    _record(2, started)
    return 2


@activity(name="cc_step3")
def cc_step3(n: int) -> int:
    """Step 3 (logged as step 3)."""
    started = time.time()
    _record(3, started)
    return 3


@workflow(name="cc_order")
async def cc_order_v1(ctx: WorkflowContext, n: int) -> list[int]:
    """The deployed code: steps 1 and 2, wait for ``go``, step 3."""
    order = [await cc_step1(n), await cc_step2(n)]
    await ctx.wait_for_signal(SIGNAL)
    order.append(await cc_step3(n))
    return order


@workflow(name="cc_order")
async def cc_order_swapped(ctx: WorkflowContext, n: int) -> list[int]:
    """The careless change: steps 2 and 3 swapped in place (1, 3, wait, 2)."""
    order = [await cc_step1(n), await cc_step3(n)]
    await ctx.wait_for_signal(SIGNAL)
    order.append(await cc_step2(n))
    return order


@workflow(name="cc_order")
async def cc_order_patched(ctx: WorkflowContext, n: int) -> list[int]:
    """The safe change: the swap behind ``ctx.patched``, old histories keep v1's order."""
    order = [await cc_step1(n)]
    if ctx.patched(PATCH):
        order.append(await cc_step3(n))
        await ctx.wait_for_signal(SIGNAL)
        order.append(await cc_step2(n))
    else:
        order.append(await cc_step2(n))
        await ctx.wait_for_signal(SIGNAL)
        order.append(await cc_step3(n))
    return order


CODE_ACTIVITIES: list[ActivityDefinition[Any, Any]] = [cc_step1, cc_step2, cc_step3]
APPS: dict[str, tuple[list[WorkflowDefinition[Any, Any]], list[ActivityDefinition[Any, Any]]]] = {
    "chain": ([og_chain], [og_step]),
    "sleeper": ([og_sleeper], [og_wake]),
    "code-v1": ([cc_order_v1], CODE_ACTIVITIES),
    "code-swapped": ([cc_order_swapped], CODE_ACTIVITIES),
    "code-patched": ([cc_order_patched], CODE_ACTIVITIES),
    "mixed": ([og_chain, cc_order_v1], [og_step, *CODE_ACTIVITIES]),
}


async def serve(url: str, app: str, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM."""
    workflows, activities = APPS[app]
    async with Engine(url, options=options, workflows=workflows, activities=activities) as engine:
        await engine.run_worker()


def main() -> int:
    """Parse the arguments and run the worker."""
    global ORACLE, STEP_SECONDS, CLOCK_DSN
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--oracle", required=True)
    parser.add_argument("--app", required=True, choices=sorted(APPS))
    parser.add_argument("--name", default=None)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--clock-dsn", default="")
    parser.add_argument("--max-recoveries", type=int, default=5)
    parser.add_argument("--claim-batch", type=int, default=100)
    args = parser.parse_args()
    ORACLE, STEP_SECONDS, CLOCK_DSN = args.oracle, args.step_seconds, args.clock_dsn
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
        max_recoveries=args.max_recoveries,
        claim_batch=args.claim_batch,
    )
    asyncio.run(serve(args.url, args.app, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
