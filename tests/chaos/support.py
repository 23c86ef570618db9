"""Machinery of the saga chaos test: worker processes, kills, histories, invariants.

Adapted from ``tests/integration/harness.py`` for sagas. A *call* is ``(instance id,
command number)``: one durable activity call, forward step or compensation alike. The
bank's ``executions`` table (written by the activities, outside the engine, in the same
transaction as the balance change) says which calls were executed, by which process,
which attempt and when; the histories say when each call was scheduled and when its
outcome (completion, or failure for good) was recorded. All processes run on this host,
so their clocks agree, and the final histories tell for each kill which calls were
*done* (outcome recorded before the kill) and which were *in flight* (scheduled before
it, outcome recorded after).

The oracle scenarios (``test_kill_*.py``, checked by ``oracle.py``) use the same
:class:`Kill`, plus :class:`AppWorker` (a process of ``scenarios_app.py``), :class:`Fleet`
(workers in slots, restarted in place after a kill), :class:`Stream` (workflows started
at a steady pace) and :func:`chaos_store` (a fresh SQLite or PostgreSQL store).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from examples.money_transfer import Execution

from stalwart import Engine, HistoryEvent

REPO_ROOT = Path(__file__).resolve().parents[2]

Call = tuple[str, int]


def sqlite_url(path: Path) -> str:
    """The store URL of a SQLite file."""
    return f"sqlite:///{path.resolve()}"


@contextlib.contextmanager
def chaos_store(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh store: a SQLite file in ``tmp_path``, or (``postgres``) a
    throw-away PostgreSQL database, dropped afterwards (skipped when the server is
    unreachable, failed instead under ``CI=true``)."""
    if kind == "sqlite":
        yield sqlite_url(tmp_path / "store.db")
        return
    # Imported here: worker processes import this module without needing psycopg.
    from tests.postgres_support import store_url, temporary_database

    with temporary_database() as db:
        # A small pool per process: several workers and the client share the server.
        yield store_url(db, schema="stalwart", pool_size=4)


def env_seed() -> int:
    """The random seed of a run: ``STALWART_TEST_SEED`` or a fresh one."""
    value = os.environ.get("STALWART_TEST_SEED")
    return int(value) if value else int.from_bytes(os.urandom(4), "big")


# ----------------------------------------------------------------------------- workers
class WorkerProcess:
    """``python -m tests.chaos.worker`` as a separate OS process, output in a log file."""

    def __init__(self, db: Path, bank: Path, log: Path, **options: float) -> None:
        args = ["--db", str(db), "--bank", str(bank)]
        for name, value in options.items():
            args += [f"--{name}", str(value)]
        self._launch("tests.chaos.worker", args, log)

    def _launch(
        self, module: str, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        """Start ``python -m module *args`` in the repository, output to ``log``."""
        self.log = log
        self.worker_id: str | None = None
        """The worker incarnation's id, once :meth:`wait_ready` saw it register."""
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env} if env else None,
            )
        self.pid = self.proc.pid

    async def wait_ready(self, engine: Engine, timeout: float = 30.0) -> None:
        """Wait until the worker has registered its lease (and learn its worker id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if await self.registered(engine):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"worker {self.pid} did not register in {timeout}s")

    async def registered(self, engine: Engine) -> bool:
        """Whether the worker has registered its lease (remembers its worker id)."""
        for w in await engine.store.list_workers():
            if w.pid == self.pid:
                self.worker_id = w.id
                return True
        return False

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    async def sigkill(self, engine: Engine | None = None) -> Kill:
        """SIGKILL and reap the process; the :class:`Kill` with its times (and, given a
        client ``engine``, the lease the dead worker left behind)."""
        self.check_alive()
        signalled_at = time.time()
        self.proc.send_signal(signal.SIGKILL)

        def reap() -> float:
            self.proc.wait()
            return time.time()  # here, not on a (maybe busy) event loop: as early as known

        dead_at = await asyncio.to_thread(reap)
        expires = 0.0
        if engine is not None:
            rows = [w for w in await engine.store.list_workers() if w.pid == self.pid]
            expires = max((w.expires_at for w in rows), default=0.0)
        return Kill(
            self.pid,
            dead_at,
            signalled_at=signalled_at,
            worker_id=self.worker_id,
            lease_expires_at=expires,
        )

    async def kill(self) -> float:
        """SIGKILL and reap the process (a zombie's pid looks alive); return when it died."""
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        return time.time()

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful stop) and wait; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def check_alive(self) -> None:
        """Fail at once if the worker died on its own."""
        assert self.proc.poll() is None, f"worker {self.pid} died on its own:\n{self.log_text()}"

    def cleanup(self) -> None:
        """Kill and reap the process if it still runs (after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        """The worker's output so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_errors(self) -> list[str]:
        """Lines of the log that report errors or tracebacks."""
        return [
            line
            for line in self.log_text().splitlines()
            if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
        ]


