"""The worker process of the oracle chaos scenarios: ``python -m tests.chaos.scenarios_app``.

Every activity body runs inside :func:`tests.chaos.oracle.logged`, so the oracle log
(``--oracle``, a SQLite file outside the engine) holds every execution: which call,
attempt, process, worker incarnation and lease epoch ran it, and when. Markers in the same
file (set by the test) switch faults on and off. The workflows:

* ``ch_transfer``: the money transfer saga of ``examples/money_transfer.py`` (debit the
  source, compensated by crediting it back; credit the destination) against the bank file
  ``--bank``; the bank applies each operation at most once per idempotency key;
* ``ch_steps``: ``steps`` sequential calls of ``ch_step``;
* ``ch_blocker``: a step, then ``ch_block``, an *async* activity that blocks the worker's
  event loop (``time.sleep``, or a CPU loop) for some seconds when it runs in the worker
  named by its argument (elsewhere it returns at once), then another step;
* ``ch_poison``: a step, then ``ch_die``, which ends its process with ``os._exit`` while
  the marker ``poison`` is set;
* ``ch_order``: a saga of ``ch_reserve`` and ``ch_charge`` (compensated by ``ch_release``
  and ``ch_refund``), then ``ch_ship``, which fails (``fail``) or takes a while (``slow``,
  to be cancelled); a compensation fails while the marker ``broken:<instance>`` is set;
* ``ch_serial``: ``tasks`` sequential calls of ``ch_serial_task``, declared on the
  ``serial`` task queue (served with ``--serial-concurrency``).

The process runs ``engine.run_worker()`` until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from examples import money_transfer
from stalwart import (
    ActivityDefinition,
    Engine,
    NonRetryableError,
    Queue,
    RetryPolicy,
    WorkerOptions,
    WorkflowContext,
    WorkflowDefinition,
    activity,
    activity_context,
    workflow,
)

from . import oracle

Transfer = money_transfer.Transfer
TransferReceipt = money_transfer.TransferReceipt

SERIAL_QUEUE = "serial"
STEP_SECONDS = 0.01
"""How long ``ch_step`` works (``--step-seconds``): kills land inside steps."""
UNDO_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05, max_interval=0.2)
"""A broken compensation fails for good after three quick attempts."""


def step_value(n: int, step: int) -> int:
    """What ``ch_step`` returns (the tests recompute it)."""
    return (n * 37 + step * 11) % 97 + 1


# ----------------------------------------------------------------------------- transfers
def _bank_operation(operation: str, kind: str, transfer: Transfer, account: str, delta: int) -> str:
    with oracle.logged():
        return money_transfer.apply_operation(operation, kind, transfer, account, delta)


@activity(name="ch_credit_back", retry=money_transfer.UNDO_RETRY)
def ch_credit_back(transfer: Transfer) -> str:
    """Return the debited amount to the source (compensates ``ch_debit``)."""
    return _bank_operation(
        "credit_back", "compensation", transfer, transfer.source, transfer.amount
    )


@activity(
    name="ch_debit",
    compensate=ch_credit_back,
    compensate_with="input",
    retry=money_transfer.FORWARD_RETRY,
)
def ch_debit(transfer: Transfer) -> str:
    """Take the amount from the source account."""
    return _bank_operation("debit", "forward", transfer, transfer.source, -transfer.amount)


@activity(name="ch_credit", retry=money_transfer.FORWARD_RETRY)
def ch_credit(transfer: Transfer) -> str:
    """Give the amount to the destination account (refused by the bank's faults table)."""
    return _bank_operation("credit", "forward", transfer, transfer.destination, transfer.amount)


@workflow(name="ch_transfer")
async def ch_transfer(ctx: WorkflowContext, transfer: Transfer) -> TransferReceipt:
    """Debit, then credit; credit the source back if the credit fails."""
    async with ctx.saga():
        debit_ref = await ch_debit(transfer)
        credit_ref = await ch_credit(transfer)
    return TransferReceipt(transfer.id, debit_ref, credit_ref)


# ----------------------------------------------------------------------------- steps
@activity(name="ch_step")
def ch_step(n: int, step: int) -> int:
    """A little "I/O"; returns the step's value."""
    with oracle.logged():
        time.sleep(STEP_SECONDS)
        return step_value(n, step)


@workflow(name="ch_steps")
async def ch_steps(ctx: WorkflowContext, n: int, steps: int) -> int:
    """``steps`` calls of ``ch_step`` one after the other; the sum of their values."""
    total = 0
    for step in range(steps):
        total += await ch_step(n, step)
    return total


# ----------------------------------------------------------------------------- blocked loop
@activity(name="ch_block")
async def ch_block(n: int, worker_name: str, seconds: float, how: str) -> int:
    """Block the event loop for ``seconds`` (``sleep`` or ``spin``) when running in the
    worker named ``worker_name``; anywhere else return at once (a takeover shows up as a
    fast second execution overlapping the blocked one)."""
    with oracle.logged():
        worker_id = activity_context().worker_id or ""
        if worker_id.startswith(f"{worker_name}-"):
            until = time.monotonic() + seconds
            if how == "sleep":
                time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
            else:
                while time.monotonic() < until:
                    pass
        return step_value(n, 1)


@workflow(name="ch_blocker")
async def ch_blocker(
    ctx: WorkflowContext, n: int, worker_name: str, seconds: float, how: str
) -> int:
    """A step, a loop-blocking step, a step."""
    total: int = await ch_step(n, 0)
    total += int(await ch_block(n, worker_name, seconds, how))
    total += await ch_step(n, 2)
    return total


# ----------------------------------------------------------------------------- poison
@activity(name="ch_die")
def ch_die(n: int) -> int:
    """End the process (like a crash) while the marker ``poison`` is set."""
    with oracle.logged() as row:
        if oracle.marker("poison"):
            oracle.exit_process(row)
        return step_value(n, 1)


@workflow(name="ch_poison")
async def ch_poison(ctx: WorkflowContext, n: int) -> int:
    """A step, then the step that kills its worker while poisoned."""
    return int(await ch_step(n, 0) + await ch_die(n))


# ----------------------------------------------------------------------------- sagas
def _undo(what: str, n: int, seconds: float) -> str:
    with oracle.logged():
        time.sleep(seconds)
        if oracle.marker(f"broken:{activity_context().instance_id}"):
            raise RuntimeError(f"cannot {what} order {n}: the downstream service is down")
        return f"{what}-{n}"


@activity(name="ch_release", retry=UNDO_RETRY)
def ch_release(n: int, undo_seconds: float) -> str:
    """Release the stock (compensates ``ch_reserve``)."""
    return _undo("release", n, undo_seconds)


@activity(name="ch_refund", retry=UNDO_RETRY)
def ch_refund(n: int, undo_seconds: float) -> str:
    """Refund the charge (compensates ``ch_charge``)."""
    return _undo("refund", n, undo_seconds)


@activity(name="ch_reserve", compensate=ch_release, compensate_with="input")
def ch_reserve(n: int, undo_seconds: float) -> str:
    """Reserve stock."""
    with oracle.logged():
        time.sleep(STEP_SECONDS)
        return f"reservation-{n}"


@activity(name="ch_charge", compensate=ch_refund, compensate_with="input")
def ch_charge(n: int, undo_seconds: float) -> str:
    """Charge the customer."""
    with oracle.logged():
        time.sleep(STEP_SECONDS)
        return f"charge-{n}"


@activity(name="ch_ship", retry=RetryPolicy(max_attempts=1))
async def ch_ship(n: int, mode: str, seconds: float) -> str:
    """Ship: refused at once (``fail``), or after ``seconds`` (``slow``)."""
    with oracle.logged():
        if mode == "fail":
            raise NonRetryableError(f"order {n} cannot be shipped")
        await asyncio.sleep(seconds)
        return f"parcel-{n}"


@workflow(name="ch_order")
async def ch_order(
    ctx: WorkflowContext, n: int, mode: str, ship_seconds: float, undo_seconds: float
) -> str:
    """Reserve, charge, ship; undo the first two if shipping fails or on cancel."""
    async with ctx.saga():
        await ch_reserve(n, undo_seconds)
        await ch_charge(n, undo_seconds)
        parcel = str(await ch_ship(n, mode, ship_seconds))
    return parcel


# ----------------------------------------------------------------------------- queue
@activity(name="ch_serial_task", queue=SERIAL_QUEUE)
def ch_serial_task(n: int, task: int, seconds: float) -> int:
    """A task of the ``serial`` queue."""
    with oracle.logged():
        time.sleep(seconds)
        return step_value(n, task)


@workflow(name="ch_serial")
async def ch_serial(ctx: WorkflowContext, n: int, tasks: int, seconds: float) -> int:
    """``tasks`` queued calls one after the other."""
    total = 0
    for task in range(tasks):
        total += await ch_serial_task(n, task, seconds)
    return total


WORKFLOWS: list[WorkflowDefinition[Any, Any]] = [
    ch_transfer,
    ch_steps,
    ch_blocker,
    ch_poison,
    ch_order,
    ch_serial,
]
ACTIVITIES: list[ActivityDefinition[Any, Any]] = [
    ch_debit,
    ch_credit,
    ch_credit_back,
    ch_step,
    ch_block,
    ch_die,
    ch_reserve,
    ch_charge,
    ch_ship,
    ch_release,
    ch_refund,
    ch_serial_task,
]
UNDO_OF = {"ch_debit": "ch_credit_back", "ch_reserve": "ch_release", "ch_charge": "ch_refund"}
"""Forward activity -> its compensation."""


async def serve(url: str, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM."""
    async with Engine(url, options=options, workflows=WORKFLOWS, activities=ACTIVITIES) as engine:
        await engine.run_worker()


def main() -> int:
    """Parse the arguments and run the worker."""
    global STEP_SECONDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--oracle", required=True)
    parser.add_argument("--bank", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--host-id", default=None)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-recoveries", type=int, default=5)
    parser.add_argument("--serial-concurrency", type=int, default=0)
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0))
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(created).3f %(process)d %(levelname)s %(name)s: %(message)s",
    )
    oracle.use(args.oracle)
    if args.bank:
        money_transfer.use_bank(args.bank)
    money_transfer.LATENCY = tuple(args.latency)
    STEP_SECONDS = args.step_seconds
    queues = (
        (Queue(SERIAL_QUEUE, concurrency=args.serial_concurrency),)
        if args.serial_concurrency
        else ()
    )
    options = WorkerOptions(
        name=args.name,
        host_id=args.host_id,
        lease_seconds=args.lease,
        poll_interval=args.poll,
        activity_threads=args.concurrency,
        max_concurrent_activities=args.concurrency,
        max_recoveries=args.max_recoveries,
        queues=queues,
        shutdown_grace=2.0,
    )
    asyncio.run(serve(args.url, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
