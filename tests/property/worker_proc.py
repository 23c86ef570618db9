"""A worker process serving the program interpreter on a SQLite file.

``python -m tests.property.worker_proc --db PATH --name NAME`` runs until SIGTERM. With
``STALWART_FAULTS="commit.after:exit:4"`` (see :mod:`stalwart.faults`) it dies like
``kill -9`` at that exact point, which is how the kill tests place their crashes.
"""

from __future__ import annotations

import argparse
import asyncio

from stalwart import Engine, WorkerOptions

from .interpreter import ACTIVITIES, prop_interp


async def main() -> None:
    """Serve until stopped."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    options = WorkerOptions(
        name=args.name, poll_interval=0.02, lease_seconds=10.0, shutdown_grace=0.5
    )
    engine = Engine(
        f"sqlite:///{args.db}", workflows=[prop_interp], activities=ACTIVITIES, options=options
    )
    await engine.run_worker()
    await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
