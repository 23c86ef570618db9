"""Shared pieces of the benchmark: what to run, sizes, statistics, SQL counting."""

from __future__ import annotations

import itertools
import logging
import math
import resource
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
"""``PRAGMA synchronous`` returns a number; these are the names SQLite documents."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is."""

    seq_steps: int = 1_000
    fanout_workflows: int = 1_000
    fanout_steps: int = 5
    raw_seconds: float = 2.0
    warmup_steps: int = 20
    warmup_workflows: int = 20

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
        )

    def to_dict(self) -> dict[str, Any]:
        """For passing to a child process as JSON."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Target:
    """One engine configuration: which engine, which store, which durability.

    ``synchronous=None`` with ``engine="dbos"`` means DBOS's own, untouched SQLite
    settings (rollback journal, SQLite's default synchronous).
    """

    engine: str
    store: str
    synchronous: str | None

    @property
    def label(self) -> str:
        """Short row label."""
        if self.store == "memory":
            return f"{self.engine} memory://"
        if self.synchronous is None:
            return f"{self.engine} sqlite (engine default)"
        return f"{self.engine} sqlite WAL {self.synchronous}"

    @property
    def key(self) -> str:
        """A stable identifier (used in the JSON dump)."""
        return f"{self.engine}/{self.store}/{self.synchronous or 'default'}"


STALWART_MEMORY = Target("stalwart", "memory", None)
STALWART_FULL = Target("stalwart", "sqlite", "FULL")
STALWART_NORMAL = Target("stalwart", "sqlite", "NORMAL")
DBOS_FULL = Target("dbos", "sqlite", "FULL")
DBOS_NORMAL = Target("dbos", "sqlite", "NORMAL")
DBOS_DEFAULT = Target("dbos", "sqlite", None)


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


class WarningCounter(logging.Handler):
    """Counts WARNING-or-worse log records (e.g. DBOS's "connection pool exhausted")
    and keeps the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(f"{record.name}: {record.getMessage()[:200]}")

    def install(self, *loggers: str) -> WarningCounter:
        """Attach to the named loggers."""
        for name in loggers:
            logging.getLogger(name).addHandler(self)
        return self

    def to_dict(self) -> dict[str, object]:
        """For the JSON result."""
        return {"count": self.count, "samples": self.samples}


def thread_count() -> int:
    """Threads alive in this process."""
    return threading.active_count()
