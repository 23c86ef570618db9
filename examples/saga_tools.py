"""Small helpers shared by the saga examples: a ledger of effects, step tables, temp stores.

The *ledger* is the outside world's view of what the activities did: every activity that
has an effect (a charge, a refund, a mailbox created...) records one row in a SQLite file
separate from the engine's store, with the same schema as the order demo's ledger
(``examples/orders.py``). A row is written once the effect happened, so a step whose
process was killed before it finished leaves no row, and a step executed twice leaves
two. The examples print it; the tests and the saga demo check it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from examples.orders import init_ledger, ledger_connect
from stalwart import StepInfo, activity_context

console = Console(highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console = Console(highlight=False, width=100)  # logs and pipes: room for the tables

_ledger_path: str | None = None

STATUS_STYLE = {
    "completed": "green",
    "compensated": "yellow",
    "compensating": "bold yellow",
    "failed": "red",
    "skipped": "dim",
    "running": "cyan",
    "pending": "dim",
    "cancelled": "red",
}


# ----------------------------------------------------------------------------- the ledger
def use_ledger(path: str | Path | None) -> None:
    """Record effects in the ledger file ``path`` (created if needed); None: record none."""
    global _ledger_path
    if path is not None:
        init_ledger(str(path))
    _ledger_path = None if path is None else str(path)


def record_effect(step: str, started: float) -> str:
    """Record that the running activity's effect happened; return its idempotency key.

    The row carries the workflow instance, the step name, this process's pid, the
    attempt number and when the execution started and ended.
    """
    ctx = activity_context()
    if _ledger_path is not None:
        conn = ledger_connect(_ledger_path)
        try:
            conn.execute(
                "INSERT INTO executions "
                "(order_id, step, pid, attempt, idempotency_key, started_at, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ctx.instance_id,
                    step,
                    os.getpid(),
                    ctx.attempt,
                    ctx.idempotency_key,
                    started,
                    time.time(),
                ),
            )
        finally:
            conn.close()
    return ctx.idempotency_key


@dataclass(frozen=True)
class Effect:
    """One ledger row."""

    instance: str
    step: str
    pid: int
    attempt: int
    idempotency_key: str
    started_at: float
    finished_at: float

    @property
    def cmd(self) -> int:
        """The command number of the durable call (from the idempotency key)."""
        return int(self.idempotency_key.rsplit(":", 1)[1])


def read_effects(path: str | Path) -> list[Effect]:
    """Every ledger row, in the order they were written."""
    conn = ledger_connect(str(path))
    try:
        rows = conn.execute(
            "SELECT order_id, step, pid, attempt, idempotency_key, started_at, finished_at "
            "FROM executions ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Effect(*row) for row in rows]


# ----------------------------------------------------------------------------- stores
@contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """A fresh directory for an example's SQLite files, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sqlite_url(path: str | Path) -> str:
    """The store URL of a SQLite file (absolute path)."""
    return f"sqlite:///{Path(path).resolve()}"


# ----------------------------------------------------------------------------- display
def styled(status: str) -> str:
    """A status with its colour."""
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def step_outcome(step: StepInfo) -> str:
    """What a step returned, or why it failed."""
    if step.error is not None and step.status in ("failed", "skipped"):
        message = str(step.error.get("message") or step.error.get("type"))
        return f"[red]{failure_reason(message)}[/red]"
    if step.result is not None:
        return str(step.result)
    return ""


def step_table(
    steps: Sequence[StepInfo],
    *,
    closed: bool = False,
    undo: Mapping[str, str] | None = None,
    title: str = "",
) -> Table:
    """The step table of one workflow (``handle.steps()``) as a rich table.

    ``closed``: the workflow has ended, so a step still shown ``running`` was abandoned
    (its call was in flight when the workflow was cancelled). ``undo``: step name ->
    compensation, for declarative sagas (whose step table does not name them).
    """
    undo = undo or {}
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("result / error", max_width=30, no_wrap=True, overflow="ellipsis")
    table.add_column("undone by", no_wrap=True)
    for step in steps:
        status = styled(step.status)
        if closed and step.status == "running":
            status += " [dim](abandoned)[/dim]"
        table.add_row(
            "" if step.step is None else str(step.step),
            step.name,
            status,
            str(step.attempts),
            step_outcome(step),
            step.compensation
            or (undo.get(step.name, "") if step.status in ("compensating", "compensated") else ""),
        )
    return table


def failure_reason(message: str) -> str:
    """The original cause in a failed or compensated workflow's error message."""
    if message.startswith("cancelled: "):
        return message
    return message.rsplit(": ", 1)[-1]
