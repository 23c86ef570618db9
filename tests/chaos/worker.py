"""The worker process of the saga chaos test: ``python -m tests.chaos.worker --db ...``.

It serves the money-transfer saga of ``examples/money_transfer.py`` against the bank file
given by ``--bank``, until SIGTERM. The account operations sleep ``--before`` seconds
before their bank transaction and ``--after`` seconds after it (the reply's trip back),
so a kill often lands between the bank's commit and the engine recording the result:
the re-executed operation must then find its idempotency key and apply nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from examples import money_transfer
from stalwart import Engine, WorkerOptions


async def serve(url: str, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM."""
    async with Engine(
        url,
        options=options,
        workflows=[money_transfer.transfer_money],
        activities=money_transfer.ACTIVITIES,
    ) as engine:
        await engine.run_worker()


def main() -> int:
    """Parse the arguments and run the worker."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--before", type=float, default=0.0)
    parser.add_argument("--after", type=float, default=0.0)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    money_transfer.use_bank(args.bank)
    money_transfer.LATENCY = (args.before, args.after)
    options = WorkerOptions(
        lease_seconds=args.lease,
        poll_interval=args.poll,
        activity_threads=args.concurrency,
        max_concurrent_activities=args.concurrency,
    )
    asyncio.run(serve(f"sqlite:///{os.path.abspath(args.db)}", options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
