"""A poison workflow that kills its worker on every attempt is parked; the rest flows.

Three worker processes serve a stream of ``ch_steps`` workflows and one ``ch_poison``
instance whose second step ends its process with ``os._exit`` while the marker ``poison``
is set. Two *bystanders* (ordinary ``ch_steps`` workflows) are started with it, before
any worker runs, so the first worker claims all three: they share the poison's worker at
its first death, as any workflow can in production. Every dead worker is restarted at
once (the others see at once that its pid is gone). After ``max_recoveries`` takeovers
from dead workers the instance must be parked (``suspended`` with error
``PoisonWorkflow``) instead of being run again, so the fleet stops dying; everything else
keeps completing -- the bystanders included: they are not poison. Then the operator clears
the marker and ``resume()``\\s it, and it completes.

Checked: exactly ``max_recoveries + 1`` workers died, all running the poison step; it was
parked with ``PoisonWorkflow``; no other workflow was parked and every one completed with
the right result; after the resume the poison workflow completed with the right result; the
poison step ran ``max_recoveries + 2`` times, each in a new incarnation under a higher
lease epoch, and its result is recorded once; the oracle for everything (repeats only of
steps in flight at a death). The recovery time is resume -> completed.

A second test checks the other side of poison detection: a long-lived workflow whose
worker is killed ``max_recoveries + 1`` times for reasons of its own (the workflow records
a step between every two kills) is not poison and must complete.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stalwart import Engine
from tests.chaos import oracle, report
from tests.chaos import scenarios_app as app

from .support import AppWorker, Fleet, Kill, Stream, sqlite_url

WORKERS = 3
STEPS = 3
START_EVERY = 0.05
POISON = "poison"
BYSTANDERS = 2
"""Workflows that share the poison's worker from the start (and so every death)."""

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def max_recoveries() -> int:
    """Takeovers from dead workers before the instance is parked."""
    return 5 if report.long_runs() else 2


def number(instance: str) -> int:
    """The ``n`` argument of a ``ch_steps`` instance, from its id."""
    kind, n = instance.split("-")
    return 1000 + int(n) if kind == "bystander" else int(n)


