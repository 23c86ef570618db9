"""Machinery of the outage chaos tests: worker processes, load, histories, checkers.

The checkers count violations (they do not assert), so each test can report them in
the chaos table before it asserts there are none. A *call* is ``(instance id, step)``;
``outage_oracle`` says which calls were executed, by which process, under which lease
epoch and when; the histories say which outcomes the engine recorded, and when. All
processes run on this host, so their clocks agree.

A call may be executed more than once only for a cause the guarantees name: the worker
that executed it was killed before its outcome was recorded, or a store outage cut the
write that carried it (then the instance is rebuilt from the store and the call runs
again: at-least-once). Every other re-execution, and every outcome recorded twice, is a
violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg

from stalwart import Engine, HistoryEvent, StoreError, WorkflowDescription
from tests.postgres_support import database_dsn, require_postgres, store_url, temporary_database

from . import outage_oracle, support
from .outage_app import WAKE_STEP
from .report import record
from .support import REPO_ROOT, sqlite_url

Call = tuple[str, int]


# ----------------------------------------------------------------------------- processes
class AppProcess:
    """``python -m tests.chaos.outage_app`` as a separate OS process, output in a log file.

    A thread reaps the process as soon as it exits and notes the time, so the death of a
    worker that killed itself (``STALWART_FAULTS``) is known as precisely as a SIGKILL.
    """

    def __init__(
        self,
        *,
        url: str,
        oracle: Path,
        app: str,
        log: Path,
        env: dict[str, str] | None = None,
        options: dict[str, float | str] | None = None,
        **more: float | str,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "tests.chaos.outage_app",
            "--url",
            url,
            "--oracle",
            str(oracle),
            "--app",
            app,
        ]
        for name, value in {**(options or {}), **more}.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.log = log
        self.env = env or {}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        self.pid = self.proc.pid
        self.worker_id: str | None = None
        self.exited_at: float | None = None
        self.killed = False
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        self.proc.wait()
        self.exited_at = time.time()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.exited_at is None and self.proc.poll() is None

    async def wait_ready(self, engine: Engine, timeout: float = 60.0) -> None:
        """Wait until the worker registered its lease (and learn its worker id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"worker {self.pid} exited early:\n{self.log_text()[-4000:]}"
            try:
                workers = await engine.store.list_workers()
            except StoreError:
                workers = []
            for w in workers:
                if w.pid == self.pid and w.expires_at > 0:
                    self.worker_id = w.id
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"worker {self.pid} did not register in {timeout}s")

    async def kill(self) -> Kill:
        """SIGKILL the process; return when it was signalled and when it was dead."""
        signalled = time.time()
        self.killed = True
        with _suppress_gone():
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self._reaper.join)
        assert self.exited_at is not None
        return Kill(self.pid, self.worker_id, signalled, self.exited_at)

    async def died(self) -> Kill:
        """The process ended by itself (a planned fault): its death as a kill, first
        bounded by the reaping time on both sides (see :func:`last_seen_alive`)."""
        await asyncio.to_thread(self._reaper.join)
        assert self.exited_at is not None
        return Kill(self.pid, self.worker_id, self.exited_at, self.exited_at)

    async def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful stop) and wait; return the exit status."""
        with _suppress_gone():
            self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self._reaper.join, timeout)
        code = self.proc.returncode
        assert code is not None, f"worker {self.pid} did not stop in {timeout}s"
        return code

    def cleanup(self) -> None:
        """Kill and reap the process if it still runs (after a failed test)."""
        if self.proc.poll() is None:
            with _suppress_gone():
                self.proc.kill()
        self._reaper.join(30)

    def log_text(self) -> str:
        """The worker's output so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self, *needles: str) -> list[str]:
        """Lines of the log containing any of ``needles``."""
        return [line for line in self.log_text().splitlines() if any(n in line for n in needles)]


