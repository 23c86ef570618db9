"""The oracle: an execution log kept outside the engine, and checkers that hold the
engine's histories against it.

Every activity body of the chaos worker app (``scenarios_app.py``) runs inside
:func:`logged`: it appends a row ``(instance, cmd, activity, attempt, pid, lease_epoch,
worker_id, started_at)`` to the log when it starts and stamps ``finished_at`` and its
``outcome`` (``returned``, ``raised``, ``cancelled`` or ``exit`` for a deliberate
``os._exit``) before the body returns. The log is its own SQLite file written in
autocommit mode (WAL, a busy timeout), never the engine's store: a process killed in the
middle of a step leaves a row without an end, and nothing the engine does (or fails to
do) can rewrite it.

The checkers compare the log with the final histories (``engine.get_handle(id).history()``)
and with the kills the test made (:class:`tests.chaos.support.Kill`, classified from the
histories). They never raise: each returns the violations it found as text, so a test can
count them, report its row of the chaos table and only then assert there were none.

The invariants (:func:`check_oracle`):

* **one result per step**: every call of a finished instance has exactly one recorded
  outcome (``ActivityCompleted`` or ``ActivityFailed``); a call the workflow abandoned
  (cancelled while running) has none; no call ever has two;
* **recorded results were produced**: every recorded completion (failure) of an attempt
  has an execution of that attempt in the log that returned (raised);
* **no strangers**: every logged execution belongs to a call of its instance's history,
  with the same activity name;
* **nothing runs after its result was recorded**;
* **repeats only at kills**: an attempt executed more than once was cut short (or its
  result lost) by a kill of the process that ran it, while the call was in flight; each
  repeat consumes a distinct kill, runs in another worker incarnation and, for inline
  activities, under a higher lease epoch;
* **no two live workers at once**: the executions of one call never overlap, where an
  execution cut short by a kill ends when the kill was sent (a dead process is not a live
  worker) — an execution cut short without any kill is a violation too;
* **a killed process runs nothing new**: no execution of a killed pid starts after the
  signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stalwart import Engine, HistoryEvent, activity_context

from .support import CallRecord

if TYPE_CHECKING:
    from .support import Kill

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    cmd         INTEGER NOT NULL,   -- the durable call (the step's command number)
    activity    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    lease_epoch INTEGER,            -- NULL for a queued task (its claim guards it)
    worker_id   TEXT,               -- the worker incarnation
    started_at  REAL NOT NULL,
    finished_at REAL,               -- NULL: still running, or cut short by a kill
    outcome     TEXT                -- returned, raised, cancelled, exit
);
CREATE TABLE IF NOT EXISTS markers (    -- switches the test flips (poison, broken undo)
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

ALERT_ACTIVITY = "stalwart.saga_alert"
"""The engine's own alert activity: not logged (the engine registers its body)."""
FINISHED_STATUSES = frozenset(
    {"completed", "failed", "cancelled", "terminated", "timed_out", "compensated"}
)

_local = threading.local()
_path: str | None = None
_exiting = threading.Lock()
"""Held by an activity ending its own process: no other start is logged after its
exit stamp (a sync activity's thread needs the GIL back to reach ``os._exit``, and
meanwhile the loop may start another activity: that start would look like a ghost)."""


# ----------------------------------------------------------------------------- writing
def init(path: Path) -> None:
    """Create the log file and its directory (WAL, so the test reads while workers
    write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
    finally:
        conn.close()


def use(path: str | Path) -> None:
    """Point this process's activities at the log file ``path``."""
    global _path
    _path = str(path)


def _connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    # NORMAL in WAL mode: a commit survives the death of the process (not of the
    # machine), which is what a process-kill test needs, at a fraction of the cost.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _conn() -> sqlite3.Connection:
    """This thread's connection (sync activities run on pool threads)."""
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        if _path is None:
            raise RuntimeError("no oracle log: call oracle.use(path) first")
        conn = _connect(_path)
        _local.conn = conn
    return conn


