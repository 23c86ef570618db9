"""8 worker processes on one SQLite file, killed while they commit: the file and the runs hold.

Eight worker processes share one SQLite store and run ``og_chain`` workflows (5 steps,
500 workflows in ``make test``; 10 steps, 2,000 in the long run) that a client starts in
a stream. Meanwhile a random worker is SIGKILLed every 0.2-0.8 s and a fresh one takes
its place; a third of the replacements also carry a fault plan (``STALWART_FAULTS``)
that makes them die by ``os._exit`` right before or right after one of their commits,
or between an activity's result and its commit, at a random hit. So the file sees
writers vanish mid-transaction, with their WAL frames and locks behind them, while seven
others keep writing.

Checks: ``PRAGMA integrity_check`` is ``ok`` (the store and the audit log); every
workflow completed with the right result and each step's outcome is recorded once
(``outage_support.check_calls``); no double claim: a step ran again only after the
process that ran it before had died (between its execution and the next), and then
under a higher lease epoch; no worker died on its own and none logged "database is
locked" (``SQLITE_BUSY`` is waited out, not raised) or a traceback.
``STALWART_TEST_SEED`` replays the schedule.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from stalwart import Engine
from tests.chaos.report import long_runs, record

from . import outage_oracle
from .outage_app import step_value
from .outage_support import (
    AppProcess,
    Kill,
    Verdict,
    all_instances,
    check_calls,
    check_statuses,
    last_seen_alive,
    load_histories,
    row_on_abort,
    settled,
    wait_until,
)
from .support import env_seed, sqlite_url

SCENARIO = "8 processes on one SQLite file, kills mid-write"

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(1500)]

WORKERS = 8
START_INTERVAL = 0.4
"""20 workflows are started every 0.4 s: a stream that keeps the eight busy for a while."""
FAULT_POINTS = ("commit.before", "commit.after", "activity.after_result")


async def test_eight_processes_on_one_sqlite_file_with_kills_mid_write(tmp_path: Path) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    n, steps, max_kills = (2_000, 10, 80) if long_runs() else (500, 5, 20)
    with row_on_abort(SCENARIO, "sqlite", n):
        ids = [f"wf-{i:05d}" for i in range(n)]
        db = tmp_path / "store.db"
        url = sqlite_url(db)
        oracle = tmp_path / "oracle.db"
        outage_oracle.init(oracle)
        verdict = Verdict()
        procs: list[AppProcess] = []
        slots: list[AppProcess] = []
        kills: list[Kill] = []
        planned: set[int] = set()
        crashed: list[AppProcess] = []

        def spawn(slot: int) -> AppProcess:
            env = {}
            if procs and rng.random() < 1 / 3:  # not the first generation: let it start
                env["STALWART_FAULTS"] = f"{rng.choice(FAULT_POINTS)}:exit:{rng.randint(5, 80)}"
            proc = AppProcess(
                url=url,
                oracle=oracle,
                app="chain",
                log=tmp_path / f"worker-{len(procs):03d}.log",
                env=env,
                name=f"s{slot}",
                lease=5.0,
                poll=0.1,
                concurrency=4,
                step_seconds=0.002,
                max_recoveries=1000,  # kills are the point here, not the poison-pill guard
                claim_batch=4,  # small claims spread the work (and the writes) over all eight
            )
            if env:
                planned.add(proc.pid)
            procs.append(proc)
            return proc

        def record_death(proc: AppProcess, kill: Kill) -> None:
            kills.append(kill)
            if proc.pid not in planned:
                crashed.append(proc)

        async def replace_dead() -> None:
            for slot, proc in enumerate(slots):
                if proc.alive() or proc.killed:
                    continue
                record_death(proc, await proc.died())
                slots[slot] = spawn(slot)

        stop_chaos = asyncio.Event()

        async def chaos() -> None:
            # Planned deaths are noticed (and replaced) within 50 ms; SIGKILLs come every
            # 0.2-0.8 s until ``max_kills`` deaths, planned ones included.
            next_kill = time.monotonic() + rng.uniform(0.2, 0.8)
            while not stop_chaos.is_set():
                await replace_dead()
                if len(kills) < max_kills and time.monotonic() >= next_kill:
                    slot = rng.randrange(WORKERS)
                    kills.append(await slots[slot].kill())
                    slots[slot] = spawn(slot)
                    next_kill = time.monotonic() + rng.uniform(0.2, 0.8)
                await asyncio.sleep(0.05)

        chaos_task: asyncio.Task[None] | None = None
        began = time.monotonic()
        try:
            async with Engine(url, worker=False, workflows=[], activities=[]) as client:
                slots.extend(spawn(slot) for slot in range(WORKERS))
                for proc in slots:
                    await proc.wait_ready(client)
                chaos_task = asyncio.create_task(chaos())
                for first in range(0, n, 20):
                    await asyncio.gather(
                        *(
                            client.start_by_name("og_chain", [i, steps], id=ids[i])
                            for i in range(first, min(first + 20, n))
                        )
                    )
                    await asyncio.sleep(START_INTERVAL)

                async def all_done() -> bool:
                    if chaos_task is not None and chaos_task.done():
                        chaos_task.result()  # surface a failure of the chaos loop
                    return await settled(client, n)

                await wait_until(all_done, 600, f"{n} workflows", interval=0.2)
                elapsed = time.monotonic() - began
                stop_chaos.set()
                await chaos_task
                chaos_task = None
                final = await all_instances(client)
                verdict.merge(check_statuses(final, ids))
                ended = [i for i in range(n) if final[ids[i]].status == "completed"]
                results = await asyncio.gather(
                    *(client.get_handle(ids[i]).result(timeout=30) for i in ended)
                )
                for i, got in zip(ended, results, strict=True):
                    want = sum(step_value(i, s) for s in range(steps))
                    if got != want:
                        verdict.add(f"{ids[i]} returned {got}, expected {want}")
                histories = await load_histories(client, ids)
                # Deaths since the chaos loop stopped count too (they can explain re-runs).
                seen = {k.pid for k in kills}
                for proc in procs:
                    if not proc.alive() and not proc.killed and proc.pid not in seen:
                        record_death(proc, await proc.died())
                for proc in slots:
                    if proc.alive():
                        await proc.terminate()
        finally:
            stop_chaos.set()
            if chaos_task is not None:
                chaos_task.cancel()
            for proc in procs:
                proc.cleanup()

        for path in (db, oracle):
            result = outage_oracle.integrity(path)
            if result != "ok":
                verdict.add(f"integrity_check of {path.name}: {result[:500]}")
        executions = outage_oracle.read(oracle)
        last_seen_alive(kills, executions)
        verdict.merge(
            check_calls(
                {i: set(range(steps)) for i in ids},
                histories,
                executions,
                kills=kills,
                unfinished={ids[i] for i in range(n)} - {ids[i] for i in ended},
            )
        )
        # No double claim: a later execution by another worker ran under a higher epoch.
        runs: dict[tuple[str, int], list[outage_oracle.Execution]] = defaultdict(list)
        for ex in executions:
            runs[ex.call].append(ex)
        for call, execs in runs.items():
            execs.sort(key=lambda ex: ex.started_at)
            for prev, nxt in pairwise(execs):
                if nxt.worker_id != prev.worker_id and not (
                    (nxt.lease_epoch or 0) > (prev.lease_epoch or 0)
                ):
                    verdict.add(f"{call} run by two workers under one epoch: {prev} -> {nxt}")
        for proc in crashed:
            verdict.add(f"worker {proc.pid} died on its own:\n{proc.log_text()[-2000:]}")
        for proc in procs:
            bad = proc.log_lines("database is locked", "Traceback")
            if bad:
                verdict.add(f"worker {proc.pid} logged: {bad[:3]}")
        pids = {ex.pid for ex in executions}
        planned_deaths = sum(1 for k in kills if k.pid in planned)
        detail = (
            f"{WORKERS} processes, {len(procs)} started, {len(kills) - planned_deaths} SIGKILLs + "
            f"{planned_deaths} deaths at a commit point; {len(executions)} executions for "
            f"{n * steps} steps by {len(pids)} processes ({verdict.reruns} re-runs after kills); "
            f"{elapsed:.0f}s"
        )
        print(detail)
    record(
        SCENARIO,
        "sqlite",
        runs=n,
        violations=verdict.violations,
        detail=detail,
    )
    assert verdict.violations == 0, verdict.summary()
