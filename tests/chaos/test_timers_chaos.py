"""10,000 durable timers through worker kills and a paused database: each fires once, never early.

10,000 ``og_sleeper`` workflows (1,000 in ``make test``) sleep a random 0-30 s (0-5 s),
then run ``og_wake``, which logs the store's clock in the audit log (SQLite: this host's
clock, the SQLite store's clock; PostgreSQL: the server's ``clock_timestamp()``). While
the timers are due, on a schedule drawn from the seed:

* the worker process (the timer side) is SIGKILLed and restarted (twice in the long run);
* the database is paused for 5 s: on SQLite another process holds ``BEGIN EXCLUSIVE`` (no
  write commits), on PostgreSQL the test holds ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE``
  on every table of the engine's schema (nothing reads or writes them).

Checks: every workflow completed; each history has exactly one ``TimerStarted`` and
exactly one ``TimerFired`` of that timer, recorded no earlier than its ``fire_at``;
``og_wake`` read a store clock no earlier than ``fire_at`` at every execution (never
early by the database's clock); ``og_wake`` ran once per workflow, again only if a kill
cut it short before its outcome was recorded (``outage_support.check_calls``); no worker
logged a traceback or "database is locked". Reported as recovery: per fault, how long
until the first timer that fell due during it fired (from the SIGKILL, restart included;
from the end of a pause); the detail adds when the last of them fired and the overall
lateness, which a single worker's firing rate bounds once timers fall due faster than it
fires them (the long run on a small machine).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stalwart import Engine, HistoryEvent
from tests.chaos.report import long_runs, record

from . import outage_oracle
from .outage_app import WAKE_STEP
from .outage_support import (
    AppProcess,
    Kill,
    Verdict,
    all_instances,
    check_calls,
    check_statuses,
    load_histories,
    pause_postgres,
    pause_sqlite,
    retry_store,
    row_on_abort,
    settled,
    store_for,
    wait_until,
)
from .support import env_seed

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(1500)]

PAUSE = 5.0
START_BATCH = 250


@dataclass
class Fault:
    """A disruption: ``kind`` is ``kill`` or ``pause``; the window it lasted."""

    kind: str
    start: float = 0.0
    end: float = 0.0


@dataclass
class TimerRecord:
    """What a history says about the timer of one sleeper."""

    started: int
    fired: int
    fire_at: float
    fired_at: float


def timer_of(history: list[HistoryEvent]) -> TimerRecord:
    """The (single expected) timer of an ``og_sleeper`` history."""
    started = [h for h in history if h.kind == "TimerStarted"]
    fired = [h for h in history if h.kind == "TimerFired"]
    fire_at = started[0].event.to_data()["fire_at"] if started else float("nan")
    return TimerRecord(
        started=len(started),
        fired=len(fired),
        fire_at=float(fire_at),
        fired_at=fired[0].time if fired else float("nan"),
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_timers_fire_once_never_early_through_kills_and_pauses(
    kind: str, tmp_path: Path
) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    n, max_sleep = (10_000, 30.0) if long_runs() else (1_000, 5.0)
    scenario = f"{n} timers (0-{max_sleep:.0f}s) through kills and a paused database"
    with row_on_abort(scenario, kind, n):
        # At least 1 ms: a zero-second sleep is a plain yield, it starts no timer.
        sleeps = [max(0.001, round(rng.uniform(0.0, max_sleep), 3)) for _ in range(n)]
        ids = [f"sleeper-{i:05d}" for i in range(n)]
        # Fault moments, seconds after the first start: kills early and late, one pause.
        if long_runs():
            plan = [("kill", rng.uniform(3, 10)), ("pause", rng.uniform(11, 18))]
            plan.append(("kill", rng.uniform(24, 30)))
        else:
            plan = [("kill", rng.uniform(0.8, 1.5)), ("pause", rng.uniform(2.5, 3.0))]
        oracle = tmp_path / "oracle.db"
        outage_oracle.init(oracle)
        verdict = Verdict()
        workers: list[AppProcess] = []
        kills: list[Kill] = []
        faults: list[Fault] = []

        async with store_for(kind, tmp_path) as (url, clock_dsn, pause_target):

            def spawn() -> AppProcess:
                worker = AppProcess(
                    url=url,
                    oracle=oracle,
                    app="sleeper",
                    log=tmp_path / f"worker-{len(workers)}.log",
                    lease=10.0,
                    poll=0.2,
                    concurrency=16,
                    clock_dsn=clock_dsn,
                )
                workers.append(worker)
                return worker

            def alive() -> None:
                assert workers[-1].alive(), f"worker died:\n{workers[-1].log_text()[-4000:]}"

            starting: asyncio.Task[None] | None = None
            try:
                async with Engine(url, worker=False, workflows=[], activities=[]) as client:
                    await spawn().wait_ready(client)

                    async def start(i: int) -> None:
                        await retry_store(
                            lambda: client.start_by_name("og_sleeper", [i, sleeps[i]], id=ids[i])
                        )

                    async def start_all() -> None:
                        for first in range(0, n, START_BATCH):
                            last = min(first + START_BATCH, n)
                            await asyncio.gather(*(start(i) for i in range(first, last)))

                    t0 = time.time()
                    starting = asyncio.create_task(start_all())
                    for what, at in sorted(plan, key=lambda p: p[1]):
                        await asyncio.sleep(max(0.0, t0 + at - time.time()))
                        alive()
                        if what == "kill":
                            kill = await workers[-1].kill()
                            kills.append(kill)
                            await spawn().wait_ready(client)
                            faults.append(Fault("kill", kill.signalled_at, time.time()))
                        elif kind == "sqlite":
                            faults.append(Fault("pause", *await pause_sqlite(pause_target, PAUSE)))
                        else:
                            faults.append(
                                Fault("pause", *await pause_postgres(pause_target, PAUSE))
                            )
                    await starting
                    starting = None

                    async def all_done() -> bool:
                        return await settled(client, n)

                    await wait_until(
                        all_done, max_sleep + 300, f"{n} sleepers", check=alive, interval=0.5
                    )
                    final = await retry_store(lambda: all_instances(client))
                    verdict.merge(check_statuses(final, ids))
                    histories = await load_histories(client, ids)
                    executions = outage_oracle.read(oracle)
                    for w in workers[-1:]:
                        code = await w.terminate()
                        if code != 0:
                            verdict.add(f"worker {w.pid} exited with {code}")
            finally:
                if starting is not None:
                    starting.cancel()
                for w in workers:
                    w.cleanup()

        verdict.merge(
            check_calls(
                {i: {WAKE_STEP} for i in ids},
                histories,
                executions,
                kills=kills,
                unfinished={i for i in ids if final[i].status != "completed"},
            )
        )
        timers = {i: timer_of(h) for i, h in histories.items()}
        for i, t in timers.items():
            # An instance that did not complete (counted above) may not have fired yet.
            want = (1, 1) if final[i].status == "completed" else (1, min(t.fired, 1))
            if (t.started, t.fired) != want:
                verdict.add(f"{i}: {t.started} TimerStarted, {t.fired} TimerFired (want 1, 1)")
            elif t.fired and not t.fired_at >= t.fire_at:
                verdict.add(f"{i}: timer fired {t.fire_at - t.fired_at:.3f}s early (history)")
        early = [
            (ex.instance, round(timers[ex.instance].fire_at - (ex.clock or 0.0), 3))
            for ex in executions
            if ex.instance in timers and not (ex.clock or 0.0) >= timers[ex.instance].fire_at
        ]
        if early:
            verdict.add(f"og_wake ran before the timer was due by the store clock: {early[:10]}")
        for w in workers:
            bad = w.log_lines("Traceback", "database is locked")
            if bad:
                verdict.add(f"worker {w.pid} logged {len(bad)} errors: {bad[:3]}")

        # Lateness as the workflows felt it: from the due time to the first og_wake start
        # (activities start only once the write recording TimerFired is durable).
        woke: dict[str, float] = {}
        for ex in executions:
            woke[ex.instance] = min(ex.started_at, woke.get(ex.instance, ex.started_at))
        due = {i: t.fire_at for i, t in timers.items() if i in woke}
        lateness = sorted(woke[i] - at for i, at in due.items()) or [float("nan")]
        # Recovery per fault: until the first timer that fell due during it fired (from
        # the SIGKILL for a kill, the restart included; from the end for a pause), and
        # until the last one did (bounded by the worker's firing rate: a backlog).
        first: list[float] = []
        last: list[float] = []
        for f in faults:
            overdue = [woke[i] for i, at in due.items() if f.start <= at <= f.end]
            origin = f.start if f.kind == "kill" else f.end
            first.append(max(0.0, min(overdue, default=origin) - origin))
            last.append(max(0.0, max(overdue, default=origin) - origin))
        span = max(woke.values(), default=0.0) - min(woke.values(), default=0.0)
        detail = (
            f"{len(kills)} kills, {sum(f.kind == 'pause' for f in faults)} x {PAUSE:.0f}s pause; "
            f"timers firing again after "
            + ", ".join(
                f"{f.kind} {a:.2f}s (all overdue {b:.1f}s)"
                for f, a, b in zip(faults, first, last, strict=True)
            )
            + f"; lateness median {statistics.median(lateness):.2f}s, "
            f"p99 {lateness[int(0.99 * (len(lateness) - 1))]:.2f}s, max {lateness[-1]:.2f}s "
            f"at {len(woke) / max(span, 1e-9):.0f} firings/s; "
            f"{verdict.reruns} og_wake re-runs after kills"
        )
        print(detail)
    record(
        scenario,
        kind,
        runs=n,
        violations=verdict.violations,
        recovery_seconds=first,
        detail=detail,
    )
    assert verdict.violations == 0, verdict.summary()
