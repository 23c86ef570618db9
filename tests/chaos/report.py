"""The chaos table: each chaos scenario reports one row; ``make chaos`` prints them.

Every chaos test calls :func:`record` once per (scenario, store) it ran. Rows go to the
JSON-lines file named by ``STALWART_CHAOS_REPORT`` (nothing is written when it is unset,
as in ``make test``). :func:`long_runs` tells a test whether to run its long version
(``make chaos`` sets ``STALWART_CHAOS=long``) or the short one kept inside ``make test``.
``python -m tests.chaos.report FILE`` prints the table and exits 1 when any row has an
invariant violation.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPORT_ENV = "STALWART_CHAOS_REPORT"
MODE_ENV = "STALWART_CHAOS"


def long_runs() -> bool:
    """True under ``make chaos`` (the long versions), False inside ``make test``."""
    return os.environ.get(MODE_ENV, "short") == "long"


def record(
    scenario: str,
    store: str,
    *,
    runs: int,
    violations: int,
    recovery_seconds: Sequence[float] = (),
    detail: str = "",
) -> None:
    """Append one row of the chaos table (a no-op unless ``STALWART_CHAOS_REPORT`` is set).

    ``runs`` counts the units the scenario checked (instances, sagas, timers...),
    ``violations`` the invariant violations found (the test also fails on any),
    ``recovery_seconds`` every measured recovery time, ``detail`` a short free text.
    """
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    row = {
        "scenario": scenario,
        "store": store,
        "runs": runs,
        "violations": violations,
        "recovery_seconds": [round(s, 3) for s in recovery_seconds],
        "detail": detail,
    }
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def _recovery(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s ({len(values)})"


def print_table(path: Path) -> int:
    """Print the rows of ``path``; return the number of violations in them."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    table = Table(title="Chaos runs")
    for column in ("scenario", "store", "runs", "invariant violations", "recovery", "detail"):
        table.add_column(column, justify="right" if column == "runs" else "left")
    violations = 0
    for row in rows:
        violations += row["violations"]
        table.add_row(
            row["scenario"],
            row["store"],
            str(row["runs"]),
            str(row["violations"]),
            _recovery(row["recovery_seconds"]),
            row["detail"],
        )
    Console(width=200).print(table)
    return violations


def main(argv: list[str]) -> int:
    """Entry point of ``python -m tests.chaos.report FILE``."""
    if len(argv) != 1:
        print("usage: python -m tests.chaos.report REPORT.jsonl", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.exists():
        print(f"no chaos report at {path}: did any chaos test run?", file=sys.stderr)
        return 2
    return 1 if print_table(path) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
