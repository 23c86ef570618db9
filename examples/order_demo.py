"""Kill a worker in the middle of a batch of orders and show that nothing is lost or redone.

Run it from the repository root::

    python -m examples.order_demo            # the demo (``make demo``)
    python -m examples.order_demo --keep     # ... and keep its files for inspection

What it does:

1. creates a fresh directory holding the engine's SQLite file and a separate *ledger*
   file in which every activity records that it ran (see ``examples/orders.py``);
2. starts a worker process (``python -m examples.order_demo worker <db>``);
3. places 50 orders through a client-only engine (``Engine(url, worker=False)``);
4. once some, but not all, orders are complete, kills the worker with SIGKILL and
   records what the store says was done and what was in flight at that moment;
5. starts a fresh worker, which takes over at once (the dead worker is on this host, so
   its missing pid gives it away without waiting for its lease to expire);
6. waits for every order, stops the worker with SIGTERM and checks the invariants:
   every step ran at least once and is recorded exactly once; a step whose completion
   was recorded before the kill never ran again; only steps in flight at the kill may
   have run twice; receipts are correct.

The exit status is 0 when every invariant holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table

from examples.demo_runner import DemoError, run_in_workdir
from examples.orders import (
    LEDGER_ENV,
    STEPS,
    LineItem,
    Order,
    Receipt,
    init_ledger,
    ledger_connect,
    process_order,
)
from stalwart import Engine, HistoryEvent, WorkerOptions, WorkflowHandle

N_ORDERS = 50
KILL_AFTER_COMPLETED = 15
"""The worker is killed once this many orders are complete."""
ORDER_INTERVAL = 0.03
"""Seconds between two orders placed by the client (checkout traffic)."""
WORKER_OPTIONS = WorkerOptions(lease_seconds=5.0, poll_interval=0.05)
REPO_ROOT = Path(__file__).resolve().parent.parent

Key = tuple[str, str]
"""(order id, step name)."""

console = Console(highlight=False)


# ----------------------------------------------------------------------------- worker
def sqlite_url(path: Path | str) -> str:
    """The store URL of a SQLite file (absolute path)."""
    return f"sqlite:///{Path(path).resolve()}"


async def _serve(db_path: str) -> None:
    async with Engine(sqlite_url(db_path), options=WORKER_OPTIONS) as engine:
        await engine.run_worker()


def worker_main(db_path: str) -> int:
    """``python -m examples.order_demo worker <db>``: serve orders until SIGTERM."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(db_path))
    return 0


class WorkerProcess:
    """A worker subprocess whose output goes to a log file."""

    def __init__(self, number: int, db: Path, ledger: Path, log: Path) -> None:
        self.number = number
        self.log = log
        env = dict(os.environ, **{LEDGER_ENV: str(ledger)})
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "examples.order_demo", "worker", str(db)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.proc.pid

    async def wait_ready(self, client: Engine, timeout: float = 30.0) -> None:
        """Wait until the worker registered its lease in the store."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"worker {self.number} exited early; see {self.log}")
            workers = await client.store.list_workers()
            if any(w.pid == self.pid for w in workers):
                return
            await asyncio.sleep(0.02)
        raise DemoError(f"worker {self.number} did not register within {timeout:g}s")

    async def kill(self) -> float:
        """SIGKILL the worker, reap it, and return the time it was known dead.

        Reaping matters: until its parent waits for it, a killed process is a zombie and
        still answers ``kill(pid, 0)``, which would hide its death from other workers.
        """
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        return time.time()

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM the worker (graceful stop) and return its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"worker {self.number} did not stop within {timeout:g}s") from None

    def cleanup(self) -> None:
        """Make sure the process is gone (used when the demo itself fails)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_lines(self) -> list[str]:
        """The worker's log."""
        return self.log.read_text(errors="replace").splitlines()


