"""PostgreSQL stopped under load: nothing fails, nothing is recorded twice, throughput returns.

Two worker processes run three-step ``og_chain`` workflows that a client starts at a
steady rate, on a *private* PostgreSQL cluster (``private_pg``: never the machine's
shared one). Mid-run the cluster is stopped (``pg_ctl stop -m fast``: every session is
cut, new connections are refused) for 30 s (5 s in ``make test``), then started again;
the load goes on throughout (the client retries its starts while the database is away).

Afterwards (``outage_support.chain_under_faults``): every workflow completed with the
right result; every step was recorded exactly once and ran again only if its outcome
was still unrecorded when the outage began; the step throughput (from the audit log,
which lives outside PostgreSQL) was back to half its pre-outage rate within 10 s of the
restart, which is the recovery time reported; no lock or idle-in-transaction session is
left behind; no worker died or logged a traceback.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.report import long_runs, record

from .outage_support import Outage, chain_under_faults, row_on_abort
from .private_pg import PrivateCluster, private_pg

__all__ = ["private_pg"]  # the fixture, imported so that pytest finds it

SCENARIO = "PostgreSQL stopped under load"

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(600)]

DATABASE = "stalwart_chaos"


async def test_postgres_stopped_under_load(tmp_path: Path, private_pg: PrivateCluster) -> None:
    outage = 30.0 if long_runs() else 5.0
    with row_on_abort(SCENARIO, "postgres", 0):
        db_url = private_pg.create_database(DATABASE)

        async def stop_and_start() -> tuple[list[Outage], float]:
            began = time.time()
            await asyncio.to_thread(private_pg.stop)
            await asyncio.sleep(outage)
            await asyncio.to_thread(private_pg.start)
            back = time.time()
            # Writes can fail until each pool has replaced its dead connections.
            return [Outage(began, back + 5.0)], back

        run = await chain_under_faults(
            tmp_path,
            url=f"{db_url}?schema=stalwart",
            client_url=f"{db_url}?schema=stalwart&pool_timeout=2",
            admin_url=private_pg.url(),
            database=DATABASE,
            fault=stop_and_start,
            rate=30.0,
            warmup=4.0,
            after=12.0,
        )
        detail = run.detail(f"stopped {outage:.0f}s")
        print(detail)
    record(
        SCENARIO,
        "postgres",
        runs=run.requested,
        violations=run.verdict.violations,
        recovery_seconds=[run.recovery] if run.recovery is not None else [],
        detail=detail,
    )
    assert run.verdict.violations == 0, run.verdict.summary()
