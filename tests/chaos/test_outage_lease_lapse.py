"""Leases that lapse while every worker is alive: no ping-pong, no poison, no re-run storm.

Two worker processes (lease 3 s: their heartbeat threads renew every second) serve the
``mixed`` app of ``outage_app``. 20 ``cc_order`` instances wait for a signal after two
steps (idle, in memory), and 20 one-step ``og_chain`` instances run a step that lasts
longer than the fault. Then no lease renewal can commit for 5 s: on SQLite another
process holds ``BEGIN EXCLUSIVE`` (every writer waits); on PostgreSQL the test holds an
``EXCLUSIVE`` lock on ``workers`` (renewals wait, everything else, claims included, goes
on: a stalled lease connection). Both leases run out although both processes live, as
after a PostgreSQL outage longer than the lease whose end the heartbeat threads notice
after the claim loops do (``test_outage_pg_stop.py`` met it that way).

What must hold. A worker whose lease lapsed looks dead, so its instances may be taken
over, once: by a worker that holds a valid lease. Two workers whose leases both lapsed
must not take each other's instances back and forth, so:

* every instance changes hands at most once across the fault (its epoch rises by <= 1);
* no instance is parked as a ``PoisonWorkflow`` (no worker died);
* each in-flight step runs at most twice (the original and the takeover), every other
  step once; after the signal all 40 complete, each step recorded once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from stalwart import Engine
from tests.chaos.report import record

from . import outage_oracle
from .outage_app import SIGNAL
from .outage_support import (
    AppProcess,
    Outage,
    Verdict,
    all_instances,
    check_calls,
    load_histories,
    pause_sqlite,
    row_on_abort,
    settled,
    store_for,
    wait_until,
)

SCENARIO = "leases lapse while the workers live"

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

N_IDLE = 20
N_BUSY = 20
LEASE = 3.0
PAUSE = 5.0
STEP_SECONDS = PAUSE + 1.0
"""The busy instances' step outlasts the fault: it is in flight the whole time."""


async def stall_renewals(dsn: str, seconds: float) -> tuple[float, float]:
    """Block every lease renewal for ``seconds`` (``EXCLUSIVE`` on ``workers``: its rows
    cannot be updated, but they and everything else can still be read and claimed)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await conn.execute("LOCK TABLE stalwart.workers IN EXCLUSIVE MODE")
        began = time.time()
        await asyncio.sleep(seconds)
    return began, time.time()


def read_epochs(kind: str, target: str) -> dict[str, int]:
    """Every instance's lease epoch, read from the store's table (not in the client API)."""
    if kind == "sqlite":
        conn = sqlite3.connect(target, timeout=30)
        try:
            return dict(conn.execute("SELECT id, epoch FROM instances").fetchall())
        finally:
            conn.close()
    with psycopg.connect(target) as pg:
        return {i: int(e) for i, e in pg.execute("SELECT id, epoch FROM stalwart.instances")}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_lapsed_leases_of_live_workers_move_each_instance_at_most_once(
    kind: str, tmp_path: Path
) -> None:
    n = N_IDLE + N_BUSY
    with row_on_abort(SCENARIO, kind, n):
        idle = [f"idle-{i:02d}" for i in range(N_IDLE)]
        busy = [f"busy-{i:02d}" for i in range(N_BUSY)]
        oracle = tmp_path / "oracle.db"
        outage_oracle.init(oracle)
        verdict = Verdict()
        procs: list[AppProcess] = []
        async with store_for(kind, tmp_path) as (url, _, target):
            try:
                async with Engine(url, worker=False, workflows=[], activities=[]) as client:
                    for w in range(2):
                        procs.append(
                            AppProcess(
                                url=url,
                                oracle=oracle,
                                app="mixed",
                                log=tmp_path / f"worker-{w}.log",
                                lease=LEASE,
                                poll=0.5,
                                concurrency=N_BUSY,
                                step_seconds=STEP_SECONDS,
                            )
                        )
                    for p in procs:
                        await p.wait_ready(client)
                    await asyncio.gather(
                        *(client.start_by_name("cc_order", [i], id=wf) for i, wf in enumerate(idle))
                    )

                    async def idle_waiting() -> bool:
                        items = await all_instances(client)
                        return all(items[wf].history_length >= 5 for wf in idle)

                    await wait_until(idle_waiting, 60, "the idle instances to wait")
                    await asyncio.gather(
                        *(
                            client.start_by_name("og_chain", [i, 1], id=wf)
                            for i, wf in enumerate(busy)
                        )
                    )

                    async def busy_running() -> bool:
                        items = await all_instances(client)
                        return all(wf in items and items[wf].history_length >= 2 for wf in busy)

                    await wait_until(busy_running, 60, "the busy instances' steps to start")
                    before = await asyncio.to_thread(read_epochs, kind, target)
                    if kind == "sqlite":
                        began, ended = await pause_sqlite(target, PAUSE)
                    else:
                        began, ended = await stall_renewals(target, PAUSE)
                    # Two leases' time: enough for the workers to renew or re-register.
                    await asyncio.sleep(2 * LEASE)
                    await asyncio.gather(*(client.get_handle(wf).signal(SIGNAL) for wf in idle))
                    await wait_until(lambda: settled(client, n), 120, "every instance to end")
                    after = await asyncio.to_thread(read_epochs, kind, target)
                    final = await all_instances(client)
                    histories = await load_histories(client, [*idle, *busy])
                    for p in procs:
                        if not p.alive():
                            verdict.add(f"worker {p.pid} died:\n{p.log_text()[-2000:]}")
                        elif await p.terminate() != 0:
                            verdict.add(f"worker {p.pid} did not stop cleanly")
            finally:
                for p in procs:
                    p.cleanup()

        statuses = Counter(d.status for d in final.values())
        for wf, d in final.items():
            if d.status != "completed":
                verdict.add(f"{wf} is {d.status}: {d.error}")
        moves = {wf: after[wf] - before[wf] for wf in before}
        pingpong = {wf: m for wf, m in moves.items() if m > 1}
        if pingpong:
            verdict.add(
                f"{len(pingpong)} instances changed hands more than once between live "
                f"workers (epoch rises): {dict(sorted(pingpong.items())[:8])}",
                len(pingpong),
            )
        executions = outage_oracle.read(oracle)
        runs = Counter(ex.call for ex in executions)
        too_many = {c: k for c, k in runs.items() if k > (2 if c[0].startswith("busy") else 1)}
        if too_many:
            verdict.add(f"steps run too often: {dict(sorted(too_many.items())[:8])}", len(too_many))
        verdict.merge(
            check_calls(
                {**{wf: {1, 2, 3} for wf in idle}, **{wf: {0} for wf in busy}},
                histories,
                executions,
                # The takeover reruns the busy step: its first run was lost with the lease.
                outages=[Outage(began, ended + 2 * LEASE)],
                unfinished={wf for wf, d in final.items() if d.status != "completed"},
            )
        )
        parked = sum((d.error or {}).get("type") == "PoisonWorkflow" for d in final.values())
        detail = (
            f"{N_IDLE} idle + {N_BUSY} busy instances on 2 live workers, lease {LEASE:.0f}s, "
            f"no renewal for {PAUSE:.0f}s; {dict(statuses)}, {parked} PoisonWorkflow; "
            f"changed hands {dict(sorted(Counter(moves.values()).items()))} times; "
            f"executions per step {dict(sorted(Counter(runs.values()).items()))}"
        )
        print(detail)
    record(SCENARIO, kind, runs=n, violations=verdict.violations, detail=detail)
    assert verdict.violations == 0, verdict.summary()
