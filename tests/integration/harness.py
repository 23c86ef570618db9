"""Shared machinery of the process-kill tests: worker processes, histories, invariants.

A *pair* is ``(instance id, step)``: one durable activity call. The side table (written
by the activities, see ``app.py``) says which pairs were executed, by which process and
when; the histories say which completions the engine recorded, and when. All processes
run on this host, so their clocks agree. Everything a killed worker committed carries a
time before it was reaped, and everything any worker does on its instances afterwards
carries a later time, so the final histories tell, for each kill, which pairs were
*done* (completion recorded before the kill) and which were *in flight* (scheduled
before it, completed after). The invariants of at-least-once execution with
exactly-once recording:

* every pair has exactly one ``ActivityCompleted`` in the final history, and ran;
* a pair done at a kill never runs again after that kill;
* a pair runs again only because the worker that ran it was killed while it was in
  flight: each re-execution is explained by a distinct kill of that worker;
* no execution of a pair ends after its completion was recorded;
* a killed process executes nothing after it was reaped;
* (coarse) duplicates <= the number of pairs in flight at the kills.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from stalwart import Engine, HistoryEvent

HERE = Path(__file__).resolve().parent
APP = HERE / "app.py"

Pair = tuple[str, int]

SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    step        INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL
)
"""

PROGRESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    step        INTEGER NOT NULL,
    item        INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    at          REAL NOT NULL
)
"""
"""Items processed by heartbeating activities (``app.kc_copy``), one row per item."""


def step_value(instance_no: int, step: int) -> int:
    """The value ``kr_step`` returns (kept in sync with ``app.step_value``)."""
    return (instance_no * 37 + step * 11) % 97 + 1


def expected_sum(instance_no: int, steps: int) -> int:
    """The result of ``kr_sum(instance_no, steps)``."""
    return sum(step_value(instance_no, s) for s in range(steps))


def sqlite_url(path: Path) -> str:
    """The store URL of a SQLite file."""
    return f"sqlite:///{path.resolve()}"


def client(db: Path) -> Engine:
    """A client-only engine that knows no workflow (starts by name, raw results)."""
    return Engine(sqlite_url(db), worker=False, workflows=[], activities=[])


# ----------------------------------------------------------------------------- side table
def init_side(path: Path) -> None:
    """Create the side tables (WAL, so the test can read while workers write)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SIDE_SCHEMA)
        conn.execute(PROGRESS_SCHEMA)
    finally:
        conn.close()


@dataclass(frozen=True)
class Execution:
    """One row of the side table."""

    instance: str
    step: int
    pid: int
    attempt: int
    started_at: float
    finished_at: float

    @property
    def pair(self) -> Pair:
        """The durable call this was an execution of."""
        return (self.instance, self.step)


def read_side(path: Path) -> list[Execution]:
    """Every recorded execution, in insertion order."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT instance, step, pid, attempt, started_at, finished_at "
            "FROM executions ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Execution(*row) for row in rows]


@dataclass(frozen=True)
class Progress:
    """One row of the progress table: an item a heartbeating activity processed."""

    instance: str
    step: int
    item: int
    pid: int
    attempt: int
    at: float


def read_progress(path: Path) -> list[Progress]:
    """Every processed item, in insertion order."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT instance, step, item, pid, attempt, at FROM progress ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Progress(*row) for row in rows]


