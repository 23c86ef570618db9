"""A money transfer as a saga, against a small bank kept in its own SQLite file.

Run it with ``python -m examples.money_transfer``. A transfer debits the source account
(compensated by crediting the amount back) and then credits the destination::

    async with ctx.saga():
        debit_ref = await debit_account(transfer)     # compensate=credit_back
        credit_ref = await credit_account(transfer)

If the credit fails, the debit is undone and the saga ends ``compensated``: the money is
never lost in between, and the sum of all balances never changes.

Activities run at least once: a worker that crashes after the bank committed a debit,
but before the engine recorded the activity's result, runs the debit again. So each
account operation is idempotent: it is keyed by ``activity_context().idempotency_key``
(the same on every attempt and re-execution of one durable call), and the key is stored
in the bank's ``entries`` table *in the same transaction* as the balance change. A repeat
finds its key and changes nothing. Every execution is also logged in ``executions``
(operation, outcome, pid, attempt, times), outside the engine, so the chaos test
(``tests/chaos/test_saga_chaos.py``) can prove what ran where.

Three transfers:

* ``t-1`` alice → bob completes;
* ``t-2`` alice → dave is refused (dave's account is frozen): alice is credited back;
* ``t-3`` bob → carol completes although the bank's reply to the first credit attempt
  is lost on the network: the retry finds the credit already applied and does not apply
  it twice.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from examples.saga_tools import (
    console,
    failure_reason,
    sqlite_url,
    step_table,
    temporary_directory,
)
from stalwart import (
    ActivityDefinition,
    Engine,
    NonRetryableError,
    RetryPolicy,
    StepInfo,
    WorkerOptions,
    WorkflowContext,
    WorkflowFailedError,
    activity,
    activity_context,
    workflow,
)

BANK_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id      TEXT PRIMARY KEY,
    balance INTEGER NOT NULL,          -- in cents
    frozen  INTEGER NOT NULL DEFAULT 0 -- credits to a frozen account are refused
);
CREATE TABLE IF NOT EXISTS entries (   -- applied effects: one per idempotency key
    idempotency_key TEXT PRIMARY KEY,
    transfer_id     TEXT NOT NULL,
    operation       TEXT NOT NULL,
    account         TEXT NOT NULL,
    delta           INTEGER NOT NULL,
    applied_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS executions ( -- every execution of an operation (audit trail)
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,          -- the workflow instance (the transfer)
    step        INTEGER NOT NULL,       -- the durable call's command number
    operation   TEXT NOT NULL,          -- debit, credit or credit_back
    kind        TEXT NOT NULL,          -- forward or compensation
    outcome     TEXT NOT NULL,          -- applied, duplicate or refused
    pid         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faults (     -- injected faults, for examples and tests
    transfer_id TEXT NOT NULL,
    operation   TEXT NOT NULL,
    fault       TEXT NOT NULL,          -- refuse, or lose_first_reply
    PRIMARY KEY (transfer_id, operation)
);
"""

LATENCY = (0.0, 0.0)
"""Simulated network time before the bank's transaction and after it (the reply)."""

_bank_path: str | None = None


class TransferRefusedError(NonRetryableError):
    """The bank refused the operation (frozen account, insufficient funds, a hold)."""


@dataclass(frozen=True)
class Transfer:
    """Move ``amount`` cents from ``source`` to ``destination``."""

    id: str
    source: str
    destination: str
    amount: int


@dataclass(frozen=True)
class TransferReceipt:
    """What a completed transfer returns: the bank's references of both entries."""

    transfer_id: str
    debit_ref: str
    credit_ref: str


# ----------------------------------------------------------------------------- the bank
def use_bank(path: str | Path | None) -> None:
    """Point the account activities at the bank file ``path``."""
    global _bank_path
    _bank_path = None if path is None else str(path)