class _suppress_gone:
    """Ignore ``ProcessLookupError`` (the process is already gone)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, *_: Any) -> bool:
        return et is ProcessLookupError


@dataclass
class Kill:
    """A worker that died mid-run (SIGKILL, or a planned ``os._exit``)."""

    pid: int
    worker_id: str | None
    signalled_at: float
    """When it was signalled (for a planned death: when it was last seen alive, see
    :func:`last_seen_alive`): it died no earlier. Other workers can see it dead (a zombie
    counts) before this process reaps it, on a loaded machine long before."""
    dead_at: float
    """When the process was reaped: it executed nothing after this."""


@dataclass
class Outage:
    """A window in which the store was unreachable or refused writes.

    ``end`` is when it was reachable again plus the time the pools need to weed out
    their dead connections: a write can fail up to then, and the instance it carried is
    rebuilt from the store (its recorded-but-uncommitted results run again).
    """

    start: float
    end: float


def last_seen_alive(kills: Sequence[Kill], executions: Sequence[outage_oracle.Execution]) -> None:
    """Give each planned death (known only by its reaping time) the end of the dead
    process's last execution as its earliest moment: it was alive then, and whatever
    happened after may already have seen it dead."""
    last: dict[int, float] = {}
    for ex in executions:
        last[ex.pid] = max(ex.time, last.get(ex.pid, ex.time))
    for k in kills:
        if k.signalled_at == k.dead_at and k.pid in last:
            k.signalled_at = min(k.dead_at, last[k.pid])


# ----------------------------------------------------------------------------- stores
TABLES = ("instances", "events", "inbox", "workers", "tasks")
"""Every table of the engine's PostgreSQL schema: a pause locks them all."""

_HOLD_EXCLUSIVE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@asynccontextmanager
async def store_for(kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """(store URL, clock DSN for ``og_wake``, pause target) of a fresh store."""
    if kind == "sqlite":
        db = tmp_path / "store.db"
        yield sqlite_url(db), "", str(db)
        return
    require_postgres()
    with temporary_database() as name:
        yield store_url(name, schema="stalwart"), database_dsn(name), database_dsn(name)


async def pause_sqlite(path: str, seconds: float) -> tuple[float, float]:
    """Another process holds the write lock for ``seconds`` (``BEGIN EXCLUSIVE``: in WAL
    mode no other writer commits, readers go on); return when it held it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_EXCLUSIVE,
        path,
        str(seconds),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    began = time.time()
    assert line.strip() == b"locked", line
    assert await proc.wait() == 0
    return began, time.time()


async def pause_postgres(dsn: str, seconds: float) -> tuple[float, float]:
    """Hold ACCESS EXCLUSIVE locks on every engine table for ``seconds`` (nothing reads or
    writes them meanwhile; connections stay up); return when they were held."""
    tables = ", ".join(f"stalwart.{t}" for t in TABLES)
    for _ in range(20):
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            try:
                async with conn.transaction():
                    await conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
                    began = time.time()
                    await asyncio.sleep(seconds)
                return began, time.time()
            except psycopg.errors.DeadlockDetected:
                continue  # a worker's batch held one of them: take them again
    raise AssertionError("could not lock the engine's tables")


# ----------------------------------------------------------------------------- reporting
@contextlib.contextmanager
def row_on_abort(scenario: str, store: str, runs: int) -> Iterator[None]:
    """Record a failed row in the chaos table when the block aborts (a timeout, a dead
    worker...), so an aborted scenario shows in the table instead of vanishing from it.
    A block that ends normally records its own row."""
    try:
        yield
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else type(exc).__name__
        record(scenario, store, runs=runs, violations=1, detail=f"aborted: {reason}")
        raise


# ----------------------------------------------------------------------------- waiting
async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    check: Callable[[], None] | None = None,
) -> None:
    """:func:`support.wait_until`, where a failing store read counts as "not yet"."""

    async def tolerant() -> bool:
        try:
            return await condition()
        except StoreError:
            return False

    await support.wait_until(tolerant, timeout, what, interval=interval, check=check)


async def retry_store(fn: Callable[[], Awaitable[Any]], *, attempts: int = 600) -> Any:
    """Call ``fn`` until the store answers (a client rides out an outage like this).

    Starting and signalling are idempotent on the instance id, so a call whose
    acknowledgement was lost can simply be made again.
    """
    for n in range(attempts):
        try:
            return await fn()
        except StoreError:
            if n == attempts - 1:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def all_instances(engine: Engine) -> dict[str, WorkflowDescription]:
    """Every instance's description, by id (paged)."""
    found: dict[str, WorkflowDescription] = {}
    cursor: str | None = None
    while True:
        page = await engine.list(limit=10_000, cursor=cursor)
        found.update((d.id, d) for d in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return found


async def count_status(engine: Engine, status: str) -> int:
    """How many instances have ``status`` (paged)."""
    total, cursor = 0, None
    while True:
        page = await engine.list(status=status, limit=10_000, cursor=cursor)
        total += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return total


async def settled(engine: Engine, n: int) -> bool:
    """Whether ``n`` instances have completed, failed or been parked (``suspended``): a
    wait for completion ends as soon as nothing more can happen, and the checks then
    report the instances that did not complete instead of a timeout."""
    done = 0
    for status in ("completed", "failed", "suspended"):
        done += await count_status(engine, status)
    return done >= n


async def load_histories(engine: Engine, ids: Iterable[str]) -> dict[str, list[HistoryEvent]]:
    """The histories of ``ids``, 32 reads at a time."""
    slots = asyncio.Semaphore(32)

    async def one(instance: str) -> tuple[str, list[HistoryEvent]]:
        async with slots:
            return instance, await engine.get_handle(instance).history()

    return dict(await asyncio.gather(*(one(i) for i in ids)))


# ----------------------------------------------------------------------------- load
class Load:
    """Starts ``og_chain`` workflows at a steady rate until stopped, riding out outages.

    Each tick starts a batch concurrently; a start that fails because the store is away
    is retried (same id and input: idempotent). Ticks go on while earlier batches still
    retry, up to ``max_pending`` batches, as a front end that keeps accepting requests.
    """

    def __init__(
        self, engine: Engine, *, rate: float, batch: int, steps: int, prefix: str = "wf"
    ) -> None:
        self.engine = engine
        self.interval = batch / rate
        self.batch = batch
        self.steps = steps
        self.prefix = prefix
        self.started: dict[str, float] = {}
        """Instance id -> when its start was acknowledged."""
        self.numbers: dict[str, int] = {}
        self.errors = 0
        self._next = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.max_pending = 50

    def instance_id(self, n: int) -> str:
        """The id of the n-th workflow."""
        return f"{self.prefix}-{n:06d}"

    async def _start(self, n: int) -> None:
        wf_id = self.instance_id(n)
        self.numbers[wf_id] = n
        while True:
            try:
                await self.engine.start_by_name("og_chain", [n, self.steps], id=wf_id)
                self.started[wf_id] = time.time()
                return
            except StoreError:
                self.errors += 1
                await asyncio.sleep(0.2)

    async def _batch(self, first: int) -> None:
        await asyncio.gather(*(self._start(n) for n in range(first, first + self.batch)))

    async def run(self) -> None:
        """Start batches until :meth:`stop`; then wait for the pending ones."""
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if len(self._pending) < self.max_pending:
                task = asyncio.create_task(self._batch(self._next))
                self._next += self.batch
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            next_tick += self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_tick - time.monotonic()))
        if self._pending:
            await asyncio.gather(*self._pending)

    def stop(self) -> None:
        """Stop starting new batches."""
        self._stop.set()

    @property
    def requested(self) -> int:
        """How many workflows were (or are being) started."""
        return self._next