def count_side(path: Path) -> int:
    """How many executions are recorded so far."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM executions").fetchone()
    finally:
        conn.close()
    return int(n)


# ----------------------------------------------------------------------------- workers
class WorkerProcess:
    """``app.py`` running as a separate OS process, its output in a log file."""

    def __init__(
        self,
        db: Path,
        side: Path,
        log: Path,
        *,
        name: str | None = None,
        lease: float = 5.0,
        poll: float = 0.2,
        concurrency: int = 8,
        host_id: str | None = None,
        step_seconds: float | None = None,
        item_seconds: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [
            sys.executable,
            str(APP),
            "--db",
            str(db),
            "--side",
            str(side),
            "--lease",
            str(lease),
            "--poll",
            str(poll),
            "--concurrency",
            str(concurrency),
        ]
        if name is not None:
            args += ["--name", name]
        if host_id is not None:
            args += ["--host-id", host_id]
        if step_seconds is not None:
            args += ["--step-seconds", str(step_seconds)]
        if item_seconds is not None:
            args += ["--item-seconds", str(item_seconds)]
        self.log = log
        self.concurrency = concurrency
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env} if env else None,
            )
        self.pid = self.proc.pid
        self.worker_id: str | None = None

    async def wait_ready(self, engine: Engine, timeout: float = 30.0) -> None:
        """Wait until the worker has registered its lease (and learn its worker id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited early:\n{self.log_text()}"
            for w in await engine.store.list_workers():
                if w.pid == self.pid and w.expires_at > 0:
                    self.worker_id = w.id
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"worker {self.pid} did not register in {timeout}s")

    async def kill(self) -> float:
        """SIGKILL and reap the process; return the time it was known to be dead.

        Reaping matters: an unreaped child is a zombie whose pid still exists, so other
        workers could not tell it died.
        """
        self.proc.send_signal(signal.SIGKILL)

        def reap() -> float:
            self.proc.wait()
            return time.time()  # here, not on a (maybe busy) event loop: as early as known

        return await asyncio.to_thread(reap)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful stop) and wait; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def cleanup(self) -> None:
        """Kill and reap the process if it still runs (after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """The worker's output so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def assert_clean_log(worker: WorkerProcess) -> None:
    """No tracebacks or errors in a worker's output."""
    text = worker.log_text()
    bad = [
        line
        for line in text.splitlines()
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    ]
    assert not bad, f"worker {worker.pid} logged errors:\n{text[-4000:]}"


# ----------------------------------------------------------------------------- polling
async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds.

    ``check`` runs on every round (e.g. to fail fast when a worker died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def count_status(engine: Engine, status: str) -> int:
    """How many instances have this status."""
    return len((await engine.list(status=status, limit=10_000)).items)


async def start_all(engine: Engine, n: int, steps: int) -> list[str]:
    """Start ``n`` ``kr_sum`` instances (ids ``wf-000``...) in one burst."""
    ids = [f"wf-{i:03d}" for i in range(n)]
    await asyncio.gather(
        *(engine.start_by_name("kr_sum", [i, steps], id=wf_id) for i, wf_id in enumerate(ids))
    )
    return ids


# ----------------------------------------------------------------------------- histories
@dataclass
class StepRecord:
    """What a history says about one step: when it was scheduled and completed."""

    scheduled: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)


def steps_of(history: Iterable[HistoryEvent]) -> dict[int, StepRecord]:
    """Step number -> its records (the step is the activity's second argument)."""
    cmd_step: dict[int, int] = {}
    steps: dict[int, StepRecord] = defaultdict(StepRecord)
    for item in history:
        data = item.event.to_data()
        if item.kind == "ActivityScheduled":
            step = int(data["input"][1])
            cmd_step[data["cmd"]] = step
            steps[step].scheduled.append(item.time)
        elif item.kind == "ActivityCompleted":
            steps[cmd_step[data["cmd"]]].completions.append(item.time)
    return steps


async def histories(engine: Engine) -> dict[str, dict[int, StepRecord]]:
    """Every instance's steps, by instance id."""
    items = (await engine.list(limit=10_000)).items
    loaded = await asyncio.gather(*(engine.get_handle(d.id).history() for d in items))
    return {d.id: steps_of(h) for d, h in zip(items, loaded, strict=True)}


@dataclass
class Kill:
    """A worker killed mid-run."""

    pid: int
    dead_at: float
    """Time the process was reaped (it can have done nothing later)."""
    lease_expires_at: float
    """Its lease expiry as stored right after the kill (0 if already expired)."""
    signalled_at: float = 0.0
    """Time SIGKILL was sent (the process died between this and ``dead_at``)."""
    done: set[Pair] = field(default_factory=set)
    """Pairs whose completion was recorded before the kill (from the final history)."""
    in_flight: set[Pair] = field(default_factory=set)
    """Pairs scheduled before the kill and completed after it."""

    def classify(self, final: dict[str, dict[int, StepRecord]]) -> None:
        """Fill ``done`` and ``in_flight`` from the final histories."""
        for instance, steps in final.items():
            for step, rec in steps.items():
                if rec.completions and rec.completions[0] <= self.dead_at:
                    self.done.add((instance, step))
                elif rec.scheduled and rec.scheduled[0] <= self.dead_at:
                    self.in_flight.add((instance, step))


