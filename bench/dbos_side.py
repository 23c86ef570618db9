"""The DBOS Transact side: the same workflows on DBOS's SQLite system database.

DBOS has process-global state (``DBOS(config=...)`` is a singleton and decorators
register into a global registry), so each measurement runs in its own child process.

Durability: out of the box DBOS opens its SQLite system database with SQLAlchemy and
only sets ``busy_timeout`` and ``foreign_keys`` on each connection (see
``dbos/_sys_db_sqlite.py``), so the file keeps SQLite's defaults: a rollback journal
(``journal_mode=delete``) and ``synchronous=FULL``. To compare like with like, the
benchmark adds a SQLAlchemy ``connect`` listener that switches every connection to
``journal_mode=WAL`` and the requested ``synchronous``, exactly what Stalwart's store
does, and reads both pragmas back from a connection of DBOS's own pool.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import time
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig
from sqlalchemy import event

from bench.common import (
    SYNC_NAMES,
    Sizes,
    SqlCounter,
    Target,
    WarningCounter,
    fanout_metrics,
    seq_metrics,
    thread_count,
)


@DBOS.step()
async def step(i: int) -> int:
    """The no-op step."""
    return i


@DBOS.workflow()
async def chain(n: int) -> int:
    """``n`` sequential no-op steps."""
    total = 0
    for i in range(n):
        total += await step(i)
    return total


def _install_connect_hook(counter: SqlCounter, synchronous: str | None) -> None:
    """On every new SQLite connection: count statements and (unless using DBOS's
    defaults) set WAL and the requested ``synchronous``."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if synchronous is not None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")
        dbapi_conn.set_trace_callback(counter)

    event.listen(sa.engine.Engine, "connect", on_connect)


def _settings(dbos: DBOS) -> dict[str, str]:
    """journal_mode and synchronous from a connection of DBOS's own pool."""
    engine = dbos._sys_db.engine
    with engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
    return {"journal_mode": str(journal), "synchronous": SYNC_NAMES.get(int(sync), str(sync))}


async def _seq(n: int) -> float:
    t0 = time.perf_counter()
    handle = await DBOS.start_workflow_async(chain, n)
    result = await handle.get_result()
    elapsed = time.perf_counter() - t0
    assert result == sum(range(n)), result
    return elapsed


async def _fanout(workflows: int, steps: int) -> list[tuple[float, float]]:
    expected = sum(range(steps))

    async def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        handle = await DBOS.start_workflow_async(chain, steps)
        result = await handle.get_result()
        t1 = time.perf_counter()
        assert result == expected, result
        return t0, t1

    return list(await asyncio.gather(*(one() for _ in range(workflows))))


async def run(scenario: str, target: Target, sizes: Sizes, workdir: str) -> dict[str, Any]:
    """Run one measurement; return its metrics and the database's settings."""
    counter = SqlCounter()
    warnings = WarningCounter()
    _install_connect_hook(counter, target.synchronous)
    path = os.path.join(workdir, "dbos.sqlite")
    config: DBOSConfig = {
        "name": "stalwart_bench",
        "system_database_url": f"sqlite:///{path}",
        "log_level": "WARNING",
        "application_version": "bench",
    }
    logging.getLogger("dbos").setLevel(logging.WARNING)
    dbos = DBOS(config=config)
    DBOS.launch()
    try:
        settings = _settings(dbos)
        if scenario == "seq":
            await _seq(sizes.warmup_steps)
            warnings.install("dbos")
            before = counter.snapshot()
            metrics = seq_metrics(await _seq(sizes.seq_steps), sizes.seq_steps)
            units = sizes.seq_steps
        else:
            await _fanout(sizes.warmup_workflows, sizes.fanout_steps)
            warnings.install("dbos")
            before = counter.snapshot()
            spans = await _fanout(sizes.fanout_workflows, sizes.fanout_steps)
            metrics = fanout_metrics(spans, sizes.fanout_steps)
            units = sizes.fanout_workflows
        sql = SqlCounter.delta(before, counter.snapshot())
        threads = thread_count()
    finally:
        DBOS.destroy()
    return {
        "metrics": metrics,
        "settings": settings,
        "url": config["system_database_url"],
        "version": importlib.metadata.version("dbos"),
        "sql": sql,
        "units": units,
        "threads": threads,
        "warnings": warnings.to_dict(),
    }