@contextmanager
def bank_connection(path: str | Path | None = None) -> Iterator[sqlite3.Connection]:
    """A connection to the bank file (autocommit mode: transactions are explicit)."""
    target = str(path) if path is not None else _bank_path
    if target is None:
        raise RuntimeError("no bank file: call use_bank(path) first")
    conn = sqlite3.connect(target, isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        yield conn
    finally:
        conn.close()


def open_bank(path: str | Path, balances: Mapping[str, int], frozen: Collection[str] = ()) -> None:
    """Create the bank file with these accounts (balances in cents)."""
    with bank_connection(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(BANK_SCHEMA)
        conn.executemany(
            "INSERT INTO accounts (id, balance, frozen) VALUES (?, ?, ?)",
            [(name, cents, int(name in frozen)) for name, cents in balances.items()],
        )


def add_fault(path: str | Path, transfer_id: str, operation: str, fault: str) -> None:
    """Make ``operation`` of ``transfer_id`` ``refuse`` or ``lose_first_reply``."""
    with bank_connection(path) as conn:
        conn.execute(
            "INSERT INTO faults (transfer_id, operation, fault) VALUES (?, ?, ?)",
            (transfer_id, operation, fault),
        )


def balances(path: str | Path) -> dict[str, int]:
    """Every account's balance, in cents."""
    with bank_connection(path) as conn:
        return dict(conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall())


@dataclass(frozen=True)
class Entry:
    """An applied effect."""

    idempotency_key: str
    transfer_id: str
    operation: str
    account: str
    delta: int
    applied_at: float


def entries(path: str | Path) -> list[Entry]:
    """Every applied effect, in the order they were applied."""
    with bank_connection(path) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, transfer_id, operation, account, delta, applied_at "
            "FROM entries ORDER BY applied_at"
        ).fetchall()
    return [Entry(*row) for row in rows]


@dataclass(frozen=True)
class Execution:
    """One execution of an account operation (a row of the audit trail)."""

    instance: str
    step: int
    operation: str
    kind: str
    outcome: str
    pid: int
    attempt: int
    started_at: float
    finished_at: float


def executions(path: str | Path) -> list[Execution]:
    """Every execution of an account operation, in the order they ended."""
    with bank_connection(path) as conn:
        rows = conn.execute(
            "SELECT instance, step, operation, kind, outcome, pid, attempt, started_at, "
            "finished_at FROM executions ORDER BY id"
        ).fetchall()
    return [Execution(*row) for row in rows]


def count_executions(path: str | Path) -> int:
    """How many executions the audit trail holds."""
    with bank_connection(path) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM executions").fetchone()
    return int(n)


def _refusal(conn: sqlite3.Connection, transfer: Transfer, operation: str, account: str) -> str:
    """Why the bank refuses this operation ("" if it does not)."""
    fault = conn.execute(
        "SELECT fault FROM faults WHERE transfer_id = ? AND operation = ?",
        (transfer.id, operation),
    ).fetchone()
    if fault is not None and fault[0] == "refuse":
        return f"{operation} of {transfer.id} refused by the bank's compliance check"
    row = conn.execute("SELECT balance, frozen FROM accounts WHERE id = ?", (account,)).fetchone()
    if row is None:
        return f"no account {account!r}"
    balance, frozen = row
    if operation == "credit" and frozen:
        return f"account {account!r} is frozen"
    if operation == "debit" and balance < transfer.amount:
        return f"insufficient funds in {account!r}"
    return ""


def apply_operation(operation: str, kind: str, transfer: Transfer, account: str, delta: int) -> str:
    """Apply ``delta`` to ``account`` at most once per idempotency key; return the key.

    One transaction checks the key, changes the balance, records the key and logs the
    execution. A repeated call (same key) changes nothing and is logged as a duplicate.
    """
    ctx = activity_context()
    key, started = ctx.idempotency_key, time.time()
    if LATENCY[0]:
        time.sleep(LATENCY[0])
    with bank_connection() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            applied = conn.execute(
                "SELECT 1 FROM entries WHERE idempotency_key = ?", (key,)
            ).fetchone()
            refusal = (
                ""
                if applied or kind == "compensation"
                else _refusal(conn, transfer, operation, account)
            )
            outcome = "duplicate" if applied else "refused" if refusal else "applied"
            if outcome == "applied":
                conn.execute(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?", (delta, account)
                )
                conn.execute(
                    "INSERT INTO entries (idempotency_key, transfer_id, operation, account, "
                    "delta, applied_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (key, transfer.id, operation, account, delta, time.time()),
                )
            conn.execute(
                "INSERT INTO executions (instance, step, operation, kind, outcome, pid, "
                "attempt, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ctx.instance_id,
                    ctx.cmd,
                    operation,
                    kind,
                    outcome,
                    os.getpid(),
                    ctx.attempt,
                    started,
                    time.time(),
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        lose_reply = (
            ctx.attempt == 1
            and conn.execute(
                "SELECT 1 FROM faults WHERE transfer_id = ? AND operation = ? "
                "AND fault = 'lose_first_reply'",
                (transfer.id, operation),
            ).fetchone()
        )
    if LATENCY[1]:
        time.sleep(LATENCY[1])
    if refusal:
        raise TransferRefusedError(refusal)
    if lose_reply:
        raise ConnectionError(f"the bank's reply to the {operation} of {transfer.id} was lost")
    return key


# ----------------------------------------------------------------------------- activities
FORWARD_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.05, max_interval=1.0)
UNDO_RETRY = RetryPolicy(max_attempts=20, initial_interval=0.05, max_interval=1.0)


@activity(retry=UNDO_RETRY)
def credit_back(transfer: Transfer) -> str:
    """Return the debited amount to the source (compensates ``debit_account``)."""
    return apply_operation(
        "credit_back", "compensation", transfer, transfer.source, transfer.amount
    )


@activity(compensate=credit_back, compensate_with="input", retry=FORWARD_RETRY)
def debit_account(transfer: Transfer) -> str:
    """Take the amount from the source account; returns the entry's reference."""
    return apply_operation("debit", "forward", transfer, transfer.source, -transfer.amount)


@activity(retry=FORWARD_RETRY)
def credit_account(transfer: Transfer) -> str:
    """Give the amount to the destination account; returns the entry's reference."""
    return apply_operation("credit", "forward", transfer, transfer.destination, transfer.amount)


ACTIVITIES: list[ActivityDefinition[Any, Any]] = [debit_account, credit_account, credit_back]


@workflow(name="money_transfer")
async def transfer_money(ctx: WorkflowContext, transfer: Transfer) -> TransferReceipt:
    """Debit the source, credit the destination; credit the source back if that fails."""
    async with ctx.saga():
        debit_ref = await debit_account(transfer)
        credit_ref = await credit_account(transfer)
    return TransferReceipt(transfer.id, debit_ref, credit_ref)


# ----------------------------------------------------------------------------- the example
OPENING = {"alice": 100_000, "bob": 50_000, "carol": 20_000, "dave": 0}
"""Opening balances of the example's accounts, in cents (dave's account is frozen)."""


def sample_transfers() -> list[Transfer]:
    """The three transfers of the example."""
    return [
        Transfer("t-1", "alice", "bob", 25_000),
        Transfer("t-2", "alice", "dave", 10_000),
        Transfer("t-3", "bob", "carol", 4_000),
    ]


@dataclass
class TransferOutcome:
    """How one transfer ended."""

    transfer: Transfer
    status: str
    detail: str
    steps: list[StepInfo]


@dataclass
class BankReport:
    """The example's result: each transfer, and the bank before and after."""

    outcomes: list[TransferOutcome]
    opening: dict[str, int]
    closing: dict[str, int]
    entries: list[Entry] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)