async def kill(engine: Engine, worker: WorkerProcess) -> Kill:
    """SIGKILL ``worker``; record when it died and when its lease runs out."""
    assert worker.alive(), f"worker {worker.pid} died on its own:\n{worker.log_text()}"
    signalled_at = time.time()
    dead_at = await worker.kill()
    expires = [w.expires_at for w in await engine.store.list_workers() if w.pid == worker.pid]
    return Kill(
        pid=worker.pid,
        dead_at=dead_at,
        lease_expires_at=max(expires, default=0.0),
        signalled_at=signalled_at,
    )


@dataclass
class Disconnect:
    """Every store connection terminated at once (e.g. ``pg_terminate_backend``).

    The workers survive, but a write cut by it fails: a worker that cannot tell whether
    its write landed rebuilds the instance from the store, so a step whose completion
    was in that write runs again. Writes can fail until the pools have weeded out their
    dead connections, ``window`` seconds at most.
    """

    at: float
    """Time the connections were terminated (just before)."""
    terminated: int = 0
    """How many connections were terminated."""
    window: float = 3.0
    done: set[Pair] = field(default_factory=set)
    """Pairs whose completion was recorded before the disconnect."""
    in_flight: set[Pair] = field(default_factory=set)
    """Pairs scheduled before the end of the window and completed after the disconnect."""

    def classify(self, final: dict[str, dict[int, StepRecord]]) -> None:
        """Fill ``done`` and ``in_flight`` from the final histories."""
        for instance, steps in final.items():
            for step, rec in steps.items():
                if rec.completions and rec.completions[0] <= self.at:
                    self.done.add((instance, step))
                elif rec.scheduled and rec.scheduled[0] <= self.at + self.window:
                    self.in_flight.add((instance, step))


# ----------------------------------------------------------------------------- invariants
@dataclass
class Report:
    """Numbers the tests print (and assert on)."""

    executions: int
    duplicates: int
    duplicated_pairs: list[Pair]
    per_kill: list[int]
    """Re-executions caused by each kill."""
    exposure: list[float]
    """Per kill, the age of the oldest execution whose completion was not yet recorded."""
    per_disconnect: list[int] = field(default_factory=list)
    """Re-executions caused by each disconnect."""