# ----------------------------------------------------------------------------- orders
def make_orders(n: int, seed: int = 2024) -> list[Order]:
    """A reproducible batch of orders."""
    rng = random.Random(seed)
    catalogue = [
        ("KB-MECH-01", Decimal("89.90")),
        ("MOUSE-02", Decimal("24.99")),
        ("USB-C-CABLE", Decimal("9.49")),
        ("MONITOR-27", Decimal("279.00")),
        ("HEADSET-5", Decimal("59.95")),
        ("WEBCAM-HD", Decimal("44.50")),
    ]
    orders = []
    for i in range(1, n + 1):
        picks = rng.sample(catalogue, rng.randint(1, 3))
        items = [LineItem(sku, rng.randint(1, 3), price) for sku, price in picks]
        orders.append(Order(f"order-{i:03d}", f"customer{i}@example.com", items))
    return orders


async def place_orders(
    client: Engine, orders: list[Order], handles: list[WorkflowHandle[Receipt]]
) -> None:
    """Start one workflow per order, a few tens of milliseconds apart."""
    for order in orders:
        handles.append(await process_order.start(client, order, id=order.id))
        await asyncio.sleep(ORDER_INTERVAL)


async def count_completed(client: Engine) -> int:
    """How many orders are complete."""
    return len((await client.list(status="completed", limit=10_000)).items)


# ----------------------------------------------------------------------------- histories
@dataclass
class StepRecord:
    """What one instance's history says about one step."""

    scheduled_at: float | None = None
    completions: list[float] = field(default_factory=list)


def steps_of(history: Iterable[HistoryEvent]) -> dict[str, StepRecord]:
    """Step name -> when it was scheduled and when its completion(s) were recorded."""
    names: dict[int, str] = {}
    steps: dict[str, StepRecord] = defaultdict(StepRecord)
    for item in history:
        data = item.event.to_data()
        if item.kind == "ActivityScheduled":
            names[data["cmd"]] = data["name"]
            steps[data["name"]].scheduled_at = item.time
        elif item.kind == "ActivityCompleted":
            steps[names[data["cmd"]]].completions.append(item.time)
    return steps


async def all_histories(client: Engine) -> dict[str, dict[str, StepRecord]]:
    """Every instance's steps, by instance id."""
    instances = (await client.list(limit=10_000)).items
    histories = await asyncio.gather(*(client.get_handle(d.id).history() for d in instances))
    return {d.id: steps_of(h) for d, h in zip(instances, histories, strict=True)}


@dataclass
class KillSnapshot:
    """The store's view at the moment the worker was known dead."""

    pid: int
    at: float
    elapsed: float
    orders_started: int
    orders_completed: int
    done: set[Key]
    in_flight: set[Key]
    executions_so_far: int


# ----------------------------------------------------------------------------- ledger
@dataclass(frozen=True)
class Execution:
    """One row of the ledger."""

    order_id: str
    step: str
    pid: int
    attempt: int
    idempotency_key: str
    started_at: float
    finished_at: float


