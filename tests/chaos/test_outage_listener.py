"""The LISTEN/NOTIFY connection killed during bursts: work is still picked up in time.

A worker process (PostgreSQL, temporary database of the shared cluster) runs one-step
``og_chain`` workflows with a fallback poll of 1 s. The client starts bursts of 20
workflows; around each burst (just before it, in its middle, or right after it, as the
seed decides) only the worker's listening connection is terminated: its backend is the
one whose last statement is ``LISTEN``. Notifications sent while it is away are lost;
the worker must still pick every workflow up through its reconnection or its fallback
poll. 40 bursts (8 in ``make test``).

The pickup latency of a workflow is from the acknowledgement of its start to the start of
its first activity execution (audit log). Checks: the worst latency is at most the poll
interval plus 0.5 s of slack; every kill hit a listening connection and the listener
came back each time; every workflow completed, each step recorded once and run once; the
worker logged no traceback. ``STALWART_TEST_SEED`` replays the kill placement.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from stalwart import Engine
from tests.chaos.report import long_runs, record
from tests.postgres_support import admin_url, store_url, temporary_database

from . import outage_oracle
from .outage_support import (
    AppProcess,
    Verdict,
    all_instances,
    check_calls,
    check_statuses,
    load_histories,
    retry_store,
    row_on_abort,
    settled,
    wait_until,
)
from .support import env_seed

SCENARIO = "LISTEN connection killed during bursts"

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(600)]

POLL = 1.0
SLACK = 0.5
BURST = 20

_LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'LISTEN %%' "
    "AND backend_type = 'client backend'"
)


def listener_pids(database: str) -> list[int]:
    """The backends of ``database`` whose last statement was a LISTEN."""
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        return [int(pid) for (pid,) in conn.execute(_LISTENERS, (database,))]


def kill_listeners(database: str) -> int:
    """Terminate only the listening backends of ``database``; how many were cut."""
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT pg_terminate_backend(pid) FROM ({_LISTENERS}) AS l", (database,)
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


async def test_listener_killed_during_bursts(tmp_path: Path) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    bursts = 40 if long_runs() else 8
    with row_on_abort(SCENARIO, "postgres", bursts * BURST):
        oracle = tmp_path / "oracle.db"
        outage_oracle.init(oracle)
        verdict = Verdict()
        acked: dict[str, float] = {}
        kills: list[int] = []
        modes: list[str] = []
        worker: AppProcess | None = None

        with temporary_database() as db:
            url = store_url(db, schema="stalwart")
            try:
                async with Engine(url, worker=False, workflows=[], activities=[]) as client:
                    worker = AppProcess(
                        url=url,
                        oracle=oracle,
                        app="chain",
                        log=tmp_path / "worker.log",
                        poll=POLL,
                        lease=5.0,
                        concurrency=8,
                    )
                    await worker.wait_ready(client)

                    async def listening() -> bool:
                        return bool(await asyncio.to_thread(listener_pids, db))

                    async def start(n: int) -> None:
                        wf_id = f"wf-{n:05d}"
                        await retry_store(
                            lambda: client.start_by_name("og_chain", [n, 1], id=wf_id)
                        )
                        acked[wf_id] = time.time()

                    async def burst(first: int) -> None:
                        await asyncio.gather(*(start(n) for n in range(first, first + BURST)))

                    async def kill() -> None:
                        await wait_until(listening, 10, "the listener to be connected")
                        kills.append(await asyncio.to_thread(kill_listeners, db))

                    for b in range(bursts):
                        await wait_until(listening, 10, "the listener to be connected")
                        mode = rng.choice(["before", "during", "after"])
                        modes.append(mode)
                        if mode == "before":
                            await kill()
                            await burst(b * BURST)
                        elif mode == "during":
                            half = asyncio.create_task(burst(b * BURST))
                            await asyncio.sleep(rng.uniform(0.0, 0.05))
                            await kill()
                            await half
                        else:
                            await burst(b * BURST)
                            await kill()
                        await asyncio.sleep(rng.uniform(0.2, 1.2))
                    ids = sorted(acked)

                    async def all_done() -> bool:
                        return await settled(client, len(ids))

                    await wait_until(all_done, 120, "every workflow", check=_alive(worker))
                    await wait_until(listening, 10, "the listener to be back at the end")
                    final = await retry_store(lambda: all_instances(client))
                    verdict.merge(check_statuses(final, ids))
                    histories = await load_histories(client, ids)
                    executions = outage_oracle.read(oracle)
                    unfinished = {i for i in ids if final[i].status != "completed"}
                    verdict.merge(
                        check_calls(
                            {i: {0} for i in ids}, histories, executions, unfinished=unfinished
                        )
                    )
                    code = await worker.terminate()
                    if code != 0:
                        verdict.add(f"worker exited with {code}")
            finally:
                if worker is not None:
                    worker.cleanup()

        first_start: dict[str, float] = {}
        for ex in executions:
            first_start[ex.instance] = min(
                ex.started_at, first_start.get(ex.instance, ex.started_at)
            )
        latencies = {i: max(0.0, first_start[i] - acked[i]) for i in ids if i in first_start}
        late = {i: round(t, 3) for i, t in latencies.items() if t > POLL + SLACK}
        if late:
            verdict.add(
                f"{len(late)} workflows picked up later than {POLL + SLACK}s: {late}", len(late)
            )
        if len(kills) != bursts or not all(kills):
            verdict.add(f"some kills found no listening connection: {kills}")
        lost = worker.log_lines("listener on") if worker is not None else []
        if len(lost) < sum(kills):
            verdict.add(f"{sum(kills)} listener kills but {len(lost)} reconnections logged")
        tracebacks = worker.log_lines("Traceback") if worker is not None else []
        if tracebacks:
            verdict.add(f"worker logged {len(tracebacks)} tracebacks")
        per_burst = [
            max(latencies.get(f"wf-{n:05d}", 0.0) for n in range(b * BURST, (b + 1) * BURST))
            for b in range(bursts)
        ]
        values = sorted(latencies.values())
        detail = (
            f"{bursts} bursts of {BURST}, {sum(kills)} listener kills "
            f"({', '.join(f'{m} {modes.count(m)}' for m in ('before', 'during', 'after'))}); "
            f"pickup median {statistics.median(values) * 1000:.0f} ms, worst "
            f"{values[-1] * 1000:.0f} ms (poll {POLL:.1f}s)"
        )
        print(detail)
    record(
        SCENARIO,
        "postgres",
        runs=len(ids),
        violations=verdict.violations,
        recovery_seconds=per_burst,
        detail=detail,
    )
    assert verdict.violations == 0, verdict.summary()


def _alive(worker: AppProcess) -> Callable[[], None]:
    def check() -> None:
        assert worker.alive(), f"worker died:\n{worker.log_text()[-4000:]}"

    return check
