"""``python -m bench``: Stalwart vs DBOS Transact on SQLite and PostgreSQL.

See bench/README.md for what is measured and what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from bench import pg
from bench.common import (
    DBOS_DEFAULT,
    DBOS_FULL,
    DBOS_NORMAL,
    DBOS_PG,
    SCENARIOS,
    STALWART_FULL,
    STALWART_MEMORY,
    STALWART_NORMAL,
    STALWART_PG,
    Sizes,
    Target,
)
from bench.proc import child_env
from bench.report import Collected, load_average, render, source_state

CHILD_TIMEOUT = 900.0
BIG_TIMEOUT = 1800.0
HEAVY = ("sleepers", "replay")
"""Scenarios run with ``--heavy-reps`` repetitions (default 1) instead of ``--reps``."""
REFERENCE = {("seq", DBOS_DEFAULT.key), ("fanout", DBOS_DEFAULT.key), ("scale", DBOS_PG.key)}
"""Reference rows (DBOS's untouched SQLite settings; DBOS in the scale table, the same
run as its fanout row) also run with ``--heavy-reps`` repetitions, to keep the full run
under 20 minutes; the tables mark rows with fewer repetitions."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Stalwart against DBOS Transact on SQLite and PostgreSQL.",
    )
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument(
        "--store",
        choices=("memory", "sqlite", "postgres", "all"),
        default="all",
        help="memory: Stalwart memory:// only; sqlite / postgres: Stalwart and DBOS on it",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3, or 1 with --quick)"
    )
    parser.add_argument(
        "--heavy-reps",
        type=int,
        default=1,
        help="repetitions of the heavy scenarios (sleepers, replay); default 1",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--seq-steps", type=int, default=None, help="override the seq size")
    parser.add_argument(
        "--fanout-workflows", type=int, default=None, help="override the fanout size"
    )
    parser.add_argument(
        "--sleepers", type=int, default=None, help="override the Stalwart sleepers count"
    )
    parser.add_argument(
        "--start-concurrency",
        type=int,
        default=None,
        help="sleepers being started at once (default 500)",
    )
    parser.add_argument(
        "--sleepers-big",
        action="store_true",
        help="also run 100,000 sleepers (Stalwart only, SQLite and/or PostgreSQL)",
    )
    parser.add_argument(
        "--no-dbos-default",
        action="store_true",
        help="skip DBOS with its untouched SQLite settings (rollback journal) in seq/fanout",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", pg.DEFAULT_PG_URL),
        help=f"PostgreSQL server, loopback only (default {pg.DEFAULT_PG_URL})",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every raw result here")
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary directory (databases)"
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1 or args.heavy_reps < 1:
        parser.error("--reps and --heavy-reps must be at least 1")
    pg.check_loopback(args.pg_url)
    return args


def build_sizes(args: argparse.Namespace) -> Sizes:
    """Default or quick sizes, with overrides applied."""
    sizes = Sizes.quick() if args.quick else Sizes()
    changes: dict[str, Any] = {}
    if args.seq_steps is not None:
        changes["seq_steps"] = args.seq_steps
    if args.fanout_workflows is not None:
        changes["fanout_workflows"] = args.fanout_workflows
    if args.sleepers is not None:
        changes["sleepers"] = args.sleepers
    if args.start_concurrency is not None:
        changes["start_concurrency"] = args.start_concurrency
    return Sizes(**{**sizes.to_dict(), **changes}) if changes else sizes


def build_groups(scenario: str, store: str, dbos_default: bool, sizes: Sizes) -> list[list[Target]]:
    """Targets of one scenario in groups that run back to back (a Stalwart/DBOS pair with
    the same durability forms one group, so the two alternate)."""
    mem = store in ("memory", "all")
    lite = store in ("sqlite", "all")
    post = store in ("postgres", "all")
    groups: list[list[Target]] = []
    if scenario in ("seq", "fanout"):
        if mem:
            groups.append([STALWART_MEMORY])
        if lite:
            groups.append([STALWART_FULL, DBOS_FULL])
            groups.append([STALWART_NORMAL, DBOS_NORMAL])
            if dbos_default:
                groups.append([DBOS_DEFAULT])
        if post:
            groups.append([STALWART_PG, DBOS_PG])
    elif scenario in ("sleepers", "recovery"):
        if lite:
            groups.append([STALWART_FULL, DBOS_FULL])
        if post:
            groups.append([STALWART_PG, DBOS_PG])
    elif scenario == "replay":
        if mem:
            groups.append([STALWART_MEMORY])
        if lite:
            groups.append([STALWART_FULL, DBOS_FULL])
        if post:
            groups.append([STALWART_PG, DBOS_PG])
    elif scenario == "scale" and post:
        groups.append(
            [Target("stalwart", "postgres", None, procs) for procs in sizes.scale_processes]
        )
        groups.append([DBOS_PG])
    return groups


@dataclass
class PgState:
    """What the parent knows about PostgreSQL: reachable? Stalwart's store usable?"""

    server: str
    info: dict[str, str] | None = None
    server_error: str | None = None
    stalwart_ok: bool = False
    stalwart_reason: str = "not checked"

    def unavailable(self, target: Target) -> str | None:
        """Why ``target`` cannot run (None: it can)."""
        if target.store != "postgres":
            return None
        if self.info is None:
            return f"PostgreSQL server unavailable: {self.server_error}"
        if target.engine == "stalwart" and not self.stalwart_ok:
            return f"PostgreSQL store unavailable: {self.stalwart_reason}"
        return None


def run_child(
    spec: dict[str, Any],
    tmp_root: str,
    pg_server: str | None = None,
    timeout: float = CHILD_TIMEOUT,
) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, inside its own temporary directory
    (also its working directory, so nothing is written to the repository). With
    ``pg_server``, a fresh database is created for it and dropped afterwards."""
    workdir = tempfile.mkdtemp(prefix="run-", dir=tmp_root)
    out_path = os.path.join(workdir, "result.json")
    dbname = None
    try:
        if pg_server is not None:
            dbname = pg.new_db_name()
            spec = {**spec, "pg_url": pg.create_database(pg_server, dbname)}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.child",
                json.dumps({**spec, "workdir": workdir}),
                out_path,
            ],
            cwd=workdir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0 or not os.path.exists(out_path):
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"exit code {proc.returncode}:\n{tail}")
        with open(out_path, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
        return result
    finally:
        if dbname is not None and pg_server is not None:
            pg.drop_database(pg_server, dbname)
        shutil.rmtree(workdir, ignore_errors=True)


def _summary(scenario: str, result: dict[str, Any]) -> str:
    m = result["metrics"]
    if scenario == "seq":
        return f"{m['steps_per_s']:,.0f} steps/s ({m['us_per_step']:,.0f} µs/step)"
    if scenario == "fanout":
        return f"{m['wf_per_s']:,.0f} wf/s, p50 {m['p50_ms']:,.0f} ms, p99 {m['p99_ms']:,.0f} ms"
    if scenario == "sleepers":
        return (
            f"{m['workflows']:,} started in {m['start_s']:.1f} s, "
            f"{m['bytes_per_wf']:,.0f} B/wf, RSS {m['rss_after_mib']:.0f} MiB"
        )
    if scenario == "recovery":
        return (
            f"restart-to-done {m['restart_to_done_s']:.2f} s, "
            f"{m['duplicates']} duplicate(s), {m['recorded_at_kill']} recorded at kill"
        )
    if scenario == "replay":
        return ", ".join(f"{k} events: {v['total_ms']:,.1f} ms" for k, v in m.items())
    if scenario == "scale":
        return f"{m['store_wf_per_s']:,.0f} wf/s (store timestamps)"
    return ""


def _reps_for(scenario: str, args: argparse.Namespace) -> int:
    return min(args.reps, args.heavy_reps) if scenario in HEAVY else args.reps


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the tables."""
    args = parse_args(argv)
    sizes = build_sizes(args)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    plan = {s: build_groups(s, args.store, not args.no_dbos_default, sizes) for s in scenarios}
    reps = {s: _reps_for(s, args) for s in scenarios}
    data = Collected(sizes=sizes, reps=reps, scenarios=scenarios, plan=plan)
    # Not a terminal (piped, CI): use a width that fits the tables instead of 80.
    out = Console(width=None if sys.stdout.isatty() else 220)
    log = Console(stderr=True, soft_wrap=True)
    started = time.perf_counter()
    data.load_start = load_average()
    data.source_start = source_state()
    tmp_root = tempfile.mkdtemp(prefix="stalwart-bench-")
    want_pg = args.store in ("postgres", "all") and (
        any(t.store == "postgres" for gs in plan.values() for g in gs for t in g)
        or args.sleepers_big
    )
    state = PgState(args.pg_url)
    jobs: list[tuple[int, str, Target]] = []
    for rep in range(max(reps.values())):
        for scenario in scenarios:
            if rep >= reps[scenario]:
                continue
            for group in plan[scenario]:
                # Alternate which engine goes first, so drift hits both sides alike.
                for target in group if rep % 2 == 0 else list(reversed(group)):
                    if (scenario, target.key) in REFERENCE and rep >= args.heavy_reps:
                        continue
                    jobs.append((rep, scenario, target))
    big_targets: list[Target] = []
    if args.sleepers_big:
        if args.store in ("sqlite", "all"):
            big_targets.append(STALWART_FULL)
        if args.store in ("postgres", "all"):
            big_targets.append(STALWART_PG)
    data.big_targets = big_targets
    total = len(jobs) + len(big_targets)
    done = 0
    try:
        if want_pg:
            log.print(f"checking PostgreSQL at {args.pg_url} ...")
            try:
                check = run_child(
                    {"kind": "pg_check", "pg_server": args.pg_url, "sizes": sizes.to_dict()},
                    tmp_root,
                    timeout=120,
                )
                state.info = check["server"]
                state.server_error = check["server_error"]
                state.stalwart_ok = bool(check["stalwart_ok"])
                state.stalwart_reason = str(check["stalwart_reason"])
            except Exception as exc:
                state.server_error = f"check failed: {exc}"
                state.stalwart_reason = state.server_error
            data.pg_info = state.info
            if state.info is None:
                log.print(f"[yellow]PostgreSQL unavailable: {state.server_error}[/yellow]")
            elif not state.stalwart_ok:
                log.print(f"[yellow]Stalwart PostgreSQL store: {state.stalwart_reason}[/yellow]")
        data.unavailable = {
            t.key: reason
            for gs in plan.values()
            for g in gs
            for t in g
            if (reason := state.unavailable(t)) is not None
        }
        if args.store in ("sqlite", "all") and any(
            t.store == "sqlite" for gs in plan.values() for g in gs for t in g
        ):
            log.print(f"raw SQLite commit rate ({sizes.raw_seconds:g} s per mode)...")
            try:
                data.raw = run_child({"kind": "raw", "sizes": sizes.to_dict()}, tmp_root)
            except Exception as exc:
                data.failures.append(f"raw sqlite: {exc}")
        if want_pg and state.info is not None:
            log.print(
                f"raw PostgreSQL commit rate ({sizes.raw_seconds:g} s with 1 and "
                f"{sizes.raw_pg_connections} connections)..."
            )
            try:
                data.raw_pg = run_child(
                    {"kind": "raw_pg", "sizes": sizes.to_dict()}, tmp_root, pg_server=args.pg_url
                )
            except Exception as exc:
                data.failures.append(f"raw postgresql: {exc}")
        for rep, scenario, target in jobs:
            done += 1
            prefix = f"[{done:>2}/{total}] rep {rep + 1} {scenario:<8} {_label(target):<30}"
            if target.key in data.unavailable:
                continue
            t0 = time.perf_counter()
            spec = {
                "kind": "engine",
                "scenario": scenario,
                "target": target.to_dict(),
                "sizes": sizes.to_dict(),
            }
            try:
                result = run_child(
                    spec, tmp_root, pg_server=args.pg_url if target.store == "postgres" else None
                )
            except Exception as exc:
                data.failures.append(f"rep {rep + 1} {scenario} {_label(target)}: {exc}")
                log.print(f"{prefix} [red]failed[/red]")
                continue
            data.add(scenario, target, result)
            log.print(f"{prefix} {_summary(scenario, result)} [{time.perf_counter() - t0:.1f} s]")
        for target in big_targets:
            done += 1
            prefix = f"[{done:>2}/{total}] big sleepers {_label(target):<30}"
            reason = state.unavailable(target)
            if reason is not None:
                data.unavailable[target.key] = reason
                continue
            t0 = time.perf_counter()
            spec = {
                "kind": "engine",
                "scenario": "sleepers",
                "target": target.to_dict(),
                "sizes": sizes.to_dict(),
                "extra": {"big": True},
            }
            try:
                result = run_child(
                    spec,
                    tmp_root,
                    pg_server=args.pg_url if target.store == "postgres" else None,
                    timeout=BIG_TIMEOUT,
                )
            except Exception as exc:
                data.failures.append(f"big sleepers {_label(target)}: {exc}")
                log.print(f"{prefix} [red]failed[/red]")
                continue
            data.add("sleepers-big", target, result)
            log.print(f"{prefix} {_summary('sleepers', result)} [{time.perf_counter() - t0:.1f} s]")
    finally:
        if args.keep_tmp:
            log.print(f"kept {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)
    data.wall_s = time.perf_counter() - started
    data.load_end = load_average()
    data.source_end = source_state()
    render(data, out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data.to_json(), f, indent=2)
    return 1 if data.failures else 0


def _label(target: Target) -> str:
    return target.label + (f" x{target.procs}" if target.procs > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