class AppWorker(WorkerProcess):
    """``python -m tests.chaos.scenarios_app``: a worker of the oracle scenarios."""

    def __init__(
        self,
        url: str,
        oracle_log: Path,
        log: Path,
        *,
        bank: Path | None = None,
        name: str | None = None,
        host_id: str | None = None,
        lease: float = 3.0,
        poll: float = 0.1,
        concurrency: int = 8,
        max_recoveries: int = 5,
        serial_concurrency: int = 0,
        step_seconds: float | None = None,
        latency: tuple[float, float] = (0.0, 0.0),
        env: dict[str, str] | None = None,
    ) -> None:
        args = ["--url", url, "--oracle", str(oracle_log), "--lease", str(lease)]
        args += ["--poll", str(poll), "--concurrency", str(concurrency)]
        args += ["--max-recoveries", str(max_recoveries)]
        args += ["--serial-concurrency", str(serial_concurrency)]
        args += ["--latency", str(latency[0]), str(latency[1])]
        if bank is not None:
            args += ["--bank", str(bank)]
        if name is not None:
            args += ["--name", name]
        if host_id is not None:
            args += ["--host-id", host_id]
        if step_seconds is not None:
            args += ["--step-seconds", str(step_seconds)]
        self.name = name
        self.host_id = host_id
        self._launch("tests.chaos.scenarios_app", args, log, env)

    def log_errors(self, expected: tuple[str, ...] = ()) -> list[str]:
        """Error lines of the log, except those containing one of ``expected``."""
        return [line for line in super().log_errors() if not any(text in line for text in expected)]


class Fleet:
    """Worker processes in numbered slots; a killed worker is restarted in its slot at once.

    ``make(slot, incarnation)`` builds the process of a slot (``incarnation`` counts the
    processes started so far, for unique log names).
    """

    def __init__(self, make: Callable[[int, int], AppWorker], size: int) -> None:
        self.make = make
        self.size = size
        self.everyone: list[AppWorker] = []
        self.current: list[AppWorker] = []
        self.kills: list[Kill] = []
        self._dying: set[int] = set()

    def spawn(self, slot: int) -> AppWorker:
        """Start the process of ``slot`` (replacing the dead one)."""
        worker = self.make(slot, len(self.everyone))
        self.everyone.append(worker)
        if slot < len(self.current):
            self.current[slot] = worker
        else:
            self.current.append(worker)
        return worker

    async def start(self, engine: Engine) -> None:
        """Start every slot and wait until all registered."""
        for slot in range(self.size):
            self.spawn(slot)
        await self.wait_ready(engine)

    async def wait_ready(self, engine: Engine) -> None:
        """Wait until every current worker registered."""
        for worker in self.current:
            await worker.wait_ready(engine)

    async def kill(self, slot: int, engine: Engine, *, restart: bool = True) -> Kill:
        """SIGKILL the worker of ``slot`` and (by default) start its successor at once."""
        victim = self.current[slot]
        # Other tasks may check the fleet while this one waits for the victim to die.
        self._dying.add(victim.pid)
        kill = await victim.sigkill(engine)
        self.kills.append(kill)
        if restart:
            self.spawn(slot)
        return kill

    def check_alive(self) -> None:
        """Fail at once if a current worker died on its own (not one being killed)."""
        for worker in self.current:
            if worker.pid not in self._dying:
                worker.check_alive()

    async def terminate(self, engine: Engine) -> list[int]:
        """Stop every current worker gracefully; their exit statuses.

        Each is first awaited until it has registered: a worker restarted just before
        would otherwise get SIGTERM while still importing, before its engine installed
        the handler that makes the stop graceful (exit status -15 instead of 0)."""
        deadline = time.monotonic() + 30.0
        for worker in self.current:
            while worker.alive() and not await worker.registered(engine):
                assert time.monotonic() < deadline, f"worker {worker.pid} never registered"
                await asyncio.sleep(0.02)
        return [await w.terminate() for w in self.current if w.alive()]

    def cleanup(self) -> None:
        """Kill and reap whatever still runs."""
        for worker in self.everyone:
            worker.cleanup()

    def log_errors(self, expected: tuple[str, ...] = ()) -> list[str]:
        """Error lines any worker logged (bar the ``expected`` ones), with their pid."""
        return [f"{w.pid}: {line}" for w in self.everyone for line in w.log_errors(expected)]