def check_invariants(
    *,
    expected_pairs: set[Pair],
    executions: list[Execution],
    final: dict[str, dict[int, StepRecord]],
    kills: list[Kill],
    concurrency: int,
    disconnects: list[Disconnect] | None = None,
) -> Report:
    """Assert the at-least-once / exactly-once-recorded invariants (module docstring).

    ``disconnects`` (store connections terminated while the workers lived) may explain
    re-executions too: of a pair in flight at one, whose previous execution ended before
    the end of its window and whose next one started after it, once per disconnect.
    """
    disconnects = disconnects or []
    runs: dict[Pair, list[Execution]] = defaultdict(list)
    for ex in executions:
        runs[ex.pair].append(ex)
    for v in runs.values():
        v.sort(key=lambda ex: ex.finished_at)

    # Every pair recorded exactly once, and every pair ran.
    unexpected = set(runs) - expected_pairs
    assert not unexpected, f"executions of unknown steps: {sorted(unexpected)[:10]}"
    never_ran = expected_pairs - set(runs)
    assert not never_ran, f"steps that never ran: {sorted(never_ran)[:10]}"
    wrong = {
        (i, s): (len(r.scheduled), len(r.completions))
        for i, st in final.items()
        for s, r in st.items()
        if len(r.completions) != 1 or len(r.scheduled) != 1
    }
    missing = {p for p in expected_pairs if p[1] not in final.get(p[0], {})}
    assert not wrong and not missing, (
        f"steps not scheduled and completed exactly once (scheduled, completed): "
        f"{sorted(wrong.items())[:10]}, missing: {sorted(missing)[:10]}"
    )
    for k in kills:
        k.classify(final)
    for d in disconnects:
        d.classify(final)

    # A pair done at a kill never runs after it.
    for k in kills:
        rerun = [ex for ex in executions if ex.pair in k.done and ex.finished_at > k.dead_at]
        assert not rerun, f"steps done before the kill of {k.pid} ran again: {rerun[:5]}"
        ghost = [ex for ex in executions if ex.pid == k.pid and ex.finished_at > k.dead_at]
        assert not ghost, f"killed worker {k.pid} executed after its death: {ghost[:5]}"
    for d in disconnects:
        rerun = [ex for ex in executions if ex.pair in d.done and ex.finished_at > d.at]
        assert not rerun, f"steps done before the disconnect at {d.at} ran again: {rerun[:5]}"

    # Each re-execution is explained by a distinct kill of the worker that ran the
    # previous execution, at which the pair was in flight.
    unexplained = []
    per_kill = [0] * len(kills)
    exposure = [0.0] * len(kills)
    per_disconnect = [0] * len(disconnects)
    for pair, v in runs.items():
        used: set[int] = set()
        used_disconnects: set[int] = set()
        for prev, nxt in pairwise(v):
            cause = next(
                (
                    n
                    for n, k in enumerate(kills)
                    if n not in used
                    and k.pid == prev.pid
                    and prev.finished_at <= k.dead_at
                    # It died after the signal: others may have seen it gone before we
                    # reaped it (a zombie counts as gone) and started the pair again.
                    and (k.signalled_at or k.dead_at) <= nxt.started_at
                    and pair in k.in_flight
                ),
                None,
            )
            if cause is None:
                # Not a kill: a disconnect that cut the write recording ``prev``?
                cut = next(
                    (
                        n
                        for n, d in enumerate(disconnects)
                        if n not in used_disconnects
                        and prev.finished_at <= d.at + d.window
                        and d.at <= nxt.started_at
                        and pair in d.in_flight
                    ),
                    None,
                )
                if cut is None:
                    unexplained.append((pair, prev, nxt))
                else:
                    used_disconnects.add(cut)
                    per_disconnect[cut] += 1
            else:
                used.add(cause)
                per_kill[cause] += 1
                exposure[cause] = max(exposure[cause], kills[cause].dead_at - prev.finished_at)
    assert not unexplained, f"re-executions not explained by a kill: {unexplained[:5]}"

    # Nothing ran after its completion was recorded.
    late = [
        ex
        for ex in executions
        if final.get(ex.instance, {}).get(ex.step)
        and ex.finished_at > final[ex.instance][ex.step].completions[0]
    ]
    assert not late, f"executions that ended after their completion was recorded: {late[:5]}"

    # A kill can cause at most one re-execution per pair in flight at it, and a worker
    # holds an activity slot until the result is committed, so at most `concurrency`.
    duplicates = sum(len(v) - 1 for v in runs.values())
    bound = sum(len(k.in_flight) for k in kills) + sum(len(d.in_flight) for d in disconnects)
    assert duplicates <= bound, f"{duplicates} duplicate executions, at most {bound} possible"
    assert sum(per_kill) <= len(kills) * concurrency, (
        f"{sum(per_kill)} duplicate executions for {len(kills)} kill(s) "
        f"at concurrency {concurrency}"
    )
    return Report(
        executions=len(executions),
        duplicates=duplicates,
        duplicated_pairs=sorted(p for p, v in runs.items() if len(v) > 1),
        per_kill=per_kill,
        exposure=exposure,
        per_disconnect=per_disconnect,
    )


async def check_results(engine: Engine, n: int, steps: int) -> None:
    """Every instance completed with the right sum."""
    statuses = defaultdict(int)
    for d in (await engine.list(limit=10_000)).items:
        statuses[d.status] += 1
    assert dict(statuses) == {"completed": n}, f"statuses: {dict(statuses)}"
    results = await asyncio.gather(
        *(engine.get_handle(f"wf-{i:03d}").result(timeout=10) for i in range(n))
    )
    wrong = [
        (i, got, expected_sum(i, steps))
        for i, got in enumerate(results)
        if got != expected_sum(i, steps)
    ]
    assert not wrong, f"wrong results (instance, got, expected): {wrong[:10]}"


def env_seed() -> int:
    """The random seed of a test run: ``STALWART_TEST_SEED`` or a fresh one."""
    value = os.environ.get("STALWART_TEST_SEED")
    return int(value) if value else int.from_bytes(os.urandom(4), "big")
