"""Acceptance test of the PostgreSQL store: three worker processes share one database.

A fresh database is created for the test (and dropped afterwards). Three worker
processes (``pg_app.py``) serve every workflow and the ``payments`` task queue with a
global limit ``Queue("payments", concurrency=3)``. 500 ``pg_order`` workflows each run
two inline steps, one step on the queue (declared ``@activity(queue=...)`` for even
instances, ``ctx.activity(..., queue=...)`` per call for odd ones) and one more inline
step. During the run, in an order and at moments drawn from the seed:

* one worker process is SIGKILLed twice (restarted each time; all workers are on this
  host, so the others see at once that its pid is gone and take its work over);
* every PostgreSQL connection of the store's database is terminated once
  (``pg_terminate_backend``), the workers' pools, lease and LISTEN connections included.

Afterwards: every workflow completed with the right result; every step was recorded
exactly once and only steps in flight at a kill (or whose recording write was cut by the
connection kill) ran again (``harness.check_invariants``); the queue's global concurrency
limit was never exceeded (the maximum overlap of queued executions, where an execution
cut short by a kill counts as running until the process died); every queue task ended
``done`` once, last run by the worker recorded as its owner; no worker logged an error.

``STALWART_TEST_SEED=<n>`` replays the order and the moments of the faults.
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stalwart import Engine, HistoryEvent, StoreError
from tests.postgres_support import database_dsn, store_url, temporary_database, terminate_backends

from . import pg_app
from .harness import (
    Disconnect,
    Execution,
    Kill,
    Pair,
    WorkerProcess,
    assert_clean_log,
    check_invariants,
    count_status,
    env_seed,
    kill,
    steps_of,
    wait_until,
)

N_INSTANCES = 500
QUEUE_CONCURRENCY = 3
LEASE = 3.0
POLL = 0.2
CONCURRENCY = 8
"""Inline activity attempts (and threads) per worker."""
PAY_SECONDS = 0.08
"""Duration of a queued execution: 500 of them, 3 at a time, take >= 13 s."""
START_BATCH = 10
START_INTERVAL = 0.25
"""The workflows are started in batches over ~15 s: every fault, and the restarted
worker, meet new workflows as well as a backlog of queued steps."""
FAULT_SLOTS = (0.15, 0.42, 0.69)
"""Each fault happens once this fraction of the workflows (plus up to 0.12) was started."""
WORKER_COUNT = 3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


# ----------------------------------------------------------------------------- processes
class PgWorker(WorkerProcess):
    """``pg_app.py`` as a separate OS process, on the PostgreSQL store."""

    def __init__(self, url: str, side: Path, log: Path, *, name: str) -> None:
        args = [
            sys.executable,
            str(Path(pg_app.__file__).resolve()),
            "--url",
            url,
            "--side",
            str(side),
            "--name",
            name,
            "--lease",
            str(LEASE),
            "--poll",
            str(POLL),
            "--concurrency",
            str(CONCURRENCY),
            "--queue-concurrency",
            str(QUEUE_CONCURRENCY),
            "--pay-seconds",
            str(PAY_SECONDS),
        ]
        self.log = log
        self.concurrency = CONCURRENCY
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.proc.pid
        self.worker_id: str | None = None


# ----------------------------------------------------------------------------- side table
@dataclass(frozen=True)
class Run:
    """One row of ``pg_app``'s side table: an execution, maybe cut short by a kill."""

    id: int
    instance: str
    step: int
    pid: int
    attempt: int
    task: str | None
    started_at: float
    finished_at: float | None

    @property
    def pair(self) -> Pair:
        """The durable call this was an execution of."""
        return (self.instance, self.step)

    def execution(self) -> Execution:
        """As the harness's invariants take it (finished executions only)."""
        assert self.finished_at is not None
        return Execution(
            self.instance, self.step, self.pid, self.attempt, self.started_at, self.finished_at
        )