class Stream:
    """Starts workflows at a steady pace (``start(n)`` for n = 0, 1, ...) until stopped.

    :meth:`stop` lets the start in progress finish instead of cancelling it: a cancelled
    start may still be committed later, creating an instance behind the test's back.
    """

    def __init__(self, start: Callable[[int], Awaitable[object]], every: float) -> None:
        self._start = start
        self._every = every
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.started = 0

    def begin(self) -> None:
        """Start the stream."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._start(self.started)
            self.started += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every)

    async def stop(self) -> int:
        """Stop after the start in progress; how many were started."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        return self.started


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------- histories
@dataclass
class CallRecord:
    """What a history says about one activity call."""

    name: str
    scheduled: float
    outcomes: list[float] = field(default_factory=list)
    """When its outcome (ActivityCompleted or ActivityFailed) was recorded."""
    failed: bool = False
    compensation_of: int | None = None
    """The step this call undoes (None for a forward step)."""
    undo_started: int = 0
    """How many times the history says the saga began undoing this step."""
    undone: int = 0
    """How many times the history says this step was undone."""


def calls_of(history: Iterable[HistoryEvent]) -> dict[int, CallRecord]:
    """Command number -> the call's record."""
    calls: dict[int, CallRecord] = {}
    undoing: int | None = None
    for item in history:
        data = item.event.to_data()
        if item.kind == "CompensationStarted":
            undoing = data["step"]
            calls[undoing].undo_started += 1
        elif item.kind == "StepCompensated":
            calls[data["step"]].undone += 1
        elif item.kind == "ActivityScheduled":
            calls[data["cmd"]] = CallRecord(data["name"], item.time, compensation_of=undoing)
            undoing = None
        elif item.kind in ("ActivityCompleted", "ActivityFailed"):
            record = calls[data["cmd"]]
            record.outcomes.append(item.time)
            record.failed = item.kind == "ActivityFailed"
    return calls


async def all_histories(engine: Engine) -> dict[str, dict[int, CallRecord]]:
    """Every instance's calls, by instance id."""
    items = (await engine.list(limit=10_000)).items
    loaded = await asyncio.gather(*(engine.get_handle(d.id).history() for d in items))
    return {d.id: calls_of(h) for d, h in zip(items, loaded, strict=True)}


@dataclass
class Kill:
    """A worker killed mid-run."""

    pid: int
    dead_at: float
    """When the process was reaped (it can have done nothing later)."""
    done: set[Call] = field(default_factory=set)
    in_flight: set[Call] = field(default_factory=set)
    signalled_at: float = 0.0
    """When SIGKILL was sent (or the process ended itself): it died between this and
    ``dead_at``; 0 when unknown (``dead_at`` is used)."""
    worker_id: str | None = None
    """The killed worker incarnation."""
    lease_expires_at: float = 0.0
    """Its lease expiry as stored right after the kill (0 if unknown or expired)."""

    def classify(self, final: dict[str, dict[int, CallRecord]]) -> None:
        """Fill ``done`` and ``in_flight`` from the final histories."""
        for instance, calls in final.items():
            for cmd, rec in calls.items():
                if rec.outcomes and rec.outcomes[0] <= self.dead_at:
                    self.done.add((instance, cmd))
                elif rec.scheduled <= self.dead_at:
                    self.in_flight.add((instance, cmd))


# ----------------------------------------------------------------------------- invariants
@dataclass
class ExecutionReport:
    """What the side table shows, for the test's summary line."""

    executions: int
    reruns: int
    compensation_reruns: int
    duplicates_absorbed: int
    """Re-executions that found their idempotency key in the bank and applied nothing."""
    per_kill: list[int]
    compensations_in_flight: list[int]
    """Per kill, the compensations in flight at it."""


