"""A storm of ``pg_terminate_backend`` under load: every connection cut every 2 s.

Two worker processes run three-step ``og_chain`` workflows that a client starts at a
steady rate, in a temporary database of the shared PostgreSQL cluster. For 60 s (10 s in
``make test``) every connection to that database (the workers' pools, lease and LISTEN
connections, the client's) is terminated every 2 s.

Afterwards (``outage_support.chain_under_faults``): every workflow completed with the
right result; every step was recorded exactly once and ran again only if its outcome was
still unrecorded at a termination (and the earlier run ended within 3 s after it); the
step throughput was back to half its pre-storm rate within 10 s of the last termination
(the recovery time reported); no lock or idle-in-transaction session is left behind; no
worker died or logged a traceback.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.report import long_runs, record
from tests.postgres_support import (
    admin_url,
    store_url,
    temporary_database,
    terminate_backends,
)

from .outage_support import Outage, chain_under_faults, row_on_abort

SCENARIO = "pg_terminate_backend storm under load"

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(600)]

INTERVAL = 2.0
WINDOW = 3.0
"""Seconds after a termination in which a write can still fail (dead pooled
connections are found when used)."""


async def test_terminate_backend_storm_under_load(tmp_path: Path) -> None:
    duration = 60.0 if long_runs() else 10.0
    with row_on_abort(SCENARIO, "postgres", 0):
        terminated: list[int] = []

        with temporary_database() as db:

            async def storm() -> tuple[list[Outage], float]:
                outages = []
                end = time.monotonic() + duration
                while True:
                    at = time.time()
                    terminated.append(await asyncio.to_thread(terminate_backends, db))
                    outages.append(Outage(at, at + WINDOW))
                    if time.monotonic() + INTERVAL > end:
                        return outages, at
                    await asyncio.sleep(INTERVAL)

            run = await chain_under_faults(
                tmp_path,
                url=store_url(db, schema="stalwart"),
                client_url=store_url(db, schema="stalwart", pool_timeout=2),
                admin_url=admin_url(),
                database=db,
                fault=storm,
                rate=30.0,
                warmup=4.0,
                after=12.0,
            )
        if not all(terminated):
            run.verdict.add(f"a termination round found no connection to cut: {terminated}")
        detail = run.detail(
            f"{len(terminated)} rounds every {INTERVAL:.0f}s, {sum(terminated)} connections cut"
        )
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
