"""One worker process, SIGKILLed three times at random moments, restarted each time.

200 workflows of 20 activities each run on a SQLite file; every activity records its
execution in a side table. After the last restart everything must complete with the
right results, and the side table must show at-least-once execution with exactly-once
recording: only steps in flight at a kill ran again (see ``harness.py``).

``STALWART_TEST_SEED=<n>`` replays the kill moments of a failed run.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from .harness import (
    Kill,
    WorkerProcess,
    assert_clean_log,
    check_invariants,
    check_results,
    client,
    count_side,
    count_status,
    env_seed,
    histories,
    init_side,
    kill,
    read_side,
    start_all,
    wait_until,
)

N_INSTANCES = 200
STEPS = 20
CONCURRENCY = 8
KILL_WINDOWS = ((0.08, 0.28), (0.36, 0.56), (0.64, 0.84))
"""Each kill happens once a random fraction of all executions, in its window, is done."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_three_sigkills_lose_nothing_and_redo_only_in_flight_steps(
    tmp_path: Path,
) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    db, side = tmp_path / "store.db", tmp_path / "side.db"
    init_side(side)
    total = N_INSTANCES * STEPS
    targets = [int(rng.uniform(low, high) * total) for low, high in KILL_WINDOWS]
    workers: list[WorkerProcess] = []
    kills: list[Kill] = []

    def spawn() -> WorkerProcess:
        worker = WorkerProcess(
            db,
            side,
            tmp_path / f"worker-{len(workers)}.log",
            lease=5.0,
            poll=0.2,
            concurrency=CONCURRENCY,
        )
        workers.append(worker)
        return worker

    try:
        async with client(db) as engine:
            worker = spawn()
            await worker.wait_ready(engine)
            await start_all(engine, N_INSTANCES, STEPS)

            for target in targets:
                running = worker

                async def reached(target: int = target) -> bool:
                    return count_side(side) >= target

                def still_alive(w: WorkerProcess = running) -> None:
                    assert w.alive(), f"worker died on its own:\n{w.log_text()}"

                await wait_until(reached, 60, f"{target} executions", check=still_alive)
                await asyncio.sleep(rng.uniform(0.0, 0.03))
                kills.append(await kill(engine, running))
                worker = spawn()
                await worker.wait_ready(engine)

            async def all_completed() -> bool:
                return await count_status(engine, "completed") == N_INSTANCES

            last = worker

            def last_alive() -> None:
                assert last.alive(), f"worker died on its own:\n{last.log_text()}"

            await wait_until(all_completed, 90, "all workflows to complete", check=last_alive)
            await check_results(engine, N_INSTANCES, STEPS)
            assert await last.terminate() == 0, last.log_text()
            final = await histories(engine)
    finally:
        for w in workers:
            w.cleanup()

    report = check_invariants(
        expected_pairs={(f"wf-{i:03d}", s) for i in range(N_INSTANCES) for s in range(STEPS)},
        executions=read_side(side),
        final=final,
        kills=kills,
        concurrency=CONCURRENCY,
    )
    for k in kills:
        assert k.in_flight, f"the kill of {k.pid} found nothing in flight"
    for w in workers:
        assert_clean_log(w)
    print(
        f"{report.executions} executions for {total} steps, {report.duplicates} duplicates "
        f"{report.per_kill}, oldest unrecorded result at each kill "
        f"{[round(e * 1000) for e in report.exposure]} ms; "
        f"in flight at the kills: {[len(k.in_flight) for k in kills]}"
    )