async def test_a_poison_workflow_is_parked_and_can_be_resumed(tmp_path: Path) -> None:
    url, log = sqlite_url(tmp_path / "store.db"), tmp_path / "oracle.db"
    oracle.init(log)
    oracle.set_marker(log, "poison")
    limit = max_recoveries()
    verdict = oracle.Verdict()

    def make(slot: int, incarnation: int) -> AppWorker:
        return AppWorker(
            url,
            log,
            tmp_path / f"worker-{incarnation}.log",
            name=f"w{slot}",
            max_recoveries=limit,
            step_seconds=0.02,
        )

    fleet = Fleet(make, WORKERS)
    try:
        async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
            # The poison and its bystanders exist before the workers start: the first
            # worker to claim takes them all, so they share its fate from the first death.
            poison = await app.ch_poison.start(client, 0, id=POISON)
            for n in range(BYSTANDERS):
                await app.ch_steps.start(client, 1000 + n, STEPS, id=f"bystander-{n}")
            for slot in range(WORKERS):
                fleet.spawn(slot)
            began = time.monotonic()
            stream = Stream(
                lambda n: app.ch_steps.start(client, n, STEPS, id=f"wf-{n:04d}"), START_EVERY
            )
            stream.begin()
            try:
                while (await poison.describe()).status != "suspended":
                    assert time.monotonic() < began + 60, "the poison workflow was not parked"
                    for slot, worker in enumerate(fleet.current):
                        if worker.alive():
                            continue
                        # It ended itself: it died between its last log row and now.
                        dead_at = time.time()
                        last = [e for e in oracle.read(log) if e.pid == worker.pid]
                        exits = [e.finished_at or 0.0 for e in last if e.outcome == "exit"]
                        fleet.kills.append(
                            Kill(
                                worker.pid,
                                dead_at,
                                signalled_at=max(exits, default=dead_at),
                                worker_id=worker.worker_id,
                            )
                        )
                        if worker.proc.returncode != 137 or not exits:
                            verdict.fail(f"worker {worker.pid} died otherwise: {worker.log_text()}")
                        fleet.spawn(slot)
                    await asyncio.sleep(0.01)
                parked_after = time.monotonic() - began
                parked = await poison.describe()
                # Everything else keeps flowing while it is parked.
                await asyncio.sleep(1.0)
                await fleet.wait_ready(client)
            finally:
                await stream.stop()

            async def others_settled() -> bool:
                items = (await client.list(limit=10_000)).items
                return all(
                    d.status in oracle.FINISHED_STATUSES or d.status == "suspended"
                    for d in items
                    if d.id != POISON
                )

            deadline = time.monotonic() + 60
            while not await others_settled():
                assert time.monotonic() < deadline, "the other workflows did not finish"
                fleet.check_alive()
                await asyncio.sleep(0.05)
            items = (await client.list(limit=10_000)).items
            also_parked = [
                (d.id, (d.error or {}).get("type"))
                for d in items
                if d.id != POISON and d.status == "suspended"
            ]
            # The operator fixes the cause and resumes it (and whatever was parked with it).
            oracle.clear_marker(log, "poison")
            resumed_at = time.time()
            resumed = await poison.resume()
            for other, _ in also_parked:
                await client.get_handle(other).resume()
            value = await poison.result(timeout=30)
            recovery = time.time() - resumed_at
            for other, _ in also_parked:
                await client.get_handle(other).result(timeout=30)
            items = (await client.list(limit=10_000)).items
            results = {
                d.id: await client.get_handle(d.id).result(timeout=5)
                for d in items
                if d.status == "completed"
            }
            final = await oracle.load_timelines(client)
            exits_ok = await fleet.terminate(client)
    finally:
        fleet.cleanup()

    entries = oracle.read(log)
    found = oracle.check_oracle(entries, final, fleet.kills)
    verdict.merge(found)
    deaths = len(fleet.kills)
    if deaths != limit + 1:
        verdict.fail(f"{deaths} workers died, expected max_recoveries + 1 = {limit + 1}")
    error = parked.error or {}
    if error.get("type") != "PoisonWorkflow":
        verdict.fail(f"the poison workflow was parked with {error}, not PoisonWorkflow")
    if not resumed or value != app.step_value(0, 0) + app.step_value(0, 1):
        verdict.fail(f"resume() -> {resumed}, result {value}")
    # Instances that shared a worker with the poison are not poison themselves.
    verdict.add("workflows parked along with the poison (id, error type)", also_parked)
    verdict.add(
        "other workflows not completed (id, status)",
        [(d.id, d.status) for d in items if d.id != POISON and d.status != "completed"],
    )
    verdict.add(
        "wrong results (id, got)",
        [
            (i, got)
            for i, got in results.items()
            if i != POISON and got != sum(app.step_value(number(i), s) for s in range(STEPS))
        ],
    )
    dies = sorted(
        (e for e in entries if e.instance == POISON and e.activity == "ch_die"),
        key=lambda e: e.started_at,
    )
    outcomes = [e.outcome for e in dies]
    if outcomes != ["exit"] * (limit + 1) + ["returned"]:
        verdict.fail(f"the poison step's executions ended {outcomes}")
    epochs = [e.lease_epoch or 0 for e in dies]
    if len({e.worker_id for e in dies}) != len(dies) or epochs != sorted(set(epochs)):
        verdict.fail(f"poison runs not each in a new incarnation and epoch: {dies}")
    verdict.add(
        "errors in worker logs",
        fleet.log_errors(expected=("suspending poison workflow",)),
    )
    verdict.add("workers that did not stop cleanly (exit status)", [c for c in exits_ok if c])
    report.record(
        "d. poison workflow kills its worker",
        "sqlite",
        runs=len(items),
        violations=verdict.count,
        recovery_seconds=[recovery],
        detail=(
            f"max_recoveries {limit}: {deaths} workers died, parked after {parked_after:.1f}s, "
            f"{len(also_parked)} other workflows parked with it ({BYSTANDERS} started with "
            "it as bystanders), "
            f"{len(items) - 1} others completed, resumed and completed; "
            f"{found.summary()}"
        ),
    )
    assert not verdict.found, verdict.text()


