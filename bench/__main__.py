"""``python -m bench``: Stalwart vs DBOS Transact on the same SQLite durability.

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
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.common import (
    DBOS_DEFAULT,
    DBOS_FULL,
    DBOS_NORMAL,
    STALWART_FULL,
    STALWART_MEMORY,
    STALWART_NORMAL,
    Sizes,
    Target,
)
from bench.report import Collected, load_average, render

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 600.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Stalwart against DBOS Transact (both on SQLite).",
    )
    parser.add_argument("--scenario", choices=("seq", "fanout", "all"), default="all")
    parser.add_argument(
        "--store",
        choices=("memory", "sqlite", "all"),
        default="all",
        help="memory: Stalwart memory:// only; sqlite: Stalwart and DBOS on SQLite",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3, or 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--seq-steps", type=int, default=None, help="override the seq size")
    parser.add_argument(
        "--fanout-workflows", type=int, default=None, help="override the fanout size"
    )
    parser.add_argument(
        "--dbos-default",
        action="store_true",
        help="also run DBOS with its untouched SQLite settings (rollback journal)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every raw result here")
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary directory (databases)"
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def build_sizes(args: argparse.Namespace) -> Sizes:
    """Default or quick sizes, with overrides applied."""
    sizes = Sizes.quick() if args.quick else Sizes()
    changes: dict[str, Any] = {}
    if args.seq_steps is not None:
        changes["seq_steps"] = args.seq_steps
    if args.fanout_workflows is not None:
        changes["fanout_workflows"] = args.fanout_workflows
    return Sizes(**{**sizes.to_dict(), **changes}) if changes else sizes


def build_groups(store: str, dbos_default: bool) -> list[list[Target]]:
    """Targets in groups that are run back to back (a Stalwart/DBOS pair with the same
    durability forms one group, so the two alternate)."""
    groups: list[list[Target]] = []
    if store in ("memory", "all"):
        groups.append([STALWART_MEMORY])
    if store in ("sqlite", "all"):
        groups.append([STALWART_FULL, DBOS_FULL])
        groups.append([STALWART_NORMAL, DBOS_NORMAL])
        if dbos_default:
            groups.append([DBOS_DEFAULT])
    return groups


def run_child(spec: dict[str, Any], tmp_root: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, inside its own temporary directory
    (also its working directory, so nothing is written to the repository)."""
    workdir = tempfile.mkdtemp(prefix="run-", dir=tmp_root)
    out_path = os.path.join(workdir, "result.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.child",
                json.dumps({**spec, "workdir": workdir}),
                out_path,
            ],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 or not os.path.exists(out_path):
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"exit code {proc.returncode}:\n{tail}")
        with open(out_path, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _summary(scenario: str, result: dict[str, Any]) -> str:
    m = result["metrics"]
    if scenario == "seq":
        return f"{m['steps_per_s']:,.0f} steps/s ({m['us_per_step']:,.0f} µs/step)"
    return f"{m['wf_per_s']:,.0f} wf/s, p50 {m['p50_ms']:,.0f} ms, p99 {m['p99_ms']:,.0f} ms"


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the tables."""
    args = parse_args(argv)
    sizes = build_sizes(args)
    scenarios = ["seq", "fanout"] if args.scenario == "all" else [args.scenario]
    groups = build_groups(args.store, args.dbos_default)
    targets = [t for g in groups for t in g]
    data = Collected(sizes=sizes, reps=args.reps, scenarios=scenarios, targets=targets)
    # Not a terminal (piped, CI): use a width that fits the tables instead of 80.
    out = Console(width=None if sys.stdout.isatty() else 200)
    log = Console(stderr=True, soft_wrap=True)
    started = time.perf_counter()
    data.load_start = load_average()
    tmp_root = tempfile.mkdtemp(prefix="stalwart-bench-")
    total = args.reps * len(scenarios) * len(targets)
    done = 0
    try:
        if args.store in ("sqlite", "all"):
            log.print(f"raw SQLite commit rate ({sizes.raw_seconds:g} s per mode)...")
            try:
                data.raw = run_child({"kind": "raw", "sizes": sizes.to_dict()}, tmp_root)
            except Exception as exc:
                data.failures.append(f"raw sqlite: {exc}")
        for rep in range(args.reps):
            for scenario in scenarios:
                for group in groups:
                    # Alternate which engine goes first, so drift hits both sides alike.
                    for target in group if rep % 2 == 0 else list(reversed(group)):
                        done += 1
                        t0 = time.perf_counter()
                        spec = {
                            "kind": "engine",
                            "scenario": scenario,
                            "target": {
                                "engine": target.engine,
                                "store": target.store,
                                "synchronous": target.synchronous,
                            },
                            "sizes": sizes.to_dict(),
                        }
                        prefix = (
                            f"[{done:>2}/{total}] rep {rep + 1} {scenario:<6} {target.label:<28}"
                        )
                        try:
                            result = run_child(spec, tmp_root)
                        except Exception as exc:
                            data.failures.append(f"rep {rep + 1} {scenario} {target.label}: {exc}")
                            log.print(f"{prefix} [red]failed[/red]")
                            continue
                        data.add(scenario, target, result)
                        log.print(
                            f"{prefix} {_summary(scenario, result)} "
                            f"[{time.perf_counter() - t0:.1f} s]"
                        )
    finally:
        if args.keep_tmp:
            log.print(f"kept {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)
    data.wall_s = time.perf_counter() - started
    data.load_end = load_average()
    render(data, out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data.to_json(), f, indent=2)
    return 1 if data.failures else 0


if __name__ == "__main__":
    sys.exit(main())
