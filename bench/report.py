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
    reps: dict[str, int]
    scenarios: list[str]
    plan: dict[str, list[list[Target]]]
    raw: Result | None = None
    raw_pg: Result | None = None
    pg_info: dict[str, str] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    big_targets: list[Target] = field(default_factory=list)
    runs: dict[tuple[str, str], list[Result]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load_start: str = ""
    load_end: str = ""
    source_start: str = ""
    source_end: str = ""

    def add(self, scenario: str, target: Target, result: Result) -> None:
        """Record one successful measurement."""
        self.runs.setdefault((scenario, target.key), []).append(result)

    def results(self, scenario: str, target: Target) -> list[Result]:
        """The measurements of ``target`` in ``scenario`` (one per repetition)."""
        return self.runs.get((scenario, target.key), [])

    def targets(self, scenario: str) -> list[Target]:
        """The targets of ``scenario`` in display order."""
        return [t for group in self.plan.get(scenario, []) for t in group]

    def all_targets(self) -> list[Target]:
        """Every target of every scenario, once, in display order."""
        seen: dict[str, Target] = {}
        for scenario in self.scenarios:
            for t in self.targets(scenario):
                if t.procs == 1:
                    seen.setdefault(t.key, t)
        for t in self.big_targets:
            seen.setdefault(t.key, t)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``--json``."""
        return {
            "machine": machine_info(),
            "postgresql": self.pg_info,
            "sizes": self.sizes.to_dict(),
            "reps": self.reps,
            "raw": self.raw,
            "raw_pg": self.raw_pg,
            "unavailable": self.unavailable,
            "runs": {f"{s} {k}": v for (s, k), v in self.runs.items()},
            "failures": self.failures,
            "wall_s": self.wall_s,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "source_start": self.source_start,
            "source_end": self.source_end,
        }


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews the numbers)."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def source_state() -> str:
    """The commit of the Stalwart source tree measured, and whether ``src/`` had
    uncommitted changes (read-only git commands)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return f"{sha}{' + uncommitted changes in src/' if dirty else ''}"


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


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "n/a"


def _filesystem() -> str:
    """The file system holding the temporary directory (where the SQLite files live)."""
    import tempfile

    tmp = os.path.realpath(tempfile.gettempdir())
    best = ("", "?", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (tmp == mnt or tmp.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(
                    best[0]
                ):
                    best = (mnt, fstype, dev)
    except OSError:
        return "n/a"
    return f"{tmp} on {best[0]} ({best[1]}, {best[2]})"


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "memory": _memory(),
        "temp dir": _filesystem(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "sqlite": f"{sqlite3.sqlite_version} (python sqlite3 module)",
        "packages": (
            f"stalwart {_version('stalwart')}, dbos {_version('dbos')}, "
            f"SQLAlchemy {_version('sqlalchemy')}, psycopg {_version('psycopg')}"
        ),
    }


# ------------------------------------------------------------------------------- helpers
def _median(results: Sequence[Result], get: Callable[[Result], Any]) -> float | None:
    values = [v for v in (get(r) for r in results) if v is not None]
    return statistics.median(values) if values else None


def _metric(name: str) -> Callable[[Result], Any]:
    return lambda r: r["metrics"].get(name)


def _per_unit(kind: str) -> Callable[[Result], float | None]:
    def get(r: Result) -> float | None:
        sql = r.get("sql")
        if not sql or sql.get(kind) is None:
            return None
        return float(sql[kind]) / float(r["units"])

    return get


def _fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _spread(results: Sequence[Result], name: str, spec: str = ",.0f") -> str:
    values = [r["metrics"][name] for r in results if r["metrics"].get(name) is not None]
    if len(values) < 2:
        return "—"
    return f"{min(values):{spec}}..{max(values):{spec}}"


def _durability(results: Sequence[Result]) -> str:
    """The durability settings read back from the engine's connection."""
    values: dict[str, set[str]] = {}
    for r in results:
        for k, v in (r.get("settings") or {}).items():
            values.setdefault(k, set()).add(str(v))
    if not values:
        return "—"
    if "journal_mode" in values:
        j = "/".join(sorted(values["journal_mode"]))
        s = "/".join(sorted(values.get("synchronous", {"?"})))
        return "n/a (memory)" if j.startswith("n/a") else f"{j} {s}"
    short = {"synchronous_commit": "sync_commit", "fsync": "fsync", "wal_sync_method": "wal_sync"}
    return " ".join(f"{short.get(k, k)}={'/'.join(sorted(v))}" for k, v in values.items())


def _label(target: Target) -> str:
    return target.label


def _row_label(data: Collected, scenario: str, target: Target, label: str | None = None) -> str:
    """The row label, marked when the row ran fewer repetitions than the scenario."""
    n = len(data.results(scenario, target))
    label = label or target.label
    want = data.reps.get(scenario, 1)
    return f"{label} ({n} rep{'s' if n != 1 else ''})" if 0 < n < want else label


def _counterpart(target: Target, targets: Sequence[Target]) -> Target | None:
    """The DBOS target with the same store and durability as a Stalwart target."""
    if target.engine != "stalwart" or target.store == "memory":
        return None
    for other in targets:
        if (
            other.engine == "dbos"
            and other.store == target.store
            and other.synchronous == target.synchronous
        ):
            return other
    return None


def _ratio(
    data: Collected, scenario: str, target: Target, metric: str, inverse: bool = False
) -> tuple[str, float | None]:
    other = _counterpart(target, data.targets(scenario))
    if other is None:
        return "—", None
    mine = _median(data.results(scenario, target), _metric(metric))
    theirs = _median(data.results(scenario, other), _metric(metric))
    if mine is None or theirs is None or mine == 0 or theirs == 0:
        return "—", None
    ratio = theirs / mine if inverse else mine / theirs
    return f"{ratio:.2f}x", ratio


def _na_row(table: Table, data: Collected, target: Target, label: str | None = None) -> bool:
    """An ``n/a (reason)`` row when the target could not run; True if one was added."""
    reason = data.unavailable.get(target.key)
    if reason is None:
        return False
    cells = [label or _label(target), f"n/a ({reason})"]
    cells += [""] * (len(table.columns) - 2)
    table.add_row(*cells)
    return True


def _table(title: str, columns: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title)
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def _reps_note(data: Collected, scenario: str) -> str:
    n = data.reps.get(scenario, 1)
    return f"{n} repetition{'s' if n != 1 else ''}" + (", medians" if n > 1 else "")


# -------------------------------------------------------------------------------- tables
def header_table(data: Collected) -> Table:
    """Machine, sizes and the durability settings each engine actually ran with."""
    table = Table(title="Stalwart vs DBOS Transact: durable-execution overhead", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in machine_info().items():
        table.add_row(key, value)
    if data.pg_info is not None:
        i = data.pg_info
        table.add_row(
            "postgresql",
            f"{i['server_version']} on 127.0.0.1 (same machine): synchronous_commit="
            f"{i['synchronous_commit']} fsync={i['fsync']} wal_sync_method="
            f"{i['wal_sync_method']} commit_delay={i['commit_delay']} shared_buffers="
            f"{i['shared_buffers']} max_connections={i['max_connections']}",
        )
    table.add_row(
        "load avg 1/5/15m", f"{data.load_start} at start, {data.load_end} at end (cores busy)"
    )
    source = data.source_start
    if data.source_end and data.source_end != data.source_start:
        source += f" at start, {data.source_end} at end (the source changed during the run)"
    table.add_row("stalwart source", source or "n/a")
    s = data.sizes
    reps = ", ".join(f"{k} {v}" for k, v in data.reps.items())
    table.add_row(
        "sizes",
        f"seq 1 wf x {s.seq_steps:,} steps; fanout {s.fanout_workflows:,} wf x "
        f"{s.fanout_steps} steps; sleepers {s.sleepers:,} (DBOS {s.sleepers_dbos:,}) x "
        f"{s.sleep_seconds:g} s; recovery {s.recovery_steps} steps x "
        f"{s.recovery_step_ms:g} ms, kill after {s.recovery_kill_after}; replay "
        f"{', '.join(f'{e:,}' for e in s.replay_events)} events; scale {s.scale_workflows:,} wf x "
        f"{s.scale_steps} steps on {', '.join(map(str, s.scale_processes))} processes",
    )
    table.add_row("repetitions", f"{reps} (each measurement in a fresh process)")
    for target in data.all_targets():
        results = [r for sc in data.scenarios for r in data.results(sc, target)]
        results += data.results("sleepers-big", target)
        if target.key in data.unavailable:
            table.add_row(target.label, f"n/a ({data.unavailable[target.key]})")
            continue
        if not results:
            continue
        table.add_row(target.label, f"{_durability(results)}  (read on the engine's connection)")
    if data.raw is not None:
        for mode, r in data.raw["modes"].items():
            st = r["settings"]
            table.add_row(
                f"raw sqlite {mode}",
                f"journal_mode={st['journal_mode']} synchronous={st['synchronous']}",
            )
    if data.raw_pg is not None:
        r = next(iter(data.raw_pg["modes"].values()))
        table.add_row("raw postgresql", _durability([r]))
    return table


def raw_table(data: Collected) -> Table | None:
    """The raw commit rates."""
    if data.raw is None and data.raw_pg is None:
        return None
    table = _table(
        f"Raw commit rate: 1-row INSERT + COMMIT in a loop, {data.sizes.raw_seconds:g} s each",
        [
            ("store", "left"),
            ("settings", "left"),
            ("connections", "right"),
            ("commits/s", "right"),
            ("µs/commit (per connection)", "right"),
        ],
    )
    if data.raw is not None:
        for mode, r in data.raw["modes"].items():
            table.add_row(
                f"sqlite WAL {mode}",
                f"{r['settings']['journal_mode']} {r['settings']['synchronous']}",
                "1",
                _fmt(r["commits_per_s"]),
                _fmt(r["us_per_commit"], ",.1f"),
            )
    if data.raw_pg is not None:
        for conns, r in data.raw_pg["modes"].items():
            table.add_row(
                "postgresql",
                _durability([r]),
                conns,
                _fmt(r["commits_per_s"]),
                _fmt(r["us_per_commit"], ",.1f"),
            )
    return table


def _raw_rate(data: Collected, target: Target, which: str = "1") -> float | None:
    if target.store == "sqlite" and data.raw is not None and which == "1":
        raw = data.raw["modes"].get(target.synchronous or "FULL")
        return None if raw is None else float(raw["commits_per_s"])
    if target.store == "postgres" and data.raw_pg is not None:
        modes = data.raw_pg["modes"]
        key = "1" if which == "1" else next((k for k in modes if k != "1"), None)
        raw = modes.get(key) if key else None
        return None if raw is None else float(raw["commits_per_s"])
    return None


def seq_table(data: Collected) -> Table:
    """The ``seq`` scenario."""
    s = data.sizes
    conns = data.sizes.raw_pg_connections
    table = _table(
        f"seq: one workflow running {s.seq_steps:,} sequential no-op steps "
        f"({_reps_note(data, 'seq')})",
        [
            ("engine / store", "left"),
            ("durability", "left"),
            ("steps/s", "right"),
            ("µs/step", "right"),
            ("steps/s min..max", "right"),
            ("commits/step", "right"),
            ("SQL stmts/step", "right"),
            ("Stalwart/DBOS", "right"),
            ("% of raw commits/s (1 conn)", "right"),
            (f"% of raw ({conns} conns)", "right"),
        ],
    )
    for target in data.targets("seq"):
        if _na_row(table, data, target):
            continue
        results = data.results("seq", target)
        if not results:
            continue
        steps = _median(results, _metric("steps_per_s"))
        pct1 = pct16 = "—"
        raw1 = _raw_rate(data, target, "1")
        raw16 = _raw_rate(data, target, "n")
        if steps is not None and raw1:
            pct1 = f"{steps / raw1 * 100:.1f}%"
        if steps is not None and raw16:
            pct16 = f"{steps / raw16 * 100:.1f}%"
        table.add_row(
            _row_label(data, "seq", target),
            _durability(results),
            _fmt(steps),
            _fmt(_median(results, _metric("us_per_step")), ",.0f"),
            _spread(results, "steps_per_s"),
            _fmt(_median(results, _per_unit("commits")), ".2f"),
            _fmt(_median(results, _per_unit("statements")), ".1f"),
            _ratio(data, "seq", target, "steps_per_s")[0],
            pct1,
            pct16,
        )
    return table


def fanout_table(data: Collected) -> Table:
    """The ``fanout`` scenario."""
    s = data.sizes
    table = _table(
        f"fanout: {s.fanout_workflows:,} workflows x {s.fanout_steps} sequential no-op steps, "
        f"all started at once ({_reps_note(data, 'fanout')})",
        [
            ("engine / store", "left"),
            ("durability", "left"),
            ("workflows/s", "right"),
            ("steps/s", "right"),
            ("p50 ms", "right"),
            ("p99 ms", "right"),
            ("wf/s min..max", "right"),
            ("commits/wf", "right"),
            ("SQL stmts/wf", "right"),
            ("threads", "right"),
            ("Stalwart/DBOS", "right"),
        ],
    )
    for target in data.targets("fanout"):
        if _na_row(table, data, target):
            continue
        results = data.results("fanout", target)
        if not results:
            continue
        table.add_row(
            _row_label(data, "fanout", target),
            _durability(results),
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


def sleepers_table(data: Collected, scenario: str = "sleepers") -> Table:
    """The ``sleepers`` scenario (or the 100,000-sleeper run)."""
    s = data.sizes
    if scenario == "sleepers":
        title = (
            f"sleepers: {s.sleepers:,} workflows (DBOS: {s.sleepers_dbos:,}) each sleeping "
            f"{s.sleep_seconds:g} s, started {s.start_concurrency} at a time "
            f"({_reps_note(data, 'sleepers')})"
        )
        targets = data.targets("sleepers")
    else:
        title = (
            f"sleepers, big run: {s.sleepers_big:,} Stalwart workflows each sleeping "
            f"{s.sleep_seconds_big:g} s (so none wakes before all are started)"
        )
        targets = data.big_targets
    table = _table(
        title,
        [
            ("engine / store", "left"),
            ("workflows", "right"),
            ("start s", "right"),
            ("starts/s", "right"),
            ("all blocked s", "right"),
            ("RSS before MiB", "right"),
            ("RSS after MiB", "right"),
            ("growth MiB", "right"),
            ("RSS / sleeping wf", "right"),
            ("peak RSS MiB", "right"),
            ("in memory", "right"),
            ("asleep", "right"),
            ("DBOS/Stalwart memory", "right"),
        ],
    )
    for target in targets:
        if _na_row(table, data, target):
            continue
        results = data.results(scenario, target)
        if not results:
            continue
        per = _median(results, _metric("bytes_per_wf"))
        ratio = "—"
        if scenario == "sleepers":
            ratio = _ratio(data, scenario, target, "bytes_per_wf", inverse=True)[0]
        table.add_row(
            target.label,
            _fmt(_median(results, _metric("workflows"))),
            _fmt(_median(results, _metric("start_s")), ".1f"),
            _fmt(_median(results, _metric("start_per_s"))),
            _fmt(_median(results, _metric("blocked_s")), ".1f"),
            _fmt(_median(results, _metric("rss_before_mib")), ".1f"),
            _fmt(_median(results, _metric("rss_after_mib")), ".1f"),
            _fmt(_median(results, _metric("rss_growth_mib")), ".1f"),
            "—" if per is None else f"{per / 1024:.2f} KiB",
            _fmt(_median(results, _metric("hwm_mib")), ".1f"),
            _fmt(_median(results, _metric("in_memory"))),
            _fmt(_median(results, _metric("sleeping_in_store"))),
            ratio,
        )
    return table


def recovery_table(data: Collected) -> Table:
    """The ``recovery`` scenario."""
    s = data.sizes
    table = _table(
        f"recovery: {s.recovery_steps}-step workflow ({s.recovery_step_ms:g} ms per step), "
        f"worker killed with SIGKILL after {s.recovery_kill_after} steps, fresh worker process "
        f"started ({_reps_note(data, 'recovery')}; times from the restart)",
        [
            ("engine / store", "left"),
            ("takeover", "left"),
            ("recorded at kill", "right"),
            ("remaining", "right"),
            ("imports s", "right"),
            ("engine open s", "right"),
            ("first resumed step s", "right"),
            ("restart-to-done s", "right"),
            ("min..max", "right"),
            ("floor s", "right"),
            ("duplicates", "right"),
            ("DBOS/Stalwart time", "right"),
        ],
    )
    for target in data.targets("recovery"):
        if _na_row(table, data, target):
            continue
        results = data.results("recovery", target)
        if not results:
            continue
        if target.engine == "dbos":
            how = "launch recovers its executor's pending workflows"
        elif target.store == "postgres":
            how = f"lease {s.recovery_lease_seconds:g} s (other host id)"
        else:
            how = "dead pid, same host"
        dups = [r["metrics"]["duplicates"] for r in results]
        table.add_row(
            target.label,
            how,
            _fmt(_median(results, _metric("recorded_at_kill"))),
            _fmt(_median(results, _metric("remaining_steps"))),
            _fmt(_median(results, _metric("imports_s")), ".2f"),
            _fmt(_median(results, _metric("restart_to_open_s")), ".2f"),
            _fmt(_median(results, _metric("restart_to_resume_s")), ".2f"),
            _fmt(_median(results, _metric("restart_to_done_s")), ".2f"),
            _spread(results, "restart_to_done_s", ".2f"),
            _fmt(_median(results, _metric("floor_s")), ".2f"),
            f"{max(dups)}" if len(set(dups)) == 1 else f"{min(dups)}..{max(dups)}",
            _ratio(data, "recovery", target, "restart_to_done_s", inverse=True)[0],
        )
    return table


def replay_table(data: Collected) -> Table:
    """The ``replay`` scenario."""
    s = data.sizes
    table = _table(
        "replay: rebuilding a workflow from its recorded history "
        f"({_reps_note(data, 'replay')}; Stalwart: median of {s.replay_repeats} in-process "
        f"load+replay; DBOS: median of {s.dbos_recover_repeats} recoveries)",
        [
            ("engine / store", "left"),
            ("history", "right"),
            ("what is timed", "left"),
            ("load ms", "right"),
            ("replay ms", "right"),
            ("total ms", "right"),
            ("min..max ms", "right"),
            ("µs/event", "right"),
            ("DBOS/Stalwart time", "right"),
        ],
    )
    for target in data.targets("replay"):
        if _na_row(table, data, target):
            continue
        results = data.results("replay", target)
        if not results:
            continue
        for events in s.replay_events:
            rows = [r["metrics"].get(str(events)) for r in results]
            rows = [r for r in rows if r]
            if not rows:
                continue
            steps = rows[0]["steps"]
            if target.engine == "dbos":
                what = (
                    f"recovery re-run through {rows[0].get('recorded_steps', steps)} recorded steps"
                )
                hist = f"{steps:,} steps"
            else:
                what = "load_history + replay_history"
                hist = f"{events:,} events"

            def med(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
                vals = [r[key] for r in rows if r.get(key) is not None]
                return statistics.median(vals) if vals else None

            total = med("total_ms")
            ratio = "—"
            other = _counterpart(target, data.targets("replay"))
            if other is not None and total:
                theirs = [r["metrics"].get(str(events)) for r in data.results("replay", other)]
                vals = [t["total_ms"] for t in theirs if t]
                if vals:
                    ratio = f"{statistics.median(vals) / total:.1f}x"
            table.add_row(
                target.label,
                hist,
                what,
                _fmt(med("load_ms"), ",.1f"),
                _fmt(med("replay_ms"), ",.1f"),
                _fmt(total, ",.1f"),
                f"{min(r['total_min_ms'] for r in rows):,.1f}.."
                f"{max(r['total_max_ms'] for r in rows):,.1f}",
                _fmt(med("us_per_event"), ",.1f"),
                ratio,
            )
    return table


def scale_table(data: Collected) -> Table:
    """The ``scale`` scenario."""
    s = data.sizes
    table = _table(
        f"scale (PostgreSQL): {s.scale_workflows:,} workflows x {s.scale_steps} no-op steps "
        f"started by a client process (worker=False), run by N worker processes "
        f"({_reps_note(data, 'scale')}; times from the store's timestamps)",
        [
            ("engine", "left"),
            ("worker processes", "right"),
            ("workflows/s", "right"),
            ("wf/s min..max", "right"),
            ("speedup vs 1", "right"),
            ("p50 ms", "right"),
            ("p99 ms", "right"),
            ("machine CPU busy", "right"),
            ("CPU s: workers", "right"),
            ("client", "right"),
            ("postgres", "right"),
        ],
    )
    base: float | None = None
    for target in data.targets("scale"):
        label = f"{target.engine} postgresql"
        if target.engine == "dbos":
            label += " (client and worker in 1 process)"
        if _na_row(table, data, target, label):
            continue
        results = data.results("scale", target)
        if not results:
            continue
        wfs = _median(results, _metric("store_wf_per_s"))
        if target.engine == "stalwart" and target.procs == 1:
            base = wfs
        speed = "—"
        if target.engine == "stalwart" and base and wfs:
            speed = f"{wfs / base:.2f}x"
        cpu = _median(results, lambda r: sum(r["metrics"].get("worker_cpu_s") or []) or None)
        table.add_row(
            _row_label(data, "scale", target, label),
            str(target.procs),
            _fmt(wfs),
            _spread(results, "store_wf_per_s"),
            speed,
            _fmt(_median(results, _metric("store_p50_ms"))),
            _fmt(_median(results, _metric("store_p99_ms"))),
            _fmt(_median(results, _metric("cpu_busy_pct")), ".0f", "%"),
            _fmt(cpu, ".1f"),
            _fmt(_median(results, _metric("client_cpu_s")), ".1f"),
            _fmt(_median(results, _metric("postgres_cpu_s")), ".1f"),
        )
    return table


# ---------------------------------------------------------------------------------- targets
def targets_table(data: Collected) -> Table:
    """Every performance target with the measured value and whether it is met."""
    title = "Targets"
    if data.sizes != Sizes():
        title += " (sizes differ from the defaults the targets are set for: indicative only)"
    table = _table(
        title,
        [
            ("scenario", "left"),
            ("target", "left"),
            ("row", "left"),
            ("measured", "right"),
            ("", "left"),
        ],
    )

    def add(scenario: str, goal: str, row: str, value: str, ok: bool | None) -> None:
        mark = "—" if ok is None else ("met" if ok else "NOT met")
        table.add_row(scenario, goal, row, value, mark)

    for target in data.targets("seq"):
        if target.engine != "stalwart" or target.store == "memory":
            continue
        if not data.results("seq", target):
            continue
        text, ratio = _ratio(data, "seq", target, "steps_per_s")
        if ratio is not None:
            add("seq", ">= 5x DBOS, same durability", target.label, text, ratio >= 5)
        steps = _median(data.results("seq", target), _metric("steps_per_s"))
        raw = _raw_rate(data, target, "1")
        if steps and raw:
            pct = steps / raw * 100
            add("seq", ">= 60% of raw 1-conn commits/s", target.label, f"{pct:.1f}%", pct >= 60)
    for target in data.targets("fanout"):
        if target.engine != "stalwart" or target.store == "memory":
            continue
        text, ratio = _ratio(data, "fanout", target, "wf_per_s")
        if ratio is not None:
            add("fanout", ">= 20x DBOS, same durability", target.label, text, ratio >= 20)
    for target in data.targets("sleepers"):
        if target.engine != "stalwart":
            continue
        per = _median(data.results("sleepers", target), _metric("bytes_per_wf"))
        if per is not None:
            add(
                "sleepers",
                "<= 2 KiB RSS per sleeping wf",
                target.label,
                f"{per / 1024:.2f} KiB",
                per <= 2048,
            )
    for target in data.big_targets:
        rss = _median(data.results("sleepers-big", target), _metric("rss_after_mib"))
        if rss is not None:
            add(
                "sleepers",
                f"{data.sizes.sleepers_big:,} sleepers < 400 MiB RSS",
                target.label,
                f"{rss:.0f} MiB",
                rss < 400,
            )
    for target in data.targets("recovery"):
        if target.engine != "stalwart":
            continue
        results = data.results("recovery", target)
        t = _median(results, _metric("restart_to_done_s"))
        if t is None:
            continue
        dups = max(r["metrics"]["duplicates"] for r in results)
        ok: bool | None = t <= 0.5 and dups <= 1 if target.store == "sqlite" else None
        goal = "<= 0.5 s restart-to-done, <= 1 duplicate"
        if target.store != "sqlite":
            goal += " (SQLite only; lease-bounded here)"
        add("recovery", goal, target.label, f"{t:.2f} s, {dups} dup", ok)
    for target in data.targets("replay"):
        if target.engine != "stalwart":
            continue
        vals = [
            r["metrics"]["1000"]["total_ms"]
            for r in data.results("replay", target)
            if "1000" in r["metrics"]
        ]
        if vals:
            v = statistics.median(vals)
            add("replay", "1,000 events < 50 ms", target.label, f"{v:.1f} ms", v < 50)
    scale = {t.procs: t for t in data.targets("scale") if t.engine == "stalwart"}
    most = max(scale) if scale else 1
    if 1 in scale and most > 1:
        one = _median(data.results("scale", scale[1]), _metric("store_wf_per_s"))
        top = _median(data.results("scale", scale[most]), _metric("store_wf_per_s"))
        if one and top:
            add(
                "scale",
                "4 processes >= 2.5x 1 process",
                f"stalwart postgresql x{most}",
                f"{top / one:.2f}x",
                top / one >= 2.5 if most == 4 else None,
            )
    return table


def render(data: Collected, console: Console) -> None:
    """Print every table."""
    console.print(header_table(data))
    raw = raw_table(data)
    if raw is not None:
        console.print(raw)
    builders = {
        "seq": seq_table,
        "fanout": fanout_table,
        "sleepers": sleepers_table,
        "recovery": recovery_table,
        "replay": replay_table,
        "scale": scale_table,
    }
    for scenario in data.scenarios:
        if data.plan.get(scenario):
            console.print(builders[scenario](data))
    if data.big_targets:
        console.print(sleepers_table(data, "sleepers-big"))
    console.print(targets_table(data))
    console.print(
        "Stalwart/DBOS = Stalwart throughput ÷ DBOS throughput at the same durability (> 1: "
        "Stalwart is faster); DBOS/Stalwart time or memory: how many times more DBOS needs. "
        "commits and SQL statements: sqlite3 trace callbacks (SQLite) during the measured "
        "part only, background pollers included; on PostgreSQL 'commits' are write "
        "transactions (transaction ids consumed, cluster-wide) and statements are not counted."
    )
    for (scenario, key), results in data.runs.items():
        count = sum((r.get("warnings") or {}).get("count", 0) for r in results)
        if count:
            sample = next(s for r in results for s in r["warnings"]["samples"])
            console.print(
                f"[yellow]note[/yellow] {scenario} {key}: {count} warning(s) logged during the "
                f"measured runs, e.g. {sample}"
            )
    for failure in data.failures:
        console.print(f"[red]FAILED[/red] {failure}")
    console.print(f"Total benchmark wall time: {data.wall_s:.1f} s")