# ----------------------------------------------------------------------------- histories
@dataclass
class CallRecord:
    """What a history says about one call."""

    name: str
    scheduled: list[float] = field(default_factory=list)
    completed: list[float] = field(default_factory=list)
    failed: int = 0


def oracle_step(name: str, data: dict[str, Any]) -> int:
    """The oracle step number of an ``ActivityScheduled`` of ``outage_app``."""
    if name == "og_step":
        return int(data["input"][1])
    if name == "og_wake":
        return WAKE_STEP
    if name.startswith("cc_step"):
        return int(name.removeprefix("cc_step"))
    raise AssertionError(f"unexpected activity {name!r}")


def calls_of(history: Iterable[HistoryEvent]) -> dict[int, CallRecord]:
    """Oracle step -> what the history records about that call."""
    by_cmd: dict[int, int] = {}
    calls: dict[int, CallRecord] = {}
    for item in history:
        data = item.event.to_data()
        if item.kind == "ActivityScheduled":
            step = oracle_step(data["name"], data)
            by_cmd[data["cmd"]] = step
            calls.setdefault(step, CallRecord(data["name"])).scheduled.append(item.time)
        elif item.kind == "ActivityCompleted":
            calls[by_cmd[data["cmd"]]].completed.append(item.time)
        elif item.kind == "ActivityFailed":
            calls[by_cmd[data["cmd"]]].failed += 1
    return calls


