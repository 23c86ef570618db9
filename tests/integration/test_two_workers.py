"""Two worker processes share one SQLite file; one is SIGKILLed mid-run.

The survivor must finish everything, with the duplicate rules of ``harness.py``. The
dead worker is found two ways:

* ``pid``: both workers are on this host, so the survivor sees at once that the dead
  worker's pid is gone. Its lease is 30 s, so a takeover within seconds proves the pid
  check did it.
* ``lease``: the victim registers under another host identity (``app.py --host-id``),
  so only its lease (3 s) expiring lets the survivor take over, and not before.

``STALWART_TEST_SEED=<n>`` replays the kill moment of a failed run.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from .harness import (
    WorkerProcess,
    assert_clean_log,
    check_invariants,
    check_results,
    client,
    count_status,
    env_seed,
    histories,
    init_side,
    kill,
    read_side,
    wait_until,
)

N_INSTANCES = 100
STEPS = 20
CONCURRENCY = 8
START_INTERVAL = 0.01
"""Seconds between two starts of the second half, so both workers claim some of it."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.parametrize(
    ("detection", "victim_lease", "victim_host"),
    [("pid", 30.0, None), ("lease", 3.0, "another-host|0")],
    ids=["pid-check", "lease-expiry"],
)
async def test_survivor_finishes_the_work_of_a_killed_worker(
    tmp_path: Path, detection: str, victim_lease: float, victim_host: str | None
) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    db, side = tmp_path / "store.db", tmp_path / "side.db"
    init_side(side)
    total = N_INSTANCES * STEPS
    target = int(rng.uniform(0.25, 0.5) * total)

    victim = WorkerProcess(
        db,
        side,
        tmp_path / "victim.log",
        name="victim",
        lease=victim_lease,
        poll=0.1,
        concurrency=CONCURRENCY,
        host_id=victim_host,
    )
    workers = [victim]
    try:
        async with client(db) as engine:
            # The victim alone claims the first half, so it surely owns work at the kill;
            # then both workers compete for the second half, started a little at a time.
            await victim.wait_ready(engine)
            half = N_INSTANCES // 2
            await asyncio.gather(
                *(engine.start_by_name("kr_sum", [i, STEPS], id=f"wf-{i:03d}") for i in range(half))
            )

            async def victim_owns_first_half() -> bool:
                items = (await engine.list(limit=10_000)).items
                owned = [d for d in items if d.owner == victim.worker_id or d.status == "completed"]
                return len(owned) == half

            await wait_until(victim_owns_first_half, 30, "the victim to claim the first half")
            survivor = WorkerProcess(
                db,
                side,
                tmp_path / "survivor.log",
                name="survivor",
                lease=10.0,
                poll=0.1,
                concurrency=CONCURRENCY,
            )
            workers.append(survivor)
            await survivor.wait_ready(engine)

            async def start_second_half() -> None:
                for i in range(half, N_INSTANCES):
                    await engine.start_by_name("kr_sum", [i, STEPS], id=f"wf-{i:03d}")
                    await asyncio.sleep(START_INTERVAL)

            starting = asyncio.create_task(start_second_half())

            async def ready_to_kill() -> bool:
                # Far enough into the run, both workers busy, the victim owning work.
                executions = read_side(side)
                if len(executions) < target:
                    return False
                if not {victim.pid, survivor.pid} <= {ex.pid for ex in executions}:
                    return False
                running = (await engine.list(status="running", limit=10_000)).items
                return sum(d.owner == victim.worker_id for d in running) >= 3

            def both_alive() -> None:
                for w in workers:
                    assert w.alive(), f"worker died on its own:\n{w.log_text()}"

            await wait_until(ready_to_kill, 60, "both workers to be busy", check=both_alive)
            the_kill = await kill(engine, victim)
            await starting

            async def all_completed() -> bool:
                return await count_status(engine, "completed") == N_INSTANCES

            def survivor_alive() -> None:
                assert survivor.alive(), f"survivor died:\n{survivor.log_text()}"

            await wait_until(all_completed, 60, "all workflows", check=survivor_alive)
            await check_results(engine, N_INSTANCES, STEPS)
            assert await survivor.terminate() == 0, survivor.log_text()
            final = await histories(engine)
    finally:
        for w in workers:
            w.cleanup()

    executions = read_side(side)
    report = check_invariants(
        expected_pairs={(f"wf-{i:03d}", s) for i in range(N_INSTANCES) for s in range(STEPS)},
        executions=executions,
        final=final,
        kills=[the_kill],
        concurrency=CONCURRENCY,
    )
    assert the_kill.in_flight, "the kill found nothing in flight"
    for w in workers:
        assert_clean_log(w)

    # The instances the victim was running when it died (instances stay with the worker
    # that claimed them until they end), and the survivor's work on them afterwards.
    victim_instances = {ex.instance for ex in executions if ex.pid == victim.pid}
    orphans = {
        i
        for i in victim_instances
        if max(r.completions[0] for r in final[i].values()) > the_kill.dead_at
    }
    assert orphans, "the victim owned no unfinished instance at the kill"
    takeover = [ex for ex in executions if ex.instance in orphans and ex.pid == survivor.pid]
    assert {ex.instance for ex in takeover} == orphans
    first_takeover = min(ex.started_at for ex in takeover)
    delay = first_takeover - the_kill.dead_at
    survivor_log = survivor.log_text()

    if detection == "pid":
        assert "is gone; taking over" in survivor_log, survivor_log[-3000:]
        # The victim's lease had most of 30 s to run: only the pid check explains this.
        assert delay < 10.0, f"takeover took {delay:.2f}s"
    else:
        assert "is gone" not in survivor_log, survivor_log[-3000:]
        assert the_kill.lease_expires_at > the_kill.dead_at
        early = [ex for ex in takeover if ex.started_at < the_kill.lease_expires_at]
        assert not early, f"the survivor ran the victim's work before its lease expired: {early}"

    print(
        f"{detection}: {len(orphans)} orphaned instances taken over {delay:.2f}s after the "
        f"kill; {report.executions} executions for {total} steps, "
        f"{report.duplicates} duplicates (oldest unrecorded result at the kill: "
        f"{report.exposure[0] * 1000:.0f} ms)"
    )
