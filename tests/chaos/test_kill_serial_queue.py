"""A concurrency-1 queue whose only worker is killed mid-task frees its slot after the lease.

``ch_serial`` workflows send their steps to the task queue ``serial``, served with
``Queue("serial", concurrency=1)`` by a single worker process. That worker is SIGKILLed
while it runs a task and a new one is started at once, under another host id (so it
cannot see that its predecessor's pid is gone: only the lease tells). The killed task
holds the queue's only slot until the dead worker's lease expires; then the new worker
runs it again and drains the queue.

Checked: every workflow completed with the right result; no queued execution started
between the kill and the dead worker's lease expiry, and queued executions never
overlapped (one cut short by a kill counts as running until that expiry); the queue was
running again within two lease lengths of the kill (the recovery time is kill -> next
queued execution); the oracle (no task ran twice except the killed ones, one result per
step, never two live executions at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from stalwart import Engine
from tests.chaos import oracle, report
from tests.chaos import scenarios_app as app

from .support import AppWorker, Kill, env_seed, sqlite_url

LEASE = 2.0
TASK_SECONDS = 0.2

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]


def sizes() -> tuple[int, int, int]:
    """(workflows, tasks each, kills)."""
    return (10, 4, 4) if report.long_runs() else (4, 3, 1)


async def test_a_killed_serial_task_frees_the_slot_after_the_lease(tmp_path: Path) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    n_flows, n_tasks, n_kills = sizes()
    url, log = sqlite_url(tmp_path / "store.db"), tmp_path / "oracle.db"
    oracle.init(log)
    workers: list[AppWorker] = []
    kills: list[Kill] = []
    recoveries: list[float] = []
    verdict = oracle.Verdict()

    def spawn() -> AppWorker:
        n = len(workers)
        worker = AppWorker(
            url,
            log,
            tmp_path / f"worker-{n}.log",
            name=f"serial-{n}",
            host_id=f"host-{n}",
            lease=LEASE,
            serial_concurrency=1,
        )
        workers.append(worker)
        return worker

    try:
        async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
            worker = spawn()
            await worker.wait_ready(client)
            for n in range(n_flows):
                await app.ch_serial.start(client, n, n_tasks, TASK_SECONDS, id=f"flow-{n}")
            for _ in range(n_kills):
                # Kill it mid-task, after a random part of the task.
                deadline = time.monotonic() + 30
                while not [e for e in oracle.running(log) if e.pid == worker.pid]:
                    assert time.monotonic() < deadline, "the worker ran no task"
                    worker.check_alive()
                    await asyncio.sleep(0.01)
                await asyncio.sleep(rng.uniform(0.0, TASK_SECONDS / 2))
                kill = await worker.sigkill(client)
                kills.append(kill)
                worker = spawn()
                await worker.wait_ready(client)
                deadline = time.monotonic() + 2 * LEASE + 30
                while True:
                    after = [e for e in oracle.read(log) if e.started_at > kill.signalled_at]
                    if after:
                        recoveries.append(min(e.started_at for e in after) - kill.signalled_at)
                        break
                    assert time.monotonic() < deadline, "the queue never ran again"
                    worker.check_alive()
                    await asyncio.sleep(0.01)
            handles = [client.get_handle(f"flow-{n}") for n in range(n_flows)]
            results = [
                await h.result(timeout=n_flows * n_tasks * TASK_SECONDS + 60) for h in handles
            ]
            final = await oracle.load_timelines(client)
            if await worker.terminate() != 0:
                verdict.fail("the last worker did not stop cleanly")
    finally:
        for w in workers:
            w.cleanup()

    entries = oracle.read(log)
    found = oracle.check_oracle(entries, final, kills)
    verdict.merge(found)
    verdict.add(
        "wrong results (flow, got, expected)",
        [
            (n, got, want)
            for n, got in enumerate(results)
            if got != (want := sum(app.step_value(n, t) for t in range(n_tasks)))
        ],
    )
    # The slot: held by a killed task until the dead worker's lease expired.
    early = [
        (k.pid, e)
        for k in kills
        for e in entries
        if k.signalled_at < e.started_at < k.lease_expires_at
    ]
    verdict.add("queued executions started while a dead worker's lease held the slot", early)
    expiry = {k.pid: k.lease_expires_at for k in kills}
    spans = sorted(
        (e.started_at, e.finished_at if e.finished_at is not None else expiry.get(e.pid, 0.0), e)
        for e in entries
    )
    overlaps: list[tuple[oracle.Entry | None, oracle.Entry]] = []
    busy_until: float = 0.0
    holder: oracle.Entry | None = None
    for start, end, e in spans:
        if start < busy_until:
            overlaps.append((holder, e))
        if end > busy_until:
            busy_until, holder = end, e
    verdict.add("queued executions running at once on a concurrency-1 queue", overlaps)
    verdict.add(
        "recoveries slower than two lease lengths (s)", [r for r in recoveries if r > 2 * LEASE]
    )
    verdict.add("errors in worker logs", [line for w in workers for line in w.log_errors()])
    report.record(
        "f. concurrency-1 queue, worker killed mid-task",
        "sqlite",
        runs=n_flows * n_tasks,
        violations=verdict.count,
        recovery_seconds=recoveries,
        detail=(
            f"{n_kills} kills of the queue's only worker mid-task, lease {LEASE:g}s (seen by "
            f"lease only); {found.summary()}"
        ),
    )
    assert not verdict.found, verdict.text()
    assert all(k.lease_expires_at > k.signalled_at for k in kills), "a kill left no live lease"
    assert found.cut_short >= n_kills, "a kill did not cut a task short"