# ----------------------------------------------------------------------------- checkers
@dataclass
class Verdict:
    """Violations found by a checker (messages, capped) and numbers for the report."""

    violations: int = 0
    messages: list[str] = field(default_factory=list)
    reruns: int = 0
    """Re-executions explained by a kill or an outage (allowed: at-least-once)."""

    def add(self, message: str, count: int = 1) -> None:
        """Count ``count`` violations described by ``message``."""
        self.violations += count
        if len(self.messages) < 20:
            self.messages.append(message)

    def merge(self, other: Verdict) -> None:
        """Add another verdict's findings to this one."""
        self.violations += other.violations
        self.reruns += other.reruns
        self.messages.extend(other.messages[: max(0, 20 - len(self.messages))])

    def summary(self) -> str:
        """The findings, for an assertion message."""
        return f"{self.violations} violations:\n" + "\n".join(self.messages)


def check_calls(
    expected: dict[str, set[int]],
    histories: dict[str, list[HistoryEvent]],
    executions: Sequence[outage_oracle.Execution],
    *,
    kills: Sequence[Kill] = (),
    outages: Sequence[Outage] = (),
    unfinished: Iterable[str] = (),
) -> Verdict:
    """At-least-once execution, exactly-once recording, re-runs only for a named cause.

    ``unfinished``: instances that did not complete (:func:`check_statuses` counts them):
    their calls are checked for double recording and re-runs, not for completeness.

    * every expected call has exactly one ``ActivityScheduled`` and one
      ``ActivityCompleted`` and no ``ActivityFailed``, and was executed;
    * every execution belongs to an expected call and no history has other calls;
    * no execution started after its call's outcome was recorded;
    * a killed process executed nothing after it was reaped;
    * each further execution of a call follows one that a kill of its process (signalled
      before the next start, reaped after its end) or an outage (its outcome still
      unrecorded when the outage began, the execution ended before it was over) can have
      lost.
    """
    verdict = Verdict()
    open_ = set(unfinished)
    calls = {i: calls_of(h) for i, h in histories.items()}
    for instance, steps in expected.items():
        got = calls.get(instance)
        if got is None:
            verdict.add(f"{instance}: no history")
            continue
        if set(got) != steps and not (instance in open_ and set(got) <= steps):
            verdict.add(f"{instance}: calls {sorted(got)} in history, expected {sorted(steps)}")
        for step, rec in got.items():
            if instance in open_ and len(rec.completed) == 0:
                bad = len(rec.scheduled) != 1 or rec.failed > 1
            else:
                bad = len(rec.scheduled) != 1 or len(rec.completed) != 1 or rec.failed > 0
            if bad:
                verdict.add(
                    f"({instance}, {step}): scheduled {len(rec.scheduled)}x, completed "
                    f"{len(rec.completed)}x, failed {rec.failed}x (want 1, 1, 0)"
                )
    runs: dict[Call, list[outage_oracle.Execution]] = defaultdict(list)
    for ex in executions:
        runs[ex.call].append(ex)
    for instance, steps in expected.items():
        for step in steps:
            if (instance, step) not in runs and not (
                instance in open_ and step not in calls.get(instance, {})
            ):
                verdict.add(f"({instance}, {step}) was never executed")
    killed = {k.pid: k for k in kills}
    dead = {k.pid: k.dead_at for k in kills}
    for call, execs in runs.items():
        instance, step = call
        if step not in expected.get(instance, set()):
            verdict.add(f"execution of a call nobody expects: {execs[0]}")
            continue
        found = calls.get(instance, {}).get(step)
        completed = found.completed[0] if found is not None and found.completed else None
        execs.sort(key=lambda ex: ex.started_at)
        for ex in execs:
            if completed is not None and ex.started_at > completed:
                verdict.add(f"{call} executed after its outcome was recorded: {ex}")
            if ex.pid in dead and ex.time > dead[ex.pid]:
                verdict.add(f"killed worker {ex.pid} executed after its death: {ex}")
        for prev, nxt in pairwise(execs):
            # The kill fell between them: it came after ``prev`` ended (the process was
            # reaped later) and before ``nxt`` began (it was signalled earlier).
            k = killed.get(prev.pid)
            by_kill = k is not None and prev.time <= k.dead_at and k.signalled_at <= nxt.started_at
            by_outage = any(
                prev.time <= o.end and (completed is None or completed >= o.start) for o in outages
            )
            if by_kill or by_outage:
                verdict.reruns += 1
            else:
                verdict.add(f"{call} re-executed without a kill or an outage: {prev} -> {nxt}")
    return verdict