async def test_a_workflow_that_progresses_between_crashes_is_not_poison(tmp_path: Path) -> None:
    """Crashes of its worker *unrelated* to a workflow do not make it poison.

    One long-lived ``ch_steps`` workflow (slow steps) and one worker process, SIGKILLed
    ``max_recoveries + 1`` times and restarted at once, each time only after the workflow
    recorded another step since the previous kill: whatever kills the workers, it is not
    this workflow, which makes progress in between. It must complete, not be parked as
    ``PoisonWorkflow``; and the oracle holds (repeats only of the steps in flight).
    """
    url, log = sqlite_url(tmp_path / "store.db"), tmp_path / "oracle.db"
    oracle.init(log)
    limit = max_recoveries()
    steps = limit + 4
    verdict = oracle.Verdict()

    def make(slot: int, incarnation: int) -> AppWorker:
        return AppWorker(
            url,
            log,
            tmp_path / f"worker-{incarnation}.log",
            name="w",
            max_recoveries=limit,
            step_seconds=0.3,
        )

    fleet = Fleet(make, 1)
    try:
        async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
            await fleet.start(client)
            handle = await app.ch_steps.start(client, 7, steps, id="long-lived")

            async def recorded() -> int:
                return sum(e.kind == "ActivityCompleted" for e in await handle.history())

            progress = 0
            for _ in range(limit + 1):
                deadline = time.monotonic() + 30
                # Another step recorded since the last kill, and the next one running.
                while await recorded() <= progress or not [
                    e for e in oracle.running(log) if e.pid == fleet.current[0].pid
                ]:
                    assert time.monotonic() < deadline, "the workflow made no progress"
                    fleet.check_alive()
                    await asyncio.sleep(0.01)
                progress = await recorded()
                await fleet.kill(0, client)
                await fleet.wait_ready(client)
            deadline = time.monotonic() + 60
            while (status := await handle.status()) not in ("completed", "suspended"):
                assert time.monotonic() < deadline, f"the workflow is still {status}"
                fleet.check_alive()
                await asyncio.sleep(0.05)
            desc = await handle.describe()
            if status == "suspended":
                verdict.fail(
                    f"parked as {(desc.error or {}).get('type')} after {limit + 1} unrelated "
                    f"crashes, although it recorded steps between them: {desc.error}"
                )
                await handle.resume()  # finish it, to check the rest
            value = await handle.result(timeout=60)
            final = await oracle.load_timelines(client)
            exits = await fleet.terminate(client)
    finally:
        fleet.cleanup()

    found = oracle.check_oracle(oracle.read(log), final, fleet.kills)
    verdict.merge(found)
    if value != sum(app.step_value(7, s) for s in range(steps)):
        verdict.fail(f"wrong result {value}")
    verdict.add("errors in worker logs", fleet.log_errors(expected=("suspending poison workflow",)))
    verdict.add("workers that did not stop cleanly (exit status)", [c for c in exits if c])
    report.record(
        "d. crashes unrelated to a progressing workflow",
        "sqlite",
        runs=1,
        violations=verdict.count,
        detail=(
            f"max_recoveries {limit}, {len(fleet.kills)} kills of its worker, each after it "
            f"recorded another step; {found.summary()}"
        ),
    )
    assert not verdict.found, verdict.text()
