"""Turning the collected measurements into the printed tables."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import Sizes, Target

Result = dict[str, Any]


@dataclass
class Collected:
    """Every measurement of one run of ``python -m bench``."""

    sizes: Sizes
    reps: int
    scenarios: list[str]
    targets: list[Target]
    raw: Result | None = None
    runs: dict[tuple[str, str], list[Result]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load_start: str = ""
    load_end: str = ""

    def add(self, scenario: str, target: Target, result: Result) -> None:
        """Record one successful measurement."""
        self.runs.setdefault((scenario, target.key), []).append(result)

    def results(self, scenario: str, target: Target) -> list[Result]:
        """The measurements of ``target`` in ``scenario`` (one per repetition)."""
        return self.runs.get((scenario, target.key), [])

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``--json``."""
        return {
            "machine": machine_info(),
            "sizes": self.sizes.to_dict(),
            "reps": self.reps,
            "raw": self.raw,
            "runs": {f"{s} {k}": v for (s, k), v in self.runs.items()},
            "failures": self.failures,
            "wall_s": self.wall_s,
            "load_start": self.load_start,
            "load_end": self.load_end,
        }


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews the numbers)."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "sqlite": f"{sqlite3.sqlite_version} (python sqlite3 module)",
        "packages": (
            f"stalwart {_version('stalwart')}, dbos {_version('dbos')}, "
            f"SQLAlchemy {_version('sqlalchemy')}"
        ),
    }


# ------------------------------------------------------------------------------- helpers
def _median(results: Sequence[Result], get: Callable[[Result], float | None]) -> float | None:
    values = [v for v in (get(r) for r in results) if v is not None]
    return statistics.median(values) if values else None


def _metric(name: str) -> Callable[[Result], float | None]:
    return lambda r: r["metrics"].get(name)


def _per_unit(kind: str) -> Callable[[Result], float | None]:
    def get(r: Result) -> float | None:
        sql = r.get("sql")
        if not sql:
            return None
        return float(sql[kind]) / float(r["units"])

    return get


def _fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _spread(results: Sequence[Result], name: str) -> str:
    values = [r["metrics"][name] for r in results]
    if len(values) < 2:
        return "—"
    return f"{min(values):,.0f}..{max(values):,.0f}"


def _settings(results: Sequence[Result]) -> tuple[str, str]:
    journals = sorted({r["settings"]["journal_mode"] for r in results})
    syncs = sorted({r["settings"]["synchronous"] for r in results})
    return "/".join(journals) or "—", "/".join(syncs) or "—"


def _counterpart(target: Target, targets: Sequence[Target]) -> Target | None:
    """The DBOS target with the same durability as a Stalwart SQLite target."""
    if target.engine != "stalwart" or target.store != "sqlite":
        return None
    for other in targets:
        if other.engine == "dbos" and other.synchronous == target.synchronous:
            return other
    return None


def _ratio(data: Collected, scenario: str, target: Target, metric: str) -> tuple[str, float | None]:
    other = _counterpart(target, data.targets)
    if other is None:
        return "—", None
    mine = _median(data.results(scenario, target), _metric(metric))
    theirs = _median(data.results(scenario, other), _metric(metric))
    if mine is None or theirs is None or theirs == 0:
        return "—", None
    ratio = mine / theirs
    return f"{ratio:.2f}x", ratio