def read_runs(path: Path) -> list[Run]:
    """Every execution recorded so far, in insertion order."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT id, instance, step, pid, attempt, task, started_at, finished_at "
            "FROM runs ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Run(*row) for row in rows]


def running_queued(path: Path) -> dict[int, int]:
    """Queued executions started and not (yet) finished, per pid."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT pid, COUNT(*) FROM runs WHERE task IS NOT NULL AND finished_at IS NULL "
            "GROUP BY pid"
        ).fetchall()
    finally:
        conn.close()
    return {int(pid): int(n) for pid, n in rows}


# ----------------------------------------------------------------------------- analysis
def expected_sum(instance_no: int) -> int:
    """The result of ``pg_order(instance_no, _)``."""
    return sum(pg_app.step_value(instance_no, s) for s in range(pg_app.STEPS))


def instance_id(i: int) -> str:
    """The id of the i-th workflow."""
    return f"order-{i:03d}"


def max_overlap(intervals: list[tuple[float, float]]) -> tuple[int, float]:
    """The most intervals open at one instant, and the first instant it was reached.

    An interval ending at the instant another starts does not overlap it.
    """
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best, at, open_ = 0, 0.0, 0
    for t, delta in points:  # ends (-1) sort before starts (+1) at the same instant
        open_ += delta
        if open_ > best:
            best, at = open_, t
    return best, at


def queue_intervals(runs: list[Run], death: dict[int, float]) -> list[tuple[float, float]]:
    """The span of every queued execution; one a kill cut short ends when its process died
    (``death``: by pid, the latest time the process can have died)."""
    spans = []
    for run in runs:
        if run.task is None:
            continue
        end = run.finished_at if run.finished_at is not None else death[run.pid]
        spans.append((run.started_at, end))
    return spans


_GONE = re.compile(r"^(\d+\.\d+) \d+ INFO \S+: worker \S+ \(pid (\d+)\) is gone; taking over")


def detection_times(workers: Sequence[WorkerProcess]) -> dict[int, float]:
    """Per dead pid, when a worker first logged that it saw the process gone."""
    seen: dict[int, float] = {}
    for w in workers:
        for line in w.log_text().splitlines():
            m = _GONE.match(line)
            if m:
                pid, at = int(m.group(2)), float(m.group(1))
                seen[pid] = min(at, seen.get(pid, at))
    return seen


async def taken_over(engine: Engine, dead: str, killed_at: float, errors: list[str]) -> float:
    """Seconds from a kill until no running workflow is owned by the dead worker any more."""
    while True:
        try:
            items = (await engine.list(status="running", limit=10_000)).items
        except StoreError as exc:  # the client's connections are terminated too
            errors.append(str(exc))
            items = []
        else:
            if not any(d.owner == dead for d in items):
                return time.time() - killed_at
        await asyncio.sleep(0.02)


async def load_histories(engine: Engine) -> dict[str, list[HistoryEvent]]:
    """Every instance's history, by instance id."""
    items = (await engine.list(limit=10_000)).items
    loaded = await asyncio.gather(*(engine.get_handle(d.id).history() for d in items))
    return {d.id: h for d, h in zip(items, loaded, strict=True)}


async def read_tasks(db: str) -> list[tuple[Any, ...]]:
    """Every queue task: id, queue, instance, attempt, status, owner, started, finished."""
    async with await psycopg.AsyncConnection.connect(database_dsn(db), autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, queue, instance_id, attempt, status, owner, started_at, finished_at "
            "FROM stalwart.tasks ORDER BY id"
        )
        return await cur.fetchall()