def read_ledger(path: Path) -> list[Execution]:
    """Every execution recorded by the activities."""
    conn = ledger_connect(str(path))
    try:
        rows = conn.execute(
            "SELECT order_id, step, pid, attempt, idempotency_key, started_at, finished_at "
            "FROM executions ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [Execution(*row) for row in rows]


# ----------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    """Seconds as a short millisecond string."""
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


# ----------------------------------------------------------------------------- the demo
@dataclass
class Check:
    """One invariant and whether it held."""

    name: str
    ok: bool
    detail: str = ""


async def run_demo(workdir: Path) -> bool:
    """Run the scenario in ``workdir``; True when every invariant holds."""
    t0 = time.monotonic()
    db, ledger = workdir / "orders.db", workdir / "ledger.db"
    init_ledger(str(ledger))
    orders = make_orders(N_ORDERS)
    by_id = {o.id: o for o in orders}
    workers: list[WorkerProcess] = []

    def elapsed() -> float:
        return time.monotonic() - t0

    def say(text: str) -> None:
        console.print(f"[dim]{elapsed():6.2f}s[/dim]  {text}")

    try:
        async with Engine(sqlite_url(db), worker=False) as client:
            w1 = WorkerProcess(1, db, ledger, workdir / "worker-1.log")
            workers.append(w1)
            await w1.wait_ready(client)
            say(f"worker 1 is up (pid {w1.pid})")

            handles: list[WorkflowHandle[Receipt]] = []
            placing = asyncio.create_task(place_orders(client, orders, handles))
            say(f"placing {N_ORDERS} orders, one every {ORDER_INTERVAL * 1000:.0f} ms")

            deadline = time.monotonic() + 30
            while await count_completed(client) < KILL_AFTER_COMPLETED:
                if time.monotonic() > deadline:
                    raise DemoError("orders are not completing; see worker-1.log")
                if w1.proc.poll() is not None:
                    raise DemoError("worker 1 died on its own; see worker-1.log")
                await asyncio.sleep(0.01)

            dead_at = await w1.kill()
            kill_elapsed = elapsed()
            histories = await all_histories(client)
            pairs = [(i, s, r) for i, st in histories.items() for s, r in st.items()]
            snap = KillSnapshot(
                pid=w1.pid,
                at=dead_at,
                elapsed=kill_elapsed,
                orders_started=len(histories),
                orders_completed=await count_completed(client),
                done={(i, s) for i, s, r in pairs if r.completions},
                in_flight={(i, s) for i, s, r in pairs if not r.completions},
                executions_so_far=len(read_ledger(ledger)),
            )
            flying = Counter(s for _, s in snap.in_flight)
            console.print(
                f"[dim]{kill_elapsed:6.2f}s[/dim]  [bold red]SIGKILL[/bold red] worker 1 "
                f"(pid {w1.pid}): {snap.orders_completed}/{N_ORDERS} orders complete, "
                f"{snap.orders_started} placed"
            )
            if flying:
                in_flight = ", ".join(f"{s} x{n}" for s, n in sorted(flying.items()))
                console.print(Padding(f"in flight: {in_flight}", (0, 0, 0, 9)))

            w2 = WorkerProcess(2, db, ledger, workdir / "worker-2.log")
            workers.append(w2)
            await w2.wait_ready(client)
            say(f"worker 2 is up (pid {w2.pid}) and takes over")

            await placing
            deadline = time.monotonic() + 45
            while (done_count := await count_completed(client)) < N_ORDERS:
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"only {done_count}/{N_ORDERS} orders completed; see worker-2.log"
                    )
                if w2.proc.poll() is not None:
                    raise DemoError("worker 2 died on its own; see worker-2.log")
                await asyncio.sleep(0.02)
            all_done = elapsed()
            say(f"all {N_ORDERS} orders complete")
            receipts = {h.id: await h.result(timeout=5) for h in handles}

            status = await w2.terminate()
            say(f"worker 2 stopped with SIGTERM (exit status {status})")

            final = await all_histories(client)
            statuses = Counter(d.status for d in (await client.list(limit=10_000)).items)
    finally:
        for w in workers:
            w.cleanup()

    executions = read_ledger(ledger)
    runs: dict[Key, list[Execution]] = defaultdict(list)
    for ex in executions:
        runs[(ex.order_id, ex.step)].append(ex)
    every_key = {(o.id, s) for o in orders for s in STEPS}
    duplicates = {k: v for k, v in runs.items() if len(v) > 1}

    # -- invariants -------------------------------------------------------------------
    checks: list[Check] = []
    checks.append(
        Check(
            f"all {N_ORDERS} orders completed",
            statuses.get("completed", 0) == N_ORDERS and len(receipts) == N_ORDERS,
            ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        )
    )
    checks.append(
        Check(
            "worker killed mid-batch",
            0 < snap.orders_completed < N_ORDERS,
            f"{snap.orders_completed}/{N_ORDERS} complete at kill",
        )
    )
    bad_records = sorted(
        k for k in every_key if len(final.get(k[0], {}).get(k[1], StepRecord()).completions) != 1
    )
    checks.append(
        Check(
            "each step's completion recorded exactly once",
            not bad_records,
            f"{len(every_key)} steps" if not bad_records else f"wrong: {bad_records[:5]}",
        )
    )
    never_ran = sorted(every_key - runs.keys())
    checks.append(
        Check(
            "every step ran",
            not never_ran and runs.keys() <= every_key,
            f"{len(executions)} executions" if not never_ran else f"missing: {never_ran[:5]}",
        )
    )
    rerun_done = sorted(k for k in snap.done if len(runs.get(k, [])) != 1)
    checks.append(
        Check(
            "steps done before the kill ran exactly once",
            not rerun_done,
            f"{len(snap.done)} steps" if not rerun_done else f"ran again: {rerun_done[:5]}",
        )
    )
    stray = sorted(k for k, v in duplicates.items() if k not in snap.in_flight or len(v) > 2)
    checks.append(
        Check(
            "only steps in flight at the kill ran twice",
            not stray,
            f"{len(duplicates)} of {len(snap.in_flight)} ran twice"
            if not stray
            else f"unexpected: {stray[:5]}",
        )
    )
    late = sorted(
        k
        for k, v in runs.items()
        if final.get(k[0], {}).get(k[1])
        and any(ex.finished_at > final[k[0]][k[1]].completions[0] for ex in v)
    )
    checks.append(
        Check(
            "no step ran after being recorded complete",
            not late,
            "ledger vs history times" if not late else f"late: {late[:5]}",
        )
    )
    old_pid_after = [ex for ex in executions if ex.pid == snap.pid and ex.finished_at > snap.at]
    checks.append(
        Check(
            "killed worker did nothing after the kill",
            not old_pid_after,
            f"pid {snap.pid}",
        )
    )
    wrong_receipts = []
    for order_id, receipt in receipts.items():
        order = by_id[order_id]
        keys = {ex.idempotency_key for ex in runs.get((order_id, "charge_payment"), [])}
        expected_payment = {"pay_" + hashlib.sha256(key.encode()).hexdigest()[:10] for key in keys}
        if (
            not isinstance(receipt, Receipt)
            or receipt.amount != order.total
            or len(keys) != 1
            or {receipt.payment_id} != expected_payment
        ):
            wrong_receipts.append(order_id)
    checks.append(
        Check(
            "receipts correct (amounts, payment ids)",
            not wrong_receipts,
            f"total {sum((r.amount for r in receipts.values()), Decimal(0))}"
            if not wrong_receipts
            else f"wrong: {wrong_receipts[:5]}",
        )
    )
    checks.append(Check("worker 2 stopped cleanly on SIGTERM", status == 0, f"exit {status}"))
    log_errors = [
        line
        for w in workers
        for line in w.log_lines()
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    ]
    checks.append(
        Check(
            "no errors in the worker logs",
            not log_errors,
            "" if not log_errors else log_errors[0][:100],
        )
    )
    takeover = [line for line in workers[1].log_lines() if "is gone" in line]

    # -- report -----------------------------------------------------------------------
    w2_runs = [ex for ex in executions if ex.pid == workers[1].pid]
    console.print()
    summary = Table(title="[bold]Result[/bold]", title_justify="left", box=None)
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column()
    summary.show_header = False
    summary.add_row(
        "orders", f"{len(receipts)} placed, {statuses['completed']} completed in {all_done:.2f}s"
    )
    summary.add_row(
        "kill",
        f"at {snap.elapsed:.2f}s: {snap.orders_completed}/{N_ORDERS} orders complete, "
        f"{len(snap.done)} steps done, {len(snap.in_flight)} in flight",
    )
    how = f"saw at once that pid {snap.pid} was gone" if takeover else "took over"
    first = (
        f"; its first step finished {min(ex.finished_at for ex in w2_runs) - snap.at:.2f}s "
        "after the kill, start-up included"
        if w2_runs
        else ""
    )
    summary.add_row("takeover", f"worker 2 {how}{first}")
    summary.add_row(
        "executions",
        f"{len(executions)} for {len(every_key)} steps: {snap.executions_so_far} by worker 1, "
        f"{len(w2_runs)} by worker 2",
    )
    if snap.in_flight:
        effect_done = sum(
            1 for k in snap.in_flight if any(ex.pid == snap.pid for ex in runs.get(k, []))
        )
        summary.add_row(
            "in flight",
            f"{len(snap.in_flight)} steps at the kill: {effect_done} had finished their work "
            f"and ran again, {len(snap.in_flight) - effect_done} were cut short and ran once "
            "(on worker 2)",
        )
    n_dups = sum(len(v) - 1 for v in duplicates.values())
    summary.add_row(
        "duplicates", f"{n_dups} (steps in flight at the kill only)" if n_dups else "none"
    )
    console.print(summary)

    console.print()
    steps = Table(title="[bold]Steps[/bold]", title_justify="left", box=box.SIMPLE_HEAD)
    steps.add_column("activity", no_wrap=True)
    for header in ("runs", "dup", "exec p50", "p95", "e2e p50", "p95"):
        steps.add_column(header, justify="right", no_wrap=True)
    for step in STEPS:
        rows = [ex for ex in executions if ex.step == step]
        durations = [ex.finished_at - ex.started_at for ex in rows]
        latencies = [
            r.completions[0] - r.scheduled_at
            for st in final.values()
            if (r := st.get(step)) is not None and r.completions and r.scheduled_at is not None
        ]
        dup = sum(len(v) - 1 for k, v in duplicates.items() if k[1] == step)
        steps.add_row(
            step,
            str(len(rows)),
            str(dup),
            ms(percentile(durations, 50)),
            ms(percentile(durations, 95)),
            ms(percentile(latencies, 50)),
            ms(percentile(latencies, 95)),
        )
    console.print(steps)
    console.print(
        "[dim]exec: time inside the activity (ledger). e2e: from scheduled to completion "
        "recorded (history); for steps in flight at the kill it includes the takeover.[/dim]"
    )

    if duplicates:
        console.print()
        dups = Table(
            title="[bold]Steps that ran twice[/bold]", title_justify="left", box=box.SIMPLE_HEAD
        )
        for header in ("order", "step", "pids", "idempotency key"):
            dups.add_column(header, no_wrap=True)
        for (order_id, step), v in sorted(duplicates.items()):
            keys = sorted({ex.idempotency_key for ex in v})
            dups.add_row(order_id, step, " -> ".join(str(ex.pid) for ex in v), ", ".join(keys))
        console.print(dups)
        console.print(
            "[dim]Both runs carry the same idempotency key: a payment gateway or mail "
            "service given the key turns these at-least-once calls into one effect.[/dim]"
        )

    console.print()
    table = Table(title="[bold]Invariants[/bold]", title_justify="left", box=None)
    table.show_header = False
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(style="dim")
    for check in checks:
        mark = "[green]PASS[/green]" if check.ok else "[bold red]FAIL[/bold red]"
        table.add_row(mark, check.name, check.detail)
    console.print(table)
    ok = all(c.ok for c in checks)
    console.print()
    console.print(f"total wall time {elapsed():.2f}s")
    return ok


async def demo(keep: bool) -> int:
    """Run the demo in a fresh temporary directory."""
    return await run_in_workdir(
        console,
        "stalwart-order-demo-",
        f"[bold]Stalwart order demo[/bold]: {N_ORDERS} orders, a worker killed mid-batch",
        run_demo,
        keep=keep,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: the demo, or ``worker <db>`` for the worker processes it starts."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"] and len(args) == 2:
        return worker_main(args[1])
    if args not in ([], ["--keep"]):
        console.print("usage: python -m examples.order_demo [--keep] | worker <db>")
        return 2
    return asyncio.run(demo(keep=args == ["--keep"]))


if __name__ == "__main__":
    sys.exit(main())
