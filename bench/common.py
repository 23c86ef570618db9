"""Shared pieces of the benchmark: what to run, sizes, statistics, SQL counting, memory."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
"""``PRAGMA synchronous`` returns a number; these are the names SQLite documents."""

SCENARIOS = ("seq", "fanout", "sleepers", "recovery", "replay", "scale")
"""Every scenario, in the order they run and are printed."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is."""

    seq_steps: int = 1_000
    fanout_workflows: int = 1_000
    fanout_steps: int = 5
    raw_seconds: float = 2.0
    raw_pg_connections: int = 16
    warmup_steps: int = 20
    warmup_workflows: int = 20
    sleepers: int = 10_000
    sleepers_dbos: int = 2_000
    """DBOS starts ~150-300 sleepers/s: 10,000 would take longer than the 60 s sleep, so
    the first ones would wake up before the last ones were started."""
    sleepers_big: int = 100_000
    sleep_seconds: float = 60.0
    sleep_seconds_big: float = 600.0
    """The 100,000-sleeper run takes about a minute to start: a 60 s sleep would let the
    first ones wake up before the last ones were started."""
    start_concurrency: int = 500
    """Sleepers being started at once (a semaphore around the start calls)."""
    warmup_sleepers: int = 200
    recovery_steps: int = 200
    recovery_kill_after: int = 100
    recovery_step_ms: float = 1.0
    recovery_lease_seconds: float = 2.0
    replay_events: tuple[int, ...] = (1_000, 10_000)
    replay_repeats: int = 5
    dbos_recover_repeats: int = 3
    scale_workflows: int = 1_000
    scale_steps: int = 5
    scale_processes: tuple[int, ...] = (1, 2, 4)

    @classmethod
    def quick(cls) -> Sizes:
        """Smaller sizes for a smoke run."""
        return cls(
            seq_steps=200,
            fanout_workflows=100,
            fanout_steps=5,
            raw_seconds=0.5,
            warmup_steps=10,
            warmup_workflows=10,
            sleepers=1_000,
            sleepers_dbos=300,
            sleepers_big=10_000,
            warmup_sleepers=50,
            recovery_steps=60,
            recovery_kill_after=30,
            replay_events=(1_000,),
            replay_repeats=3,
            dbos_recover_repeats=1,
            scale_workflows=200,
            scale_processes=(1, 2),
        )

    def to_dict(self) -> dict[str, Any]:
        """For passing to a child process as JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sizes:
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists)."""
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


@dataclass(frozen=True, slots=True)
class Target:
    """One engine configuration: which engine, which store, which durability.

    ``store`` is ``memory``, ``sqlite`` or ``postgres``. For SQLite, ``synchronous`` is
    the mode both engines are set to (WAL journal); ``synchronous=None`` with
    ``engine="dbos"`` means DBOS's own, untouched SQLite settings (rollback journal). For
    PostgreSQL the durability is the server's (``synchronous`` is ``None``). ``procs`` is
    the number of worker processes (the ``scale`` scenario).
    """

    engine: str
    store: str
    synchronous: str | None = None
    procs: int = 1

    @property
    def label(self) -> str:
        """Short row label."""
        if self.store == "memory":
            return f"{self.engine} memory://"
        if self.store == "postgres":
            return f"{self.engine} postgresql"
        if self.synchronous is None:
            return f"{self.engine} sqlite (engine default)"
        return f"{self.engine} sqlite WAL {self.synchronous}"

    @property
    def key(self) -> str:
        """A stable identifier (used in the JSON dump)."""
        return f"{self.engine}/{self.store}/{self.synchronous or 'default'}/{self.procs}"

    def to_dict(self) -> dict[str, Any]:
        """For passing to a child process as JSON."""
        return asdict(self)


STALWART_MEMORY = Target("stalwart", "memory")
STALWART_FULL = Target("stalwart", "sqlite", "FULL")
STALWART_NORMAL = Target("stalwart", "sqlite", "NORMAL")
DBOS_FULL = Target("dbos", "sqlite", "FULL")
DBOS_NORMAL = Target("dbos", "sqlite", "NORMAL")
DBOS_DEFAULT = Target("dbos", "sqlite", None)
STALWART_PG = Target("stalwart", "postgres")
DBOS_PG = Target("dbos", "postgres")


@dataclass
class RunContext:
    """Where one measurement runs: its temporary directory and, for PostgreSQL, the
    URL of the fresh database created for it (the parent creates and drops it)."""

    workdir: str
    pg_url: str | None = None
    pg_admin_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SqlCounter:
    """Counts SQL statements and COMMITs through ``sqlite3`` trace callbacks.

    ``itertools.count`` increments atomically under the GIL, so the callback is safe to
    call from the engines' many threads without a lock.
    """

    def __init__(self) -> None:
        self._statements = itertools.count()
        self._commits = itertools.count()

    def __call__(self, sql: str) -> None:
        next(self._statements)
        if sql.lstrip()[:6].upper().startswith(("COMMIT", "END")):
            next(self._commits)

    def snapshot(self) -> tuple[int, int]:
        """(statements, commits) so far. Each call consumes one tick of each counter,
        which :func:`delta` subtracts again."""
        return next(self._statements), next(self._commits)

    @staticmethod
    def delta(before: tuple[int, int], after: tuple[int, int]) -> dict[str, int]:
        """Statements and commits between two snapshots."""
        return {"statements": after[0] - before[0] - 1, "commits": after[1] - before[1] - 1}


