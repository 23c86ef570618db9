"""Crashes injected exactly at the commit boundaries, judged by the oracle.

``tests/integration/test_fault_injection.py`` kills a worker at an exact point with
``STALWART_FAULTS`` (``src/stalwart/faults.py``); this is the same experiment on the
chaos worker app, with the oracle log as the witness and one row in the chaos table. A
worker running one ``ch_steps`` workflow one step at a time dies (``os._exit``) at the
``nth`` hit of a point; a second worker finishes the workflow:

* ``activity.after_result``: an activity returned, its result is not committed: that
  step runs exactly twice;
* ``commit.before``: the write recording a step's result (and scheduling the next) is
  about to commit: that step runs exactly twice;
* ``commit.after``: the write committed, nobody was told: nothing runs twice.

Checked for each: the workflow completed with the right result, exactly the expected
step ran twice (the others once), the oracle (one result per step, the repeat explained
by the crash, in a new incarnation and lease epoch). The recovery time is the crash ->
completed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stalwart import Engine
from tests.chaos import oracle, report
from tests.chaos import scenarios_app as app

from .support import AppWorker, Kill, sqlite_url

STEPS = 6

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def plans() -> list[tuple[str, int | None]]:
    """(fault plan, the command number that must run twice or None).

    With one step at a time, the worker's n-th write records step n-2's result and
    schedules step n-1 (its first write schedules step 0), and the n-th activity result
    is step n-1's.
    """
    short = [
        ("activity.after_result:exit:3", 2),
        ("commit.before:exit:3", 1),
        ("commit.after:exit:3", None),
    ]
    if not report.long_runs():
        return short
    return [
        *short,
        ("activity.after_result:exit:1", 0),
        ("activity.after_result:exit:6", 5),
        ("commit.before:exit:2", 0),
        ("commit.before:exit:6", 4),
        ("commit.after:exit:2", None),
        ("commit.after:exit:6", None),
    ]


def points() -> str:
    """The plans, compactly: ``point@hits; ...``."""
    hits: dict[str, list[str]] = {}
    for plan, _ in plans():
        point, _, nth = plan.split(":")
        hits.setdefault(point, []).append(nth)
    return "; ".join(f"{point}@{','.join(n)}" for point, n in hits.items())


async def crash_once(
    tmp_path: Path, plan: str
) -> tuple[list[oracle.Entry], dict[str, oracle.Timeline], Kill, int, float]:
    """Run one workflow through a crash at ``plan``; the log, timelines, the crash, the
    result and the recovery time."""
    log = tmp_path / "oracle.db"
    oracle.init(log)  # creates tmp_path
    url = sqlite_url(tmp_path / "store.db")
    doomed = AppWorker(
        url,
        log,
        tmp_path / "doomed.log",
        name="doomed",
        concurrency=1,
        env={"STALWART_FAULTS": plan},
    )
    healthy: AppWorker | None = None
    try:
        async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
            await doomed.wait_ready(client)
            handle = await app.ch_steps.start(client, 7, STEPS, id="exact")
            deadline = time.monotonic() + 30
            while doomed.alive():
                assert time.monotonic() < deadline, "the injected crash did not happen"
                await asyncio.sleep(0.005)
            dead_at = time.time()
            assert doomed.proc.returncode == 137, doomed.log_text()
            ran = [e for e in oracle.read(log) if e.pid == doomed.pid]
            # It died after everything it logged and before we saw it gone.
            last = max((e.finished_at or e.started_at for e in ran), default=dead_at)
            crash = Kill(doomed.pid, dead_at, signalled_at=last, worker_id=doomed.worker_id)
            healthy = AppWorker(url, log, tmp_path / "healthy.log", name="healthy", concurrency=1)
            result = await handle.result(timeout=60)
            recovery = time.time() - dead_at
            final = await oracle.load_timelines(client)
            assert await healthy.terminate() == 0
    finally:
        doomed.cleanup()
        if healthy is not None:
            healthy.cleanup()
    return oracle.read(log), final, crash, result, recovery


async def test_crashes_at_commit_boundaries_repeat_exactly_the_unrecorded_step(
    tmp_path: Path,
) -> None:
    verdict = oracle.Verdict()
    recoveries: list[float] = []
    repeats = 0
    for n, (plan, twice) in enumerate(plans()):
        entries, final, crash, result, recovery = await crash_once(tmp_path / f"run-{n}", plan)
        recoveries.append(recovery)
        found = oracle.check_oracle(entries, final, [crash])
        verdict.found += [(f"{plan}: {what}", k, ex) for what, k, ex in found.found]
        repeats += found.repeats
        runs = {cmd: sum(e.cmd == cmd for e in entries) for cmd in range(STEPS)}
        want = {cmd: 2 if cmd == twice else 1 for cmd in range(STEPS)}
        if runs != want:
            verdict.fail(f"{plan}: executions per step {runs}, expected {want}")
        if result != sum(app.step_value(7, s) for s in range(STEPS)):
            verdict.fail(f"{plan}: wrong result {result}")
    report.record(
        "g. crash at commit boundaries (STALWART_FAULTS)",
        "sqlite",
        runs=len(plans()),
        violations=verdict.count,
        recovery_seconds=recoveries,
        detail=f"{points()}: {repeats} steps ran twice, exactly the unrecorded ones",
    )
    assert not verdict.found, verdict.text()