async def run_transfers(workdir: Path) -> BankReport:
    """Run the three transfers against a bank in ``workdir``; return what happened."""
    bank = workdir / "bank.db"
    open_bank(bank, OPENING, frozen={"dave"})
    add_fault(bank, "t-3", "credit", "lose_first_reply")
    use_bank(bank)
    outcomes = []
    try:
        async with Engine(
            sqlite_url(workdir / "engine.db"),
            workflows=[transfer_money],
            activities=ACTIVITIES,
            options=WorkerOptions(poll_interval=0.05),
        ) as engine:
            for transfer in sample_transfers():
                handle = await transfer_money.start(engine, transfer, id=transfer.id)
                try:
                    await handle.result(timeout=30)
                    status, detail = "completed", ""
                except WorkflowFailedError as exc:
                    status, detail = exc.status, f"rolled back ({failure_reason(exc.message)})"
                outcomes.append(TransferOutcome(transfer, status, detail, await handle.steps()))
    finally:
        use_bank(None)
    return BankReport(outcomes, dict(OPENING), balances(bank), entries(bank), executions(bank))


def money(cents: int) -> str:
    """Cents as euros."""
    return f"{cents / 100:,.2f}"


def show(report: BankReport) -> None:
    """Print the transfers, their step tables, the audit trail and the balances."""
    for out in report.outcomes:
        t = out.transfer
        colour = "green" if out.status == "completed" else "yellow"
        console.print(
            f"[bold]{t.id}[/bold] {t.source} → {t.destination} {money(t.amount)}  "
            f"[{colour}]{out.status}[/{colour}]  {out.detail}"
        )
        console.print(step_table(out.steps, closed=True))
        trail = ", ".join(
            f"{e.operation} #{e.step} try {e.attempt}: {e.outcome}"
            for e in report.executions
            if e.instance == t.id
        )
        console.print(f"  [dim]bank audit trail:[/dim] {trail}\n")
    table = Table(title="[bold]Balances[/bold]", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("account", "opening", "closing", "change"):
        table.add_column(header, justify="left" if header == "account" else "right")
    for account, opening in report.opening.items():
        closing = report.closing[account]
        table.add_row(account, money(opening), money(closing), f"{(closing - opening) / 100:+,.2f}")
    table.add_row(
        "[bold]total[/bold]",
        money(sum(report.opening.values())),
        money(sum(report.closing.values())),
        f"{(sum(report.closing.values()) - sum(report.opening.values())) / 100:+,.2f}",
    )
    console.print(table)
    duplicates = sum(1 for e in report.executions if e.outcome == "duplicate")
    console.print(
        f"{len(report.entries)} entries applied by {len(report.executions)} executions; "
        f"repeated calls that found their idempotency key and applied nothing: {duplicates}"
    )


def main() -> int:
    """Run the example and print the outcome."""
    console.print("[bold]Money transfer saga[/bold]: debit source → credit destination\n")
    with temporary_directory("stalwart-money-transfer-") as workdir:
        report = asyncio.run(run_transfers(workdir))
    show(report)
    conserved = sum(report.closing.values()) == sum(report.opening.values())
    return 0 if conserved else 1


if __name__ == "__main__":
    sys.exit(main())
