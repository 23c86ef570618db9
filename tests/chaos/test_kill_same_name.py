"""A worker killed and restarted at once under the same name recovers its predecessor's work.

One worker process, always named ``solo`` (``WorkerOptions(name="solo")``), runs a stream
of ``ch_steps`` workflows; it is SIGKILLed at random moments and restarted at once with
the same name. A worker's identity is its incarnation id (``solo-<random>``), not its
name: the successor must treat the predecessor as a dead worker and take its instances
over with a new lease epoch. Half of the restarts keep the host id (the successor sees at
once that the predecessor's pid is gone), half take a new one (the predecessor's lease
must expire first).

Checked: every workflow completed with the right result; every instance the killed
incarnation owned was recovered within two lease lengths (the recovery time is kill ->
no active instance owned by the dead incarnation), and every execution of it after the
kill ran in a newer incarnation under a higher lease epoch; the oracle (one result per
step, repeats only of steps in flight at a kill, never two live executions at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from stalwart import Engine
from stalwart.store.base import ListFilter
from tests.chaos import oracle, report
from tests.chaos import scenarios_app as app

from .support import AppWorker, Kill, Stream, env_seed, sqlite_url

LEASE = 2.0
STEPS = 6
STEP_SECONDS = 0.03
START_EVERY = 0.05

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]


def n_kills() -> int:
    """How many times ``solo`` is killed."""
    return 12 if report.long_runs() else 4


async def test_a_successor_with_the_same_name_recovers_its_predecessors_work(
    tmp_path: Path,
) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    url, log = sqlite_url(tmp_path / "store.db"), tmp_path / "oracle.db"
    oracle.init(log)
    workers: list[AppWorker] = []
    kills: list[Kill] = []
    owned_at_kill: list[dict[str, int]] = []
    """Per kill: the instances the victim owned just before it, with its lease epoch."""
    paths: list[str] = []
    recoveries: list[float] = []
    verdict = oracle.Verdict()

    def spawn(host_id: str) -> AppWorker:
        worker = AppWorker(
            url,
            log,
            tmp_path / f"solo-{len(workers)}.log",
            name="solo",
            host_id=host_id,
            lease=LEASE,
            step_seconds=STEP_SECONDS,
            # Poison detection is test_kill_poison's subject: here only recovery counts.
            max_recoveries=1_000,
        )
        workers.append(worker)
        return worker

    try:
        async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
            solo = spawn("host-solo-0")
            await solo.wait_ready(client)
            stream = Stream(
                lambda n: app.ch_steps.start(client, n, STEPS, id=f"wf-{n:04d}"), START_EVERY
            )
            stream.begin()

            async def active_owned_by(worker_id: str | None) -> dict[str, int]:
                # The store's rows: they carry the lease epoch, which descriptions do not.
                page = await client.store.list_instances(ListFilter(status="running"), limit=10_000)
                return {r.id: r.epoch for r in page.items if r.owner == worker_id}

            try:
                for n in range(n_kills()):
                    await asyncio.sleep(rng.uniform(0.4, 1.2))

                    async def busy(worker: AppWorker = solo) -> bool:
                        running = oracle.running(log, "ch_step")
                        return any(e.worker_id == worker.worker_id for e in running)

                    deadline = time.monotonic() + 20
                    while not await busy():
                        assert time.monotonic() < deadline, "solo never busy"
                        solo.check_alive()
                        await asyncio.sleep(0.01)
                    owned_at_kill.append(await active_owned_by(solo.worker_id))
                    kill = await solo.sigkill(client)
                    kills.append(kill)
                    # Same host id: the pid check finds the predecessor dead at once;
                    # another host id: only its lease expiring gives it away.
                    path = "pid" if n % 2 == 0 else "lease"
                    paths.append(path)
                    host = solo.host_id if path == "pid" else f"host-solo-{len(workers)}"
                    solo = spawn(host or "")
                    await solo.wait_ready(client)
                    deadline = time.monotonic() + 2 * LEASE + 30
                    while await active_owned_by(kill.worker_id):
                        assert time.monotonic() < deadline, "the dead incarnation's work stuck"
                        solo.check_alive()
                        await asyncio.sleep(0.02)
                    recoveries.append(time.time() - kill.signalled_at)
            finally:
                await stream.stop()

            async def all_done() -> bool:
                items = (await client.list(limit=10_000)).items
                return all(d.status in oracle.FINISHED_STATUSES for d in items)

            deadline = time.monotonic() + 2 * LEASE + 60
            while not await all_done():
                assert time.monotonic() < deadline, "workflows did not finish"
                solo.check_alive()
                await asyncio.sleep(0.05)
            items = (await client.list(limit=10_000)).items
            results = {d.id: await client.get_handle(d.id).result(timeout=5) for d in items}
            final = await oracle.load_timelines(client)
            if await solo.terminate() != 0:
                verdict.fail("the last worker did not stop cleanly")
    finally:
        for w in workers:
            w.cleanup()

    entries = oracle.read(log)
    found = oracle.check_oracle(entries, final, kills)
    verdict.merge(found)
    verdict.add(
        "wrong results (id, got, expected)",
        [
            (d.id, results[d.id], want)
            for d in items
            if results[d.id]
            != (want := sum(app.step_value(int(d.id[3:]), s) for s in range(STEPS)))
        ],
    )
    verdict.add(
        "recoveries slower than two lease lengths (s)", [r for r in recoveries if r > 2 * LEASE]
    )
    # The successor took the predecessor's instances over as a new incarnation.
    stale = []
    # The epoch comes from the store's row, not from the victim's executions: an instance
    # it had just claimed may have run nothing yet.
    for kill, owned in zip(kills, owned_at_kill, strict=True):
        stale += [
            e
            for e in entries
            if e.instance in owned
            and e.started_at > kill.signalled_at
            and (e.worker_id == kill.worker_id or (e.lease_epoch or 0) <= owned[e.instance])
        ]
    verdict.add("executions after a kill in the dead incarnation or its lease epoch", stale)
    verdict.add("errors in worker logs", [line for w in workers for line in w.log_errors()])
    report.record(
        "c. restart under the same name",
        "sqlite",
        runs=len(items),
        violations=verdict.count,
        recovery_seconds=recoveries,
        detail=(
            f"{len(kills)} kills ({paths.count('pid')} seen by pid, {paths.count('lease')} "
            f"by lease {LEASE:g}s), {sum(len(o) for o in owned_at_kill)} instances owned "
            f"at kills; {found.summary()}"
        ),
    )
    assert not verdict.found, verdict.text()
    assert all(owned_at_kill), "a kill found no instance owned by the worker"