def check_statuses(
    descriptions: dict[str, WorkflowDescription], expected: Iterable[str], status: str = "completed"
) -> Verdict:
    """Every expected instance exists and has ``status``."""
    verdict = Verdict()
    for instance in expected:
        d = descriptions.get(instance)
        if d is None:
            verdict.add(f"{instance} does not exist")
        elif d.status != status:
            verdict.add(f"{instance} is {d.status}, not {status} (error {d.error})")
    return verdict


# ----------------------------------------------------------------------------- throughput
def baseline_rate(times: Sequence[float], start: float, end: float) -> float:
    """Executions per second between ``start`` and ``end``."""
    return sum(1 for t in times if start <= t < end) / max(end - start, 1e-9)


def recovery_time(
    times: Sequence[float],
    since: float,
    target_rate: float,
    *,
    window: float = 1.0,
    horizon: float = 60.0,
) -> float | None:
    """Seconds from ``since`` until a ``window``-long span ending then ran at least
    ``target_rate`` executions per second (the throughput is back), or None.

    Spans slide by 50 ms from ``since``; the time returned is the end of the first good
    span, so it includes the span itself (a conservative measure).
    """
    ordered = sorted(t for t in times if since <= t <= since + horizon + window)
    need = target_rate * window
    lo = 0
    start = since
    while start <= since + horizon:
        end = start + window
        while lo < len(ordered) and ordered[lo] < start:
            lo += 1
        hi = lo
        while hi < len(ordered) and ordered[hi] < end:
            hi += 1
        if hi - lo >= need:
            return end - since
        start += 0.05
    return None