# ----------------------------------------------------------------------------- the test
async def test_three_workers_share_one_postgres_database_through_kills_and_disconnects(
    tmp_path: Path,
) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    faults = ["kill", "kill", "disconnect"]
    rng.shuffle(faults)
    thresholds = [int((slot + rng.uniform(0.0, 0.12)) * N_INSTANCES) for slot in FAULT_SLOTS]
    side = tmp_path / "side.db"
    pg_app.init_side(str(side))
    began = time.monotonic()

    with temporary_database() as db:
        url = store_url(db, schema="stalwart")
        workers: list[PgWorker] = []
        kills: list[Kill] = []
        disconnects: list[Disconnect] = []
        owned_at_kill: list[set[str]] = []
        takeovers: list[asyncio.Task[float]] = []
        starting: asyncio.Task[None] | None = None
        client_errors: list[str] = []
        started = [0]
        victim_slot = rng.randrange(WORKER_COUNT)
        current: list[PgWorker] = []

        def spawn(slot: int) -> PgWorker:
            worker = PgWorker(
                url, side, tmp_path / f"worker-{len(workers)}.log", name=f"w{slot}-{len(workers)}"
            )
            workers.append(worker)
            return worker

        def tolerant(condition: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
            # The client's connections are terminated too: a failed read is "not yet".
            async def polled() -> bool:
                try:
                    return await condition()
                except StoreError as exc:
                    client_errors.append(str(exc))
                    return False

            return polled

        def all_alive() -> None:
            for w in current:
                assert w.alive(), f"worker {w.pid} died on its own:\n{w.log_text()[-4000:]}"

        try:
            async with Engine(url, worker=False, workflows=[], activities=[]) as engine:
                current = [spawn(slot) for slot in range(WORKER_COUNT)]
                for w in current:
                    await w.wait_ready(engine)

                async def start(i: int) -> None:
                    # A start cut by the disconnect may or may not have landed: start again
                    # with the same id and input, which is idempotent.
                    for _ in range(20):
                        try:
                            await engine.start_by_name("pg_order", [i, i % 2], id=instance_id(i))
                            started[0] += 1
                            return
                        except StoreError as exc:
                            client_errors.append(str(exc))
                            await asyncio.sleep(0.1)
                    raise AssertionError(f"could not start {instance_id(i)}: {client_errors[-1]}")

                async def start_all() -> None:
                    for first in range(0, N_INSTANCES, START_BATCH):
                        last = min(first + START_BATCH, N_INSTANCES)
                        await asyncio.gather(*(start(i) for i in range(first, last)))
                        await asyncio.sleep(START_INTERVAL)

                starting = asyncio.create_task(start_all())

                for fault, threshold in zip(faults, thresholds, strict=True):

                    async def reached(threshold: int = threshold) -> bool:
                        return started[0] >= threshold

                    await wait_until(tolerant(reached), 60, f"{threshold} starts", check=all_alive)
                    if fault == "disconnect":
                        at = time.time()
                        terminated = await asyncio.to_thread(terminate_backends, db)
                        disconnects.append(Disconnect(at=at, terminated=terminated))
                        continue
                    chosen = [victim_slot]
                    snapshot: list[set[str]] = []
                    jitter = rng.uniform(0.0, 0.03)

                    async def victim_busy(
                        preferred: int = victim_slot,
                        chosen: list[int] = chosen,
                        snapshot: list[set[str]] = snapshot,
                        jitter: float = jitter,
                    ) -> bool:
                        # The victim runs a queued step and owns running workflows: the
                        # drawn slot's worker if it is busy, else any busy one (after a
                        # disconnect a worker whose lease lapsed may have lost its work).
                        running = await asyncio.to_thread(running_queued, side)
                        items = (await engine.list(status="running", limit=10_000)).items
                        owners = {d.owner for d in items}
                        slots = [preferred] + [s for s in range(WORKER_COUNT) if s != preferred]
                        busy = next(
                            (
                                s
                                for s in slots
                                if running.get(current[s].pid) and current[s].worker_id in owners
                            ),
                            None,
                        )
                        if busy is None:
                            return False
                        # The workflows it owned may all finish during the jitter: the
                        # snapshot taken just before the kill must still show some.
                        await asyncio.sleep(jitter)
                        items = (await engine.list(status="running", limit=10_000)).items
                        mine = {d.id for d in items if d.owner == current[busy].worker_id}
                        if not mine:
                            return False
                        chosen[0] = busy
                        snapshot[:] = [mine]
                        return True

                    await wait_until(
                        tolerant(victim_busy), 30, "a worker to be busy", check=all_alive
                    )
                    victim_slot = chosen[0]
                    victim = current[victim_slot]
                    owned_at_kill.append(snapshot[0])
                    the_kill = await kill(engine, victim)
                    kills.append(the_kill)
                    assert victim.worker_id is not None
                    at = the_kill.signalled_at
                    watch = taken_over(engine, victim.worker_id, at, client_errors)
                    takeovers.append(asyncio.create_task(watch))
                    current[victim_slot] = spawn(victim_slot)
                    await current[victim_slot].wait_ready(engine)

                await starting
                takeover_delays = await asyncio.gather(*takeovers)

                async def all_completed() -> bool:
                    return await count_status(engine, "completed") == N_INSTANCES

                await wait_until(tolerant(all_completed), 120, "every workflow", check=all_alive)
                finished_at = time.monotonic()
                statuses: dict[str, int] = defaultdict(int)
                for d in (await engine.list(limit=10_000)).items:
                    statuses[d.status] += 1
                assert dict(statuses) == {"completed": N_INSTANCES}, dict(statuses)
                results = await asyncio.gather(
                    *(
                        engine.get_handle(instance_id(i)).result(timeout=10)
                        for i in range(N_INSTANCES)
                    )
                )
                wrong = [
                    (i, got, expected_sum(i))
                    for i, got in enumerate(results)
                    if got != expected_sum(i)
                ]
                assert not wrong, f"wrong results (instance, got, expected): {wrong[:10]}"
                tasks = await read_tasks(db)
                loaded = await load_histories(engine)
                for w in current:
                    assert await w.terminate() == 0, w.log_text()[-4000:]
        finally:
            for task in [starting, *takeovers]:
                if task is not None:
                    task.cancel()
            for w in workers:
                w.cleanup()

    runs = read_runs(side)
    final = {i: steps_of(h) for i, h in loaded.items()}
    expected_pairs = {(instance_id(i), s) for i in range(N_INSTANCES) for s in range(pg_app.STEPS)}
    killed = {k.pid: k for k in kills}

    # Executions cut short: only by a kill, and before it.
    cut = [r for r in runs if r.finished_at is None]
    for r in cut:
        assert r.pid in killed and r.started_at <= killed[r.pid].dead_at, f"unfinished: {r}"
    late_starts = [r for r in runs if r.pid in killed and r.started_at > killed[r.pid].dead_at]
    assert not late_starts, f"killed workers started executions after death: {late_starts[:5]}"

    report = check_invariants(
        expected_pairs=expected_pairs,
        executions=[r.execution() for r in runs if r.finished_at is not None],
        final=final,
        kills=kills,
        # A worker holds an inline slot until the result is committed, and a queue slot
        # until the task's outcome is: at most this many results in flight per worker.
        concurrency=CONCURRENCY + QUEUE_CONCURRENCY,
        disconnects=disconnects,
    )
    for w in workers:
        assert_clean_log(w)
    assert disconnects and disconnects[0].terminated > 0, "no connection was terminated"

    # Queued steps: run only on the queue, with the task id the worker gave them.
    queued_runs = [r for r in runs if r.task is not None]
    assert {r.pair for r in queued_runs} == {p for p in expected_pairs if p[1] == 2}
    assert not [r for r in runs if (r.task is not None) != (r.step == pg_app.QUEUED_STEP)]
    # Every task ended done, once per queued step (no retry: attempt 1), and the last
    # execution of its step is by the worker recorded as the task's owner.
    pid_of = {w.worker_id: w.pid for w in workers}
    by_task: dict[str, list[Run]] = defaultdict(list)
    for r in queued_runs:
        assert r.task is not None
        by_task[r.task].append(r)
    assert len(tasks) == N_INSTANCES, len(tasks)
    for task_id, queue, inst, attempt, status, owner, t_started, _ in tasks:
        assert (queue, status, attempt) == ("payments", "done", 1), (task_id, queue, status)
        task_runs = by_task[task_id]
        assert task_runs and all(r.instance == inst for r in task_runs), (task_id, task_runs)
        last = max((r for r in task_runs if r.finished_at is not None), key=lambda r: r.id)
        assert pid_of[owner] == last.pid, (task_id, owner, task_runs)
        assert last.started_at >= t_started - 0.05, (task_id, t_started, last)

    # The global concurrency limit of the queue.
    # A killed process died before it was reaped, and before another worker saw that
    # its pid was gone (a zombie counts as gone), whichever came first.
    detected = detection_times(workers)
    death = {k.pid: min(k.dead_at, detected.get(k.pid, k.dead_at)) for k in kills}
    overlap, overlap_at = max_overlap(queue_intervals(runs, death))
    if overlap > QUEUE_CONCURRENCY:
        at_once = [
            r
            for r in queued_runs
            if r.started_at <= overlap_at < (r.finished_at or death.get(r.pid, overlap_at))
        ]
        raise AssertionError(
            f"{overlap} queued executions at once at {overlap_at:.3f} (kills "
            f"{[(k.pid, k.signalled_at, k.dead_at, detected.get(k.pid)) for k in kills]}, "
            f"disconnects at "
            f"{[round(d.at, 3) for d in disconnects]}): {at_once}, tasks: "
            f"{[t for t in tasks if t[0] in {r.task for r in at_once}]}"
        )
    assert overlap == QUEUE_CONCURRENCY, f"the queue never ran {QUEUE_CONCURRENCY} at once"

    # A queued step ran again only because a kill cut it short or lost its outcome (a
    # task's outcome write that failed is retried, never dropped, so not the disconnect).
    by_pair: dict[Pair, list[Run]] = defaultdict(list)
    for r in queued_runs:
        by_pair[r.pair].append(r)
    redone = [
        r
        for v in by_pair.values()
        for r in sorted(v, key=lambda r: r.id)[:-1]
        if r.pid not in killed or r.started_at > killed[r.pid].dead_at
    ]
    assert not redone, f"queued steps re-run without a kill: {redone[:5]}"

    # Every kill hit running work, which was taken over before the lease expired: the
    # other workers saw that the process was gone.
    counts: dict[Pair, int] = defaultdict(int)
    for r in runs:
        counts[r.pair] += 1
    multiple = {p for p, c in counts.items() if c > 1}
    lines = []
    for n, (k, owned, takeover) in enumerate(
        zip(kills, owned_at_kill, takeover_delays, strict=True)
    ):
        assert k.in_flight, f"kill {n} found nothing in flight"
        assert owned, f"the victim owned no running workflow at kill {n}"
        assert k.pid in detected, f"no worker noticed that pid {k.pid} died"
        # Times from the SIGKILL: its work can be taken over as soon as the process died.
        # Only runs after the victim's: a pair may also have run elsewhere before it (a
        # write cut by the disconnect), which is no takeover.
        lost = {r.pair: r.started_at for r in runs if r.pid == k.pid and r.pair in multiple}
        redo = sorted(
            min(r.started_at for r in later) - k.signalled_at
            for pair, began in lost.items()
            if (
                later := [
                    r for r in runs if r.pair == pair and r.pid != k.pid and r.started_at > began
                ]
            )
        )
        assert takeover < LEASE, f"kill {n}: workflows taken over after {takeover:.2f}s"
        # A lost queued step may also wait for a free slot of the queue.
        assert all(delay < 2 * LEASE for delay in redo), f"kill {n}: steps redone after {redo}"
        lines.append(
            f"kill {n} (pid {k.pid}): {len(owned)} workflows owned, "
            f"{sum(r.pid == k.pid for r in cut)} executions cut short, "
            f"{report.per_kill[n]} finished ones re-run; reaped after "
            f"{k.dead_at - k.signalled_at:.3f}s, seen dead by a worker after "
            f"{detected[k.pid] - k.signalled_at:.2f}s, workflows taken over after {takeover:.2f}s, "
            f"lost steps redone after {', '.join(f'{d:.2f}s' for d in redo) or '-'}"
        )
    lines.append(
        f"disconnect: {disconnects[0].terminated} connections terminated, "
        f"{report.per_disconnect[0]} re-run"
    )
    print(
        f"faults {faults} at {thresholds} starts; {N_INSTANCES} workflows completed in "
        f"{finished_at - began:.1f}s; {report.executions} finished executions for "
        f"{len(expected_pairs)} steps, {report.duplicates} duplicates "
        f"{report.duplicated_pairs[:8]}; {len(cut)} cut short by kills; "
        f"max queue overlap {overlap} (limit {QUEUE_CONCURRENCY}); "
        f"{len(client_errors)} client errors (retried)"
    )
    for line in lines:
        print(line)