# -------------------------------------------------------------------------------- tables
def header_table(data: Collected) -> Table:
    """Machine, sizes and the durability settings each engine actually ran with."""
    table = Table(title="Stalwart vs DBOS Transact: durable-execution overhead", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in machine_info().items():
        table.add_row(key, value)
    table.add_row(
        "load avg 1/5/15m", f"{data.load_start} at start, {data.load_end} at end (cores busy)"
    )
    s = data.sizes
    table.add_row(
        "sizes",
        f"seq: 1 workflow x {s.seq_steps:,} steps; fanout: {s.fanout_workflows:,} workflows x "
        f"{s.fanout_steps} steps; {data.reps} repetition(s), medians shown; "
        f"every measurement in a fresh process",
    )
    for target in data.targets:
        results = [r for sc in data.scenarios for r in data.results(sc, target)]
        if not results:
            continue
        journal, sync = _settings(results)
        table.add_row(
            f"{target.label}",
            f"journal_mode={journal}  synchronous={sync}  (queried from the engine's connection)",
        )
    if data.raw is not None:
        for mode, r in data.raw["modes"].items():
            st = r["settings"]
            table.add_row(
                f"raw sqlite {mode}",
                f"journal_mode={st['journal_mode']}  synchronous={st['synchronous']}",
            )
    return table


def raw_table(data: Collected) -> Table | None:
    """The raw SQLite commit rate."""
    if data.raw is None:
        return None
    table = Table(
        title=f"Raw SQLite commit rate (1-row INSERT + COMMIT, {data.sizes.raw_seconds:g} s each)"
    )
    table.add_column("synchronous")
    table.add_column("journal_mode")
    table.add_column("commits/s", justify="right")
    table.add_column("µs/commit", justify="right")
    for mode, r in data.raw["modes"].items():
        table.add_row(
            mode,
            r["settings"]["journal_mode"],
            _fmt(r["commits_per_s"]),
            _fmt(r["us_per_commit"], ",.1f"),
        )
    return table


def seq_table(data: Collected) -> Table:
    """The ``seq`` scenario."""
    s = data.sizes
    table = Table(title=f"seq: one workflow running {s.seq_steps:,} sequential no-op steps")
    for name, justify in (
        ("engine / store", "left"),
        ("journal", "left"),
        ("sync", "left"),
        ("steps/s", "right"),
        ("µs/step", "right"),
        ("steps/s min..max", "right"),
        ("commits/step", "right"),
        ("SQL stmts/step", "right"),
        ("Stalwart/DBOS", "right"),
        ("% of raw commits/s", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for target in data.targets:
        results = data.results("seq", target)
        if not results:
            continue
        journal, sync = _settings(results)
        steps = _median(results, _metric("steps_per_s"))
        pct = "—"
        if data.raw is not None and target.store == "sqlite" and steps is not None:
            raw = data.raw["modes"].get(target.synchronous or "FULL")
            if raw is not None:
                pct = f"{steps / raw['commits_per_s'] * 100:.1f}%"
        table.add_row(
            target.label,
            journal,
            sync,
            _fmt(steps),
            _fmt(_median(results, _metric("us_per_step")), ",.0f"),
            _spread(results, "steps_per_s"),
            _fmt(_median(results, _per_unit("commits")), ".2f"),
            _fmt(_median(results, _per_unit("statements")), ".1f"),
            _ratio(data, "seq", target, "steps_per_s")[0],
            pct,
        )
    return table


def fanout_table(data: Collected) -> Table:
    """The ``fanout`` scenario."""
    s = data.sizes
    table = Table(
        title=(
            f"fanout: {s.fanout_workflows:,} workflows x {s.fanout_steps} sequential no-op steps, "
            "all started at once"
        )
    )
    for name, justify in (
        ("engine / store", "left"),
        ("journal", "left"),
        ("sync", "left"),
        ("workflows/s", "right"),
        ("steps/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("wf/s min..max", "right"),
        ("commits/wf", "right"),
        ("SQL stmts/wf", "right"),
        ("threads", "right"),
        ("Stalwart/DBOS", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for target in data.targets:
        results = data.results("fanout", target)
        if not results:
            continue
        journal, sync = _settings(results)
        table.add_row(
            target.label,
            journal,
            sync,
            _fmt(_median(results, _metric("wf_per_s"))),
            _fmt(_median(results, _metric("steps_per_s"))),
            _fmt(_median(results, _metric("p50_ms"))),
            _fmt(_median(results, _metric("p99_ms"))),
            _spread(results, "wf_per_s"),
            _fmt(_median(results, _per_unit("commits")), ".2f"),
            _fmt(_median(results, _per_unit("statements")), ".1f"),
            _fmt(_median(results, lambda r: r.get("threads")), ".0f"),
            _ratio(data, "fanout", target, "wf_per_s")[0],
        )
    return table


def render(data: Collected, console: Console) -> None:
    """Print every table."""
    console.print(header_table(data))
    raw = raw_table(data)
    if raw is not None:
        console.print(raw)
    if "seq" in data.scenarios:
        console.print(seq_table(data))
    if "fanout" in data.scenarios:
        console.print(fanout_table(data))
    console.print(
        "Stalwart/DBOS = Stalwart throughput ÷ DBOS throughput at the same journal_mode and "
        "synchronous (> 1: Stalwart is faster). commits and SQL statements are counted with "
        "sqlite3 trace callbacks during the measured part only (background pollers included)."
    )
    for (scenario, key), results in data.runs.items():
        count = sum(r.get("warnings", {}).get("count", 0) for r in results)
        if count:
            sample = next(s for r in results for s in r["warnings"]["samples"])
            console.print(
                f"[yellow]note[/yellow] {scenario} {key}: {count} warning(s) logged during the "
                f"measured runs, e.g. {sample}"
            )
    for failure in data.failures:
        console.print(f"[red]FAILED[/red] {failure}")
    console.print(f"Total benchmark wall time: {data.wall_s:.1f} s")