def check_executions(
    executions: list[Execution], final: dict[str, dict[int, CallRecord]], kills: list[Kill]
) -> ExecutionReport:
    """At-least-once execution, exactly-once recording, re-runs only at kills.

    * every call's outcome is recorded exactly once, and every call ran;
    * every execution belongs to a call of its instance's history, with the right
      operation (a compensation is ``credit_back``, undoing the debit);
    * a call done at a kill never runs after it; a killed process runs nothing after
      it was reaped; no execution ends after its call's outcome was recorded;
    * each undone step was undone by exactly one compensation call (one
      ``CompensationStarted`` and one ``StepCompensated``), begun after every forward step
      of its saga had ended;
    * a call runs again only because the worker that ran it was killed while it was in
      flight: each re-execution is explained by a distinct kill, in particular no
      compensation ran twice except one in flight at a kill;
    * at most one execution of a call applied its effect.
    """
    names = {"debit_account": "debit", "credit_account": "credit", "credit_back": "credit_back"}
    runs: dict[Call, list[Execution]] = defaultdict(list)
    for ex in executions:
        runs[(ex.instance, ex.step)].append(ex)
    for v in runs.values():
        v.sort(key=lambda ex: ex.finished_at)

    wrong = sorted(
        ((i, c), len(r.outcomes))
        for i, cs in final.items()
        for c, r in cs.items()
        if len(r.outcomes) != 1
    )
    assert not wrong, f"calls whose outcome is not recorded exactly once: {wrong[:10]}"
    never_ran = sorted((i, c) for i, cs in final.items() for c in cs if (i, c) not in runs)
    assert not never_ran, f"calls that never ran: {never_ran[:10]}"
    strangers = sorted(
        (call, v[0].operation)
        for call, v in runs.items()
        if call[1] not in final.get(call[0], {})
        or names[final[call[0]][call[1]].name] != v[0].operation
        or {ex.operation for ex in v} != {v[0].operation}
    )
    assert not strangers, f"executions that match no call of their history: {strangers[:10]}"
    misfiled = sorted(
        call
        for call, v in runs.items()
        if (v[0].kind == "compensation") != (final[call[0]][call[1]].compensation_of is not None)
    )
    assert not misfiled, f"compensations that are not undoing a step (or vice versa): {misfiled}"
    # Each undone step has exactly one compensation call, which began after every
    # forward step of its saga had ended (the saga settles running steps first).
    undo_calls: dict[Call, list[int]] = defaultdict(list)
    for i, cs in final.items():
        for c, r in cs.items():
            if r.compensation_of is not None:
                undo_calls[(i, r.compensation_of)].append(c)
    several = {k: v for k, v in undo_calls.items() if len(v) != 1}
    assert not several, f"steps undone by several compensation calls: {several}"
    unbalanced = sorted(
        (i, c, r.undo_started, r.undone)
        for i, cs in final.items()
        for c, r in cs.items()
        if r.undo_started != r.undone or r.undo_started != int((i, c) in undo_calls)
    )
    assert not unbalanced, f"(call, undo started, undone) mismatches: {unbalanced[:10]}"
    early = [
        ex
        for ex in executions
        if ex.kind == "compensation"
        and any(
            r.compensation_of is None and r.outcomes[0] > ex.started_at
            for r in final[ex.instance].values()
        )
    ]
    assert not early, f"compensations that began before their saga's steps ended: {early[:5]}"
    twice_applied = sorted(
        c for c, v in runs.items() if sum(ex.outcome == "applied" for ex in v) > 1
    )
    assert not twice_applied, f"calls whose effect was applied twice: {twice_applied[:10]}"

    for k in kills:
        k.classify(final)
        rerun = [
            ex
            for ex in executions
            if (ex.instance, ex.step) in k.done and ex.finished_at > k.dead_at
        ]
        assert not rerun, f"calls done before the kill of {k.pid} ran again: {rerun[:5]}"
        ghost = [ex for ex in executions if ex.pid == k.pid and ex.finished_at > k.dead_at]
        assert not ghost, f"killed worker {k.pid} executed after its death: {ghost[:5]}"
    late = [ex for ex in executions if ex.finished_at > final[ex.instance][ex.step].outcomes[0]]
    assert not late, f"executions that ended after their outcome was recorded: {late[:5]}"

    unexplained = []
    per_kill = [0] * len(kills)
    for call, v in runs.items():
        used: set[int] = set()
        for prev, nxt in pairwise(v):
            cause = next(
                (
                    n
                    for n, k in enumerate(kills)
                    if n not in used
                    and k.pid == prev.pid
                    and prev.finished_at <= k.dead_at <= nxt.started_at
                    and call in k.in_flight
                ),
                None,
            )
            if cause is None:
                unexplained.append((call, prev, nxt))
            else:
                used.add(cause)
                per_kill[cause] += 1
    assert not unexplained, f"re-executions not explained by a kill: {unexplained[:5]}"
    reruns = {c: len(v) - 1 for c, v in runs.items() if len(v) > 1}
    return ExecutionReport(
        executions=len(executions),
        reruns=sum(reruns.values()),
        compensation_reruns=sum(n for c, n in reruns.items() if runs[c][0].kind == "compensation"),
        duplicates_absorbed=sum(ex.outcome == "duplicate" for ex in executions),
        per_kill=per_kill,
        compensations_in_flight=[
            sum(1 for i, c in k.in_flight if final[i][c].compensation_of is not None) for k in kills
        ],
    )