# ----------------------------------------------------------------------------- PostgreSQL
def session_problems(admin_url: str, database: str, *, samples: int = 3) -> list[str]:
    """Leaked locks or idle-in-transaction sessions on ``database``, seen persistently.

    Sampled ``samples`` times 0.5 s apart; a session counts when it was idle in a
    transaction for more than a second in every sample (a live transaction between two
    statements is idle for microseconds), or idle outside any transaction while holding
    a lock (a session-level lock nobody released), in every sample.
    """
    seen: list[dict[int, str]] = []
    query = """
        SELECT a.pid, a.state, a.application_name,
               extract(epoch FROM now() - a.state_change)::float8,
               left(a.query, 100),
               (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                  AND l.locktype NOT IN ('virtualxid', 'transactionid'))
        FROM pg_stat_activity a
        WHERE a.datname = %s AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for n in range(samples):
            if n:
                time.sleep(0.5)
            found: dict[int, str] = {}
            for pid, state, app, idle_for, text, locks in conn.execute(query, (database,)):
                in_txn = state is not None and state.startswith("idle in transaction")
                if (in_txn and idle_for > 1.0) or (state == "idle" and locks > 0):
                    found[pid] = (
                        f"pid {pid} ({app}) {state} for {idle_for:.1f}s holding {locks} "
                        f"locks, last query {text!r}"
                    )
            seen.append(found)
    persistent = set(seen[0]).intersection(*seen[1:]) if seen else set()
    return [seen[-1][pid] for pid in sorted(persistent)]


# ----------------------------------------------------------------------------- a load run
RECOVERY_LIMIT = 10.0
"""Throughput must be back this many seconds after the store is (durably) back."""


@dataclass
class LoadRun:
    """The outcome of :func:`chain_under_faults`, for the report and the assertions."""

    verdict: Verdict
    requested: int
    executions: int
    baseline: float
    recovery: float | None
    outages: list[Outage]
    client_errors: int
    log_errors: list[str]

    def detail(self, what: str) -> str:
        """A short line for the chaos table."""
        recovered = f"{self.recovery:.1f}s" if self.recovery is not None else "never"
        return (
            f"{what}; baseline {self.baseline:.0f} steps/s, back after {recovered}; "
            f"{self.executions} executions ({self.verdict.reruns} allowed re-runs), "
            f"{self.client_errors} client retries"
        )


async def chain_under_faults(
    tmp_path: Path,
    *,
    url: str,
    client_url: str,
    admin_url: str,
    database: str,
    fault: Callable[[], Awaitable[tuple[list[Outage], float]]],
    workers: int = 2,
    rate: float = 30.0,
    steps: int = 3,
    warmup: float = 4.0,
    after: float = 12.0,
    worker_options: dict[str, float | str] | None = None,
) -> LoadRun:
    """Run ``og_chain`` workflows at a steady ``rate`` on ``workers`` worker processes
    while ``fault()`` disrupts the store; check everything afterwards.

    ``fault`` returns the outage windows it caused and the moment the store was back for
    good (from which the throughput recovery is measured). The load runs ``warmup``
    seconds before the fault (the last three give the baseline rate) and ``after``
    seconds after it; then every workflow must complete. The checks: every workflow
    ``completed`` with the right result, :func:`check_calls` (nothing recorded twice,
    re-runs only in outage windows), throughput at half the baseline within
    :data:`RECOVERY_LIMIT` seconds of the store's return, no leaked locks or
    idle-in-transaction sessions while the workers idle, no worker died, no worker
    logged a traceback.
    """
    oracle = tmp_path / "oracle.db"
    outage_oracle.init(oracle)
    options: dict[str, float | str] = {
        "lease": 5.0,
        "poll": 0.2,
        "concurrency": 8,
        "step_seconds": 0.005,
        **(worker_options or {}),
    }
    procs: list[AppProcess] = []
    verdict = Verdict()
    loading: asyncio.Task[None] | None = None
    try:
        async with Engine(client_url, worker=False, workflows=[], activities=[]) as client:
            for n in range(workers):
                log = tmp_path / f"worker-{n}.log"
                procs.append(
                    AppProcess(
                        url=url,
                        oracle=oracle,
                        app="chain",
                        log=log,
                        options={**options, "name": f"w{n}"},
                    )
                )
            for p in procs:
                await p.wait_ready(client)

            def all_alive() -> None:
                for p in procs:
                    assert p.alive(), f"worker {p.pid} died:\n{p.log_text()[-4000:]}"

            load = Load(client, rate=rate, batch=5, steps=steps)
            loading = asyncio.create_task(load.run())
            await asyncio.sleep(warmup)
            fault_at = time.time()
            outages, back_at = await fault()
            await asyncio.sleep(max(0.0, back_at + after - time.time()))
            all_alive()
            load.stop()
            await loading
            loading = None
            ids = [load.instance_id(n) for n in range(load.requested)]

            async def all_done() -> bool:
                return await settled(client, len(ids))

            await wait_until(
                all_done, 180, f"{len(ids)} workflows to end", check=all_alive, interval=0.2
            )
            descriptions = await retry_store(lambda: all_instances(client))
            verdict.merge(check_statuses(descriptions, ids))
            ended = [i for i in ids if descriptions[i].status == "completed"]
            results = await asyncio.gather(
                *(client.get_handle(i).result(timeout=30) for i in ended)
            )
            expected_result = {
                i: sum((load.numbers[i] * 37 + s * 11) % 97 + 1 for s in range(steps)) for i in ids
            }
            for i, got in zip(ended, results, strict=True):
                if got != expected_result[i]:
                    verdict.add(f"{i} returned {got}, expected {expected_result[i]}")
            histories = await load_histories(client, ids)
            executions = outage_oracle.read(oracle)
            verdict.merge(
                check_calls(
                    {i: set(range(steps)) for i in ids},
                    histories,
                    executions,
                    outages=outages,
                    unfinished=set(ids) - set(ended),
                )
            )
            # The workers idle now: nothing may stay locked or open in a transaction.
            for problem in await asyncio.to_thread(session_problems, admin_url, database):
                verdict.add(f"leaked session: {problem}")
            for p in procs:
                code = await p.terminate()
                if code != 0:
                    verdict.add(f"worker {p.pid} exited with {code}:\n{p.log_text()[-3000:]}")
    finally:
        if loading is not None:
            loading.cancel()
        for p in procs:
            p.cleanup()
    times = [ex.time for ex in executions]
    baseline = baseline_rate(times, fault_at - 3.0, fault_at)
    # Half-second spans: fine enough to see a short dip, long enough for ~20 steps.
    recovery = recovery_time(times, back_at, 0.5 * baseline, window=0.5)
    if recovery is None or recovery > RECOVERY_LIMIT:
        verdict.add(f"throughput not back within {RECOVERY_LIMIT}s of the restart: {recovery}")
    log_errors = [line for p in procs for line in p.log_lines("Traceback", " ERROR ", "CRITICAL")]
    tracebacks = [line for line in log_errors if "Traceback" in line]
    if tracebacks:
        verdict.add(f"{len(tracebacks)} tracebacks in worker logs, e.g. {log_errors[:5]}")
    return LoadRun(
        verdict=verdict,
        requested=len(ids),
        executions=len(executions),
        baseline=baseline,
        recovery=recovery,
        outages=outages,
        client_errors=load.errors,
        log_errors=log_errors,
    )