def begin() -> int:
    """Log the start of the current activity attempt; return its row id."""
    ctx = activity_context()
    with _exiting:
        cur = _conn().execute(
            "INSERT INTO executions (instance, cmd, activity, attempt, pid, lease_epoch, "
            "worker_id, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ctx.instance_id,
                ctx.cmd,
                ctx.activity,
                ctx.attempt,
                os.getpid(),
                ctx.lease_epoch,
                ctx.worker_id,
                time.time(),
            ),
        )
    assert cur.lastrowid is not None
    return cur.lastrowid


def exit_process(row: int, status: int = 137) -> None:
    """Stamp ``row`` as ending the process, then end it at once (like a crash); no
    execution of this process is logged as started after the stamp."""
    _exiting.acquire()  # never released: the process ends holding it
    end(row, "exit")
    os._exit(status)


def end(row: int, outcome: str) -> None:
    """Stamp the end of an execution."""
    _conn().execute(
        "UPDATE executions SET finished_at = ?, outcome = ? WHERE id = ?",
        (time.time(), outcome, row),
    )


@contextlib.contextmanager
def logged() -> Iterator[int]:
    """Wrap an activity body: logged when it starts and before it returns or raises."""
    row = begin()
    try:
        yield row
    except BaseException as exc:
        # CancelledError (a BaseException) is the workflow abandoning the call.
        end(row, "raised" if isinstance(exc, Exception) else "cancelled")
        raise
    end(row, "returned")