class WriteCounter:
    """Write transactions during the measured part: COMMITs seen by the SQLite trace
    callbacks, or the cluster's transaction-id counter on PostgreSQL."""

    def __init__(self, target: Target, ctx: RunContext, counter: SqlCounter) -> None:
        self.target = target
        self.ctx = ctx
        self.counter = counter
        self._sqlite: tuple[int, int] | None = None
        self._xid: int | None = None

    async def start(self) -> None:
        if self.target.store == "sqlite":
            self._sqlite = self.counter.snapshot()
        elif self.target.store == "postgres":
            from bench.pg import next_xid

            self._xid = await asyncio.to_thread(next_xid, self.ctx.pg_url or "")

    async def stop(self) -> dict[str, Any] | None:
        if self._sqlite is not None:
            return SqlCounter.delta(self._sqlite, self.counter.snapshot())
        if self._xid is not None:
            from bench.pg import next_xid

            after = await asyncio.to_thread(next_xid, self.ctx.pg_url or "")
            if after is None:
                return None
            return {"commits": after - self._xid, "statements": None}
        return None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def max_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def proc_status_kib(field_name: str = "VmRSS") -> int:
    """A memory figure of this process from ``/proc/self/status`` (KiB); 0 if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_after_gc_kib() -> int:
    """VmRSS after a full garbage collection."""
    gc.collect()
    gc.collect()
    return proc_status_kib("VmRSS")


def fanout_metrics(spans: Sequence[tuple[float, float]], steps: int) -> dict[str, float]:
    """Throughput and latency of a fan-out run from per-workflow (start, end) times."""
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    elapsed = last - first
    latencies = [e - s for s, e in spans]
    return {
        "elapsed_s": elapsed,
        "workflows": len(spans),
        "wf_per_s": len(spans) / elapsed,
        "steps_per_s": len(spans) * steps / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


def seq_metrics(elapsed: float, steps: int) -> dict[str, float]:
    """Throughput of a sequential run."""
    return {
        "elapsed_s": elapsed,
        "steps": steps,
        "steps_per_s": steps / elapsed,
        "us_per_step": elapsed / steps * 1e6,
    }


def replay_events_to_steps(events: int) -> int:
    """Activities of the ``chain`` workflow whose history has ``events`` events:
    WorkflowStarted, (ActivityScheduled, ActivityCompleted) per step, WorkflowCompleted."""
    return max(1, (events - 2) // 2)


class WarningCounter(logging.Handler):
    """Counts WARNING-or-worse log records (e.g. DBOS's "connection pool exhausted")
    and keeps the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []
        self._loggers: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(f"{record.name}: {record.getMessage()[:200]}")

    def install(self, *loggers: str) -> WarningCounter:
        """Attach to the named loggers."""
        for name in loggers:
            logging.getLogger(name).addHandler(self)
            self._loggers.append(name)
        return self

    def uninstall(self) -> None:
        """Detach (before a teardown whose own warnings are not part of the measurement)."""
        for name in self._loggers:
            logging.getLogger(name).removeHandler(self)
        self._loggers.clear()

    def to_dict(self) -> dict[str, object]:
        """For the JSON result."""
        return {"count": self.count, "samples": self.samples}


def thread_count() -> int:
    """Threads alive in this process."""
    return threading.active_count()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return float(total - idle), float(total)


def busy_percent(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Machine-wide CPU busy % between two :func:`cpu_times` readings (100 = all cores)."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    return busy / total * 100.0 if total > 0 else None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used by a process (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


def postgres_cpu_seconds(dbname: str | None = None) -> float:
    """User + system CPU seconds of the local server's backends connected to ``dbname``
    (matched on their process title), or of every ``postgres`` process when ``None``.
    Backends that exit between two samples drop out of the sum, so sample around a
    window in which the measured connections stay open."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    needle = f" {dbname} ".encode() if dbname else None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
            if raw[raw.find(b"(") + 1 : raw.rfind(b")")] != b"postgres":
                continue
            if needle is not None:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle not in f.read().replace(b"\0", b" "):
                        continue
        except OSError:
            continue
        fields = raw.rsplit(b")", 1)[1].split()
        try:
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (IndexError, ValueError):
            continue
    return total


def database_name(url: str | None) -> str | None:
    """The database named by a PostgreSQL URL."""
    if not url:
        return None
    from urllib.parse import urlparse

    return urlparse(url).path.lstrip("/") or None


def wall_clock() -> float:
    """Seconds since the epoch (comparable between processes on this machine)."""
    return time.time()