def marker(key: str) -> str | None:
    """The value of a marker the test set (``None``: not set)."""
    row = _conn().execute("SELECT value FROM markers WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_marker(path: Path, key: str, value: str = "1") -> None:
    """Set a marker (from the test process)."""
    conn = _connect(path)
    try:
        conn.execute("INSERT OR REPLACE INTO markers (key, value) VALUES (?, ?)", (key, value))
    finally:
        conn.close()


def clear_marker(path: Path, key: str) -> None:
    """Remove a marker (from the test process)."""
    conn = _connect(path)
    try:
        conn.execute("DELETE FROM markers WHERE key = ?", (key,))
    finally:
        conn.close()


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Entry:
    """One execution in the log."""

    id: int
    instance: str
    cmd: int
    activity: str
    attempt: int
    pid: int
    lease_epoch: int | None
    worker_id: str | None
    started_at: float
    finished_at: float | None
    outcome: str | None

    @property
    def call(self) -> tuple[str, int]:
        """The durable call this executed."""
        return (self.instance, self.cmd)


def read(path: Path) -> list[Entry]:
    """Every execution logged so far, in the order they started."""
    conn = _connect(path)
    try:
        rows = conn.execute(
            "SELECT id, instance, cmd, activity, attempt, pid, lease_epoch, worker_id, "
            "started_at, finished_at, outcome FROM executions ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Entry(*row) for row in rows]


def running(path: Path, activity: str | None = None) -> list[Entry]:
    """Executions started and not (yet) finished, optionally of one activity."""
    return [
        e
        for e in read(path)
        if e.finished_at is None and (activity is None or e.activity == activity)
    ]


# ----------------------------------------------------------------------------- histories
@dataclass
class Timeline:
    """What one instance's history says: its calls and its saga bookkeeping."""

    status: str
    calls: dict[int, CallRecord] = field(default_factory=dict)
    completed: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Per call, the attempt numbers of its ``ActivityCompleted`` events."""
    failed: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Per call, the attempt numbers that failed (``ActivityAttemptFailed``,
    ``ActivityFailed``)."""
    abandoned: set[int] = field(default_factory=set)
    """Calls scheduled before a cancellation request and never given an outcome."""
    undo_calls: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Per forward step, the calls that ran its compensation (a retry after an operator
    reopened the saga is a second call)."""
    undo_failed: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    """Per forward step, how many times ``CompensationFailed`` was recorded."""
    kinds: list[str] = field(default_factory=list)


def timeline(history: Iterable[HistoryEvent], status: str) -> Timeline:
    """Parse one instance's history (see :class:`Timeline`)."""
    out = Timeline(status)
    undoing: int | None = None
    cancel_at: float | None = None
    for item in history:
        data = item.event.to_data()
        out.kinds.append(item.kind)
        if item.kind == "CompensationStarted":
            undoing = data["step"]
            out.calls[undoing].undo_started += 1
        elif item.kind == "StepCompensated":
            out.calls[data["step"]].undone += 1
            undoing = None
        elif item.kind == "CompensationFailed":
            out.undo_failed[data["step"]] += 1
        elif item.kind == "CancelRequested" and cancel_at is None:
            cancel_at = item.time
        elif item.kind == "ActivityScheduled":
            # Every call made while a step is being undone (bar the alert) undoes it,
            # including the retry after an operator reopened the saga.
            of = undoing if data["name"] != ALERT_ACTIVITY else None
            out.calls[data["cmd"]] = CallRecord(data["name"], item.time, compensation_of=of)
            if of is not None:
                out.undo_calls[of].append(data["cmd"])
        elif item.kind == "ActivityCompleted":
            out.calls[data["cmd"]].outcomes.append(item.time)
            out.completed[data["cmd"]].append(int(data.get("attempt", 1)))
        elif item.kind == "ActivityFailed":
            rec = out.calls[data["cmd"]]
            rec.outcomes.append(item.time)
            rec.failed = True
            out.failed[data["cmd"]].append(int(data["attempts"]))
        elif item.kind == "ActivityAttemptFailed":
            out.failed[data["cmd"]].append(int(data["attempt"]))
    if cancel_at is not None:
        out.abandoned = {
            cmd for cmd, rec in out.calls.items() if not rec.outcomes and rec.scheduled <= cancel_at
        }
    return out


async def load_timelines(engine: Engine) -> dict[str, Timeline]:
    """Every instance's timeline, by instance id."""
    items = (await engine.list(limit=10_000)).items
    loaded = await asyncio.gather(*(engine.get_handle(d.id).history() for d in items))
    return {d.id: timeline(h, d.status) for d, h in zip(items, loaded, strict=True)}


def calls(final: dict[str, Timeline]) -> dict[str, dict[int, CallRecord]]:
    """The calls of every instance, as :meth:`Kill.classify` takes them."""
    return {i: t.calls for i, t in final.items()}


# ----------------------------------------------------------------------------- checkers
@dataclass
class Verdict:
    """Invariant violations found by a scenario, counted per offending item."""

    found: list[tuple[str, int, list[Any]]] = field(default_factory=list)
    """(what, how many, up to five examples) per kind of violation."""

    def add(self, what: str, offending: list[Any]) -> None:
        """Record a kind of violation (nothing when ``offending`` is empty)."""
        if offending:
            self.found.append((what, len(offending), list(offending[:5])))

    def fail(self, what: str) -> None:
        """Record one violation."""
        self.found.append((what, 1, []))

    def merge(self, other: Verdict) -> None:
        """Add another verdict's violations."""
        self.found += other.found

    @property
    def count(self) -> int:
        """How many violations."""
        return sum(n for _, n, _ in self.found)

    @property
    def violations(self) -> list[str]:
        """The violations as text, with examples."""
        return [f"{what} ({n}): {ex}" if ex else what for what, n, ex in self.found]

    def text(self) -> str:
        """Every violation, one per line (the assertion message)."""
        return "\n".join(self.violations)


@dataclass
class OracleReport(Verdict):
    """What :func:`check_oracle` found: violations, and numbers for the summary."""

    executions: int = 0
    calls: int = 0
    repeats: int = 0
    """Executions of an attempt beyond its first (each explained by a kill, or a
    violation)."""
    cut_short: int = 0
    per_kill: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """A few words for the chaos table's detail column."""
        return (
            f"{self.executions} executions of {self.calls} calls, {self.repeats} repeats "
            f"at kills, {self.cut_short} cut short"
        )


def _end(entry: Entry, killed_at: dict[int, float]) -> float:
    """When an execution stopped: its end, or (cut short) when its process was killed."""
    if entry.finished_at is not None:
        return entry.finished_at
    return killed_at.get(entry.pid, math.inf)


def check_oracle(
    entries: list[Entry],
    final: dict[str, Timeline],
    kills: list[Kill],
    *,
    logged_activities: set[str] | None = None,
) -> OracleReport:
    """Check the invariants of the module docstring; return the violations found.

    ``logged_activities`` are the activity names whose bodies write the log (default:
    every name but the engine's alert activity). The kills are classified here.
    """
    report = OracleReport(executions=len(entries), per_kill=[0] * len(kills))
    by_call = calls(final)
    for k in kills:
        k.classify(by_call)

    def logs(name: str) -> bool:
        if logged_activities is not None:
            return name in logged_activities
        return name != ALERT_ACTIVITY

    # One result per step (none for an abandoned call).
    counted = []
    for inst, t in final.items():
        for cmd, rec in t.calls.items():
            if not logs(rec.name):
                continue
            report.calls += 1
            n = len(rec.outcomes)
            wanted_none = cmd in t.abandoned
            if n > 1 or (t.status in FINISHED_STATUSES and n != 1 and not wanted_none):
                counted.append((inst, cmd, rec.name, t.status, n))
    report.add("calls whose result is not recorded exactly once", counted)

    # Recorded outcomes were produced by a logged execution of that attempt.
    ran: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for e in entries:
        ran[(e.instance, e.cmd, e.attempt)].add(e.outcome or "cut")
    unproduced = []
    for inst, t in final.items():
        for cmd, attempts in t.completed.items():
            if logs(t.calls[cmd].name):
                unproduced += [
                    (inst, cmd, a, "completed")
                    for a in attempts
                    if "returned" not in ran[(inst, cmd, a)]
                ]
        for cmd, attempts in t.failed.items():
            if logs(t.calls[cmd].name):
                unproduced += [
                    (inst, cmd, a, "failed")
                    for a in attempts
                    if "raised" not in ran[(inst, cmd, a)]
                ]
    report.add("recorded outcomes no logged execution produced", unproduced)

    # No strangers, nothing after the result was recorded.
    strangers = [
        e
        for e in entries
        if e.instance not in final
        or e.cmd not in final[e.instance].calls
        or final[e.instance].calls[e.cmd].name != e.activity
    ]
    report.add("executions that match no call of their history", strangers)
    late = [
        e
        for e in entries
        if e not in strangers
        and final[e.instance].calls[e.cmd].outcomes
        and e.started_at > final[e.instance].calls[e.cmd].outcomes[0]
    ]
    report.add("executions started after their call's result was recorded", late)

    # Killed processes: nothing new after the signal; cut-short executions need a kill.
    killed_at: dict[int, float] = {}
    for k in kills:
        killed_at[k.pid] = min(killed_at.get(k.pid, math.inf), k.signalled_at or k.dead_at)
    ghosts = [e for e in entries if e.pid in killed_at and e.started_at > killed_at[e.pid]]
    report.add("executions a killed process started after it was killed", ghosts)
    cut = [e for e in entries if e.finished_at is None]
    report.cut_short = len(cut)
    report.add("executions cut short without a kill", [e for e in cut if e.pid not in killed_at])

    # No two live workers on one call at once.
    per_call: dict[tuple[str, int], list[Entry]] = defaultdict(list)
    for e in entries:
        per_call[e.call].append(e)
    overlaps = []
    for runs in per_call.values():
        runs.sort(key=lambda e: e.started_at)
        for n, prev in enumerate(runs):
            overlaps += [
                (prev, nxt) for nxt in runs[n + 1 :] if nxt.started_at < _end(prev, killed_at)
            ]
    report.add("executions of one call by live workers at the same time", overlaps)

    # Repeats of an attempt only at kills of the process that ran it, in flight.
    per_attempt: dict[tuple[str, int, int], list[Entry]] = defaultdict(list)
    for e in entries:
        per_attempt[(e.instance, e.cmd, e.attempt)].append(e)
    unexplained, same_incarnation = [], []
    for (inst, cmd, _), runs in per_attempt.items():
        runs.sort(key=lambda e: e.started_at)
        used: set[int] = set()
        for prev, nxt in pairwise(runs):
            report.repeats += 1
            cause = next(
                (
                    n
                    for n, k in enumerate(kills)
                    if n not in used
                    and k.pid == prev.pid
                    and prev.started_at <= k.dead_at
                    and (k.signalled_at or k.dead_at) <= nxt.started_at
                    and (inst, cmd) in k.in_flight
                ),
                None,
            )
            if cause is None:
                unexplained.append((prev, nxt))
                continue
            used.add(cause)
            report.per_kill[cause] += 1
            fenced = (
                prev.lease_epoch is None
                or nxt.lease_epoch is None
                or nxt.lease_epoch > prev.lease_epoch
            )
            if prev.worker_id == nxt.worker_id or not fenced:
                same_incarnation.append((prev, nxt))
    report.add("repeated executions not explained by a kill", unexplained)
    report.add(
        "repeats in the same worker incarnation or lease epoch as the killed run",
        same_incarnation,
    )
    return report


def check_compensations(final: dict[str, Timeline], undo_of: dict[str, str]) -> list[str]:
    """Compensations never skipped and each recorded once.

    ``undo_of`` maps a forward activity name to its compensation's. For a ``compensated``
    instance every completed step with a compensation was undone: one
    ``CompensationStarted``, one ``StepCompensated``, exactly one successful call of the
    right compensation; undone in reverse completion order. An instance that did not
    compensate undid nothing. A step of a parked saga (``failed`` and waiting for an
    operator) is never recorded as undone twice.
    """
    problems: list[str] = []
    for inst, t in final.items():
        forward = {
            cmd: rec
            for cmd, rec in t.calls.items()
            if rec.compensation_of is None and rec.name in undo_of
        }
        done = [cmd for cmd, rec in forward.items() if rec.outcomes and not rec.failed]
        for cmd, rec in forward.items():
            ok_undos = [
                c
                for c in t.undo_calls.get(cmd, [])
                if t.calls[c].outcomes and not t.calls[c].failed
            ]
            wrong_name = [
                c for c in t.undo_calls.get(cmd, []) if t.calls[c].name != undo_of[rec.name]
            ]
            if wrong_name:
                problems.append(f"{inst}: step {cmd} undone by the wrong activity {wrong_name}")
            if rec.undo_started > 1 or rec.undone > 1 or len(ok_undos) > 1:
                problems.append(
                    f"{inst}: step {cmd} undone more than once (started {rec.undo_started}, "
                    f"compensated {rec.undone}, successful undo calls {ok_undos})"
                )
            if t.status == "compensated" and cmd in done and (rec.undone, len(ok_undos)) != (1, 1):
                problems.append(
                    f"{inst}: completed step {cmd} ({rec.name}) not compensated exactly once "
                    f"(compensated {rec.undone}, successful undo calls {ok_undos})"
                )
            if t.status == "completed" and (rec.undo_started or rec.undone):
                problems.append(f"{inst}: completed saga undid step {cmd}")
        if t.status == "compensated":
            # LIFO: undone in the reverse order of their results.
            order = [
                cmd
                for cmd in sorted(done, key=lambda c: (forward[c].outcomes[0], c), reverse=True)
                if cmd in t.undo_calls
            ]
            started = sorted((t.calls[t.undo_calls[cmd][0]].scheduled, cmd) for cmd in t.undo_calls)
            if [cmd for _, cmd in started] != order:
                problems.append(f"{inst}: compensations ran in order {started}, expected {order}")
    return problems
