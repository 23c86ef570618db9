"""Kill a worker while it is undoing failed orders, and show every rollback finishing once.

Run it from the repository root::

    python -m examples.saga_demo            # the demo (``make demo-saga``)
    python -m examples.saga_demo --keep     # ... and keep its files for inspection

What it does:

1. creates a fresh directory holding the engine's SQLite file and a separate *ledger*
   in which every activity records its effect (``examples/saga_tools.py``);
2. starts a worker process (``python -m examples.saga_demo worker <db> <ledger>``)
   serving the order fulfilment saga of ``examples/order_fulfillment.py`` (charge →
   reserve → ship, undone by release → refund), with slow compensations;
3. places a batch of orders; some contain an item the carrier refuses, so they fail at
   their last step and start compensating;
4. while a compensation is running, kills the worker with SIGKILL, shows the step table
   of each order caught mid-rollback, and starts a fresh worker, which takes over;
5. waits for every order, stops the worker with SIGTERM, prints the step tables and
   checks the invariants: every order ended ``completed`` or ``compensated`` (the
   failing ones compensated, in reverse order); each compensation ran exactly once,
   except one in flight at the kill, which may have run again; nothing that was done
   before the kill ran again; the killed worker did nothing after its death.

The exit status is 0 when every invariant holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
from rich.table import Table

from examples import order_fulfillment as fulfilment
from examples.demo_runner import DemoError, run_in_workdir
from examples.order_fulfillment import COMPENSATIONS, FORWARD, HAZARDOUS, Shipment, fulfil_order
from examples.orders import LineItem, Order, init_ledger
from examples.saga_tools import (
    Effect,
    console,
    read_effects,
    sqlite_url,
    step_table,
    styled,
    use_ledger,
)
from stalwart import Engine, HistoryEvent, StepInfo, WorkerOptions, WorkflowHandle

N_ORDERS = 12
FAILING = {3, 6, 7, 10}
"""Order numbers that contain an item the carrier refuses (they fail at the last step)."""
ORDER_INTERVAL = 0.04
KILL_AFTER = 0.12
"""Seconds a compensation has been running when the worker is killed."""
DEMO_LATENCY = {
    "charge_customer": 0.06,
    "reserve_inventory": 0.05,
    "ship_parcel": 0.08,
    "release_inventory": 0.45,
    "refund_payment": 0.35,
}
"""Simulated I/O time in the worker; compensations talk to slow back-office systems."""
WORKER_OPTIONS = WorkerOptions(lease_seconds=5.0, poll_interval=0.05)
REPO_ROOT = Path(__file__).resolve().parent.parent
UNDO_STEPS = frozenset(COMPENSATIONS.values())
TERMINAL = ("completed", "compensated", "failed", "cancelled", "terminated", "timed_out")

Pair = tuple[str, int]
"""(order id, command number): one durable activity call."""


# ----------------------------------------------------------------------------- worker
async def _serve(db: str) -> None:
    async with Engine(
        sqlite_url(db),
        workflows=[fulfil_order],
        activities=fulfilment.ACTIVITIES,
        options=WORKER_OPTIONS,
    ) as engine:
        await engine.run_worker()


def worker_main(db: str, ledger: str) -> int:
    """``python -m examples.saga_demo worker <db> <ledger>``: serve until SIGTERM."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    fulfilment.LATENCY.update(DEMO_LATENCY)
    use_ledger(ledger)
    asyncio.run(_serve(db))
    return 0


class WorkerProcess:
    """A worker subprocess whose output goes to a log file."""

    def __init__(self, number: int, db: Path, ledger: Path, log: Path) -> None:
        self.number = number
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "examples.saga_demo", "worker", str(db), str(ledger)],
                cwd=REPO_ROOT,
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
            if any(w.pid == self.pid for w in await client.store.list_workers()):
                return
            await asyncio.sleep(0.02)
        raise DemoError(f"worker {self.number} did not register within {timeout:g}s")

    async def kill(self) -> float:
        """SIGKILL the worker, reap it (a zombie would look alive), return when it died."""
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

    def check_alive(self) -> None:
        """Fail the demo if the worker died on its own."""
        if self.proc.poll() is not None:
            raise DemoError(f"worker {self.number} died on its own; see {self.log}")

    def cleanup(self) -> None:
        """Make sure the process is gone (used when the demo itself fails)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_lines(self) -> list[str]:
        """The worker's log."""
        return self.log.read_text(errors="replace").splitlines()


# ----------------------------------------------------------------------------- orders
def make_orders() -> list[Order]:
    """The batch: a few orders contain a battery pack the carrier refuses."""
    hazardous = sorted(HAZARDOUS)[0]
    catalogue = [
        ("KB-MECH-01", Decimal("89.90")),
        ("MOUSE-02", Decimal("24.99")),
        ("MONITOR-27", Decimal("279.00")),
        ("HEADSET-5", Decimal("59.95")),
    ]
    orders = []
    for i in range(1, N_ORDERS + 1):
        sku, price = catalogue[i % len(catalogue)]
        items = [LineItem(sku, 1 + i % 2, price)]
        if i in FAILING:
            items.append(LineItem(hazardous, 1, Decimal("39.50")))
        orders.append(Order(f"order-{i:02d}", f"customer{i}@example.com", items))
    return orders


async def place_orders(client: Engine, orders: list[Order]) -> list[WorkflowHandle[Shipment]]:
    """Start one saga per order, a few tens of milliseconds apart."""
    handles: list[WorkflowHandle[Shipment]] = []
    for order in orders:
        handles.append(await fulfil_order.start(client, order, id=order.id))
        await asyncio.sleep(ORDER_INTERVAL)
    return handles


# ----------------------------------------------------------------------------- histories
@dataclass
class Call:
    """What one instance's history says about one activity call."""

    name: str
    scheduled_at: float
    ended: list[float] = field(default_factory=list)
    """When its outcome (completion or final failure) was recorded."""


def calls_of(history: Iterable[HistoryEvent]) -> dict[int, Call]:
    """Command number -> the activity call's record."""
    calls: dict[int, Call] = {}
    for item in history:
        data = item.event.to_data()
        if item.kind == "ActivityScheduled":
            calls[data["cmd"]] = Call(data["name"], item.time)
        elif item.kind in ("ActivityCompleted", "ActivityFailed") and data["cmd"] in calls:
            calls[data["cmd"]].ended.append(item.time)
    return calls


async def all_calls(client: Engine) -> dict[str, dict[int, Call]]:
    """Every instance's activity calls."""
    items = (await client.list(limit=10_000)).items
    loaded = await asyncio.gather(*(client.get_handle(d.id).history() for d in items))
    return {d.id: calls_of(h) for d, h in zip(items, loaded, strict=True)}


async def compensating_now(client: Engine) -> dict[str, list[StepInfo]]:
    """The step tables of the orders with a compensation in progress."""
    out = {}
    for desc in (await client.list(status="compensating", limit=10_000)).items:
        steps = await client.get_handle(desc.id).steps()
        if any(s.status == "compensating" for s in steps):
            out[desc.id] = steps
    return out


# ----------------------------------------------------------------------------- the demo
@dataclass
class Check:
    """One invariant and whether it held."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class KillSnapshot:
    """What the store said right after the worker was reaped."""

    pid: int
    at: float
    elapsed: float
    mid_rollback: dict[str, list[StepInfo]]
    done: set[Pair]
    in_flight: set[Pair]


def grid(statuses: dict[str, str], tables: dict[str, list[StepInfo]]) -> Table:
    """One row per order: each step's status and the saga's final status."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("order", no_wrap=True)
    for name in FORWARD:
        table.add_column(name.split("_")[0], no_wrap=True)
    table.add_column("saga", no_wrap=True)
    for order_id, steps in sorted(tables.items()):
        by_name = {s.name: s for s in steps}
        cells = [styled(by_name[n].status) if n in by_name else "" for n in FORWARD]
        table.add_row(order_id, *cells, styled(statuses[order_id]))
    return table


async def run_demo(workdir: Path) -> bool:
    """Run the scenario in ``workdir``; True when every invariant holds."""
    t0 = time.monotonic()
    db, ledger = workdir / "orders.db", workdir / "ledger.db"
    init_ledger(str(ledger))
    orders = make_orders()
    failing_ids = {o.id for o in orders if HAZARDOUS & {i.sku for i in o.items}}
    workers: list[WorkerProcess] = []

    def say(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - t0:6.2f}s[/dim]  {text}")

    try:
        async with Engine(sqlite_url(db), worker=False, workflows=[fulfil_order]) as client:
            w1 = WorkerProcess(1, db, ledger, workdir / "worker-1.log")
            workers.append(w1)
            await w1.wait_ready(client)
            say(f"worker 1 is up (pid {w1.pid})")
            placing = asyncio.create_task(place_orders(client, orders))
            say(
                f"placing {N_ORDERS} orders; {len(failing_ids)} contain an item the carrier "
                "refuses and will fail at their last step"
            )

            # Kill once two orders are mid-rollback with a compensation running for a
            # moment (or one order for a longer moment, if the timing does not allow two).
            deadline = time.monotonic() + 30
            seen: dict[str, float] = {}
            while True:
                w1.check_alive()
                if time.monotonic() > deadline:
                    raise DemoError("no compensation started; see worker-1.log")
                now = time.monotonic()
                mid = await compensating_now(client)
                for order_id in mid:
                    seen.setdefault(order_id, now)
                ages = sorted((now - seen[o] for o in mid), reverse=True)
                if (len(ages) >= 2 and ages[1] >= KILL_AFTER) or (ages and ages[0] >= 0.3):
                    break
                await asyncio.sleep(0.01)
            dead_at = await w1.kill()
            elapsed = time.monotonic() - t0
            calls = await all_calls(client)
            pairs = [(i, c, call) for i, cs in calls.items() for c, call in cs.items()]
            snap = KillSnapshot(
                pid=w1.pid,
                at=dead_at,
                elapsed=elapsed,
                mid_rollback=await compensating_now(client),
                done={(i, c) for i, c, call in pairs if call.ended},
                in_flight={(i, c) for i, c, call in pairs if not call.ended},
            )
            console.print(
                f"[dim]{elapsed:6.2f}s[/dim]  [bold red]SIGKILL[/bold red] worker 1 "
                f"(pid {w1.pid}) with {len(snap.mid_rollback)} order(s) mid-rollback "
                f"and {len(snap.in_flight)} activity call(s) in flight"
            )
            caught = dict.fromkeys(snap.mid_rollback, "compensating")
            console.print(grid(caught, snap.mid_rollback))

            w2 = WorkerProcess(2, db, ledger, workdir / "worker-2.log")
            workers.append(w2)
            await w2.wait_ready(client)
            say(f"worker 2 is up (pid {w2.pid}) and takes over")
            handles = await placing

            deadline = time.monotonic() + 30
            while True:
                w2.check_alive()
                statuses = {h.id: await h.status() for h in handles}
                if all(s in TERMINAL for s in statuses.values()):
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"orders did not finish: {statuses}; see worker-2.log")
                await asyncio.sleep(0.02)
            counts = Counter(statuses.values())
            say(
                f"all {N_ORDERS} orders ended: "
                + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            )
            tables = {h.id: await h.steps() for h in handles}
            status = await w2.terminate()
            say(f"worker 2 stopped with SIGTERM (exit status {status})")
            final = await all_calls(client)
    finally:
        for w in workers:
            w.cleanup()

    effects = read_effects(ledger)
    checks = check_invariants(orders, failing_ids, statuses, tables, final, effects, snap)
    checks.append(Check("worker 2 stopped cleanly on SIGTERM", status == 0, f"exit {status}"))
    log_errors = [
        line
        for w in workers
        for line in w.log_lines()
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    ]
    checks.append(
        Check("no errors in the worker logs", not log_errors, "; ".join(log_errors[:1])[:90])
    )

    # -- report -----------------------------------------------------------------------
    console.print()
    console.print("[bold]Step tables at the end[/bold] (statuses from handle.steps())")
    console.print(grid(statuses, tables))
    first = min(snap.mid_rollback)
    console.print(step_table(tables[first], title=f"{first}, caught mid-rollback, at the end"))

    runs: dict[Pair, list[Effect]] = defaultdict(list)
    for e in effects:
        runs[(e.instance, e.cmd)].append(e)
    table = Table(
        title="[bold]Compensations[/bold] (from the ledger)", title_justify="left", box=None
    )
    for header in ("order", "compensation", "runs", "pids", "note"):
        table.add_column(header, no_wrap=True)
    for (order_id, cmd), rows in sorted(runs.items()):
        if rows[0].step not in UNDO_STEPS:
            continue
        flying = (order_id, cmd) in snap.in_flight
        note = "in flight at the kill" if flying else ""
        pids = " → ".join(str(r.pid) for r in rows)
        table.add_row(order_id, f"#{cmd} {rows[0].step}", str(len(rows)), pids, note)
    console.print(table)
    twice = [(p, rows) for p, rows in sorted(runs.items()) if len(rows) > 1]
    for (order_id, cmd), rows in twice:
        pids = " → ".join(str(r.pid) for r in rows)
        console.print(
            f"[dim]ran twice:[/dim] {order_id} #{cmd} {rows[0].step} (pids {pids}): its effect "
            "happened before the kill but its completion was not recorded yet"
        )
    console.print()
    inv = Table(title="[bold]Invariants[/bold]", title_justify="left", box=None)
    inv.show_header = False
    inv.add_column(no_wrap=True)
    inv.add_column(no_wrap=True)
    inv.add_column(style="dim", overflow="fold")
    for check in checks:
        mark = "[green]PASS[/green]" if check.ok else "[bold red]FAIL[/bold red]"
        inv.add_row(mark, check.name, check.detail)
    console.print(inv)
    console.print(f"\ntotal wall time {time.monotonic() - t0:.2f}s")
    return all(c.ok for c in checks)


def check_invariants(
    orders: list[Order],
    failing_ids: set[str],
    statuses: dict[str, str],
    tables: dict[str, list[StepInfo]],
    final: dict[str, dict[int, Call]],
    effects: list[Effect],
    snap: KillSnapshot,
) -> list[Check]:
    """The demo's invariants (see the module docstring)."""
    checks: list[Check] = []
    expected = {o.id: "compensated" if o.id in failing_ids else "completed" for o in orders}
    wrong = sorted(i for i in expected if statuses.get(i) != expected[i])
    checks.append(
        Check(
            "every saga ended completed or compensated",
            not wrong,
            f"{len(failing_ids)} compensated" if not wrong else f"wrong: {wrong}",
        )
    )
    bad_tables = []
    for order_id, steps in tables.items():
        got = {s.name: (s.status, s.compensation) for s in steps}
        if order_id in failing_ids:
            want = {
                "charge_customer": ("compensated", "refund_payment"),
                "reserve_inventory": ("compensated", "release_inventory"),
                "ship_parcel": ("failed", None),
            }
        else:
            want = {name: ("completed", None) for name in FORWARD}
        if got != want:
            bad_tables.append(order_id)
    checks.append(
        Check(
            "step tables: failed orders undone, the others completed",
            not bad_tables,
            "" if not bad_tables else f"wrong: {bad_tables}",
        )
    )
    comp_in_flight = sorted(
        (i, c) for i, c in snap.in_flight if final.get(i, {}).get(c, Call("", 0)).name in UNDO_STEPS
    )
    checks.append(
        Check(
            "the worker was killed during compensation work",
            bool(snap.mid_rollback) and bool(comp_in_flight),
            f"{len(comp_in_flight)} in flight at the kill",
        )
    )
    runs: dict[Pair, list[Effect]] = defaultdict(list)
    for e in effects:
        runs[(e.instance, e.cmd)].append(e)
    undo_runs = {p: v for p, v in runs.items() if v[0].step in UNDO_STEPS}
    twice = sorted(p for p, v in undo_runs.items() if len(v) > 1)
    stray = [p for p in twice if p not in snap.in_flight or len(undo_runs[p]) > 2]
    checks.append(
        Check(
            "no compensation ran twice, except those in flight at the kill",
            not stray,
            f"{len(undo_runs)} compensations, {len(twice)} re-run"
            if not stray
            else f"unexpected: {stray}",
        )
    )
    expected_undo = {o: [*reversed(COMPENSATIONS.values())] for o in failing_ids}
    order_of_undo: dict[str, list[str]] = defaultdict(list)
    for e in effects:
        if e.step in UNDO_STEPS and e.step not in order_of_undo[e.instance]:
            order_of_undo[e.instance].append(e.step)
    checks.append(
        Check(
            "undone in reverse order (release, then refund)",
            dict(order_of_undo) == expected_undo,
            "ledger order" if dict(order_of_undo) == expected_undo else f"{dict(order_of_undo)}",
        )
    )
    all_dups = sorted(p for p, v in runs.items() if len(v) > 1)
    stray_dups = [p for p in all_dups if p not in snap.in_flight or len(runs[p]) > 2]
    checks.append(
        Check(
            "only calls in flight at the kill ran twice",
            not stray_dups,
            f"{len(all_dups)} of {len(snap.in_flight)} in flight ran twice"
            if not stray_dups
            else f"unexpected: {stray_dups}",
        )
    )
    rerun = sorted(p for p in snap.done if any(e.finished_at > snap.at for e in runs.get(p, [])))
    checks.append(
        Check(
            "nothing recorded before the kill ran again",
            not rerun,
            f"{len(snap.done)} calls done at the kill" if not rerun else f"ran again: {rerun}",
        )
    )
    recorded_twice = sorted(
        (i, c) for i, cs in final.items() for c, call in cs.items() if len(call.ended) != 1
    )
    checks.append(
        Check(
            "each call's outcome recorded exactly once",
            not recorded_twice,
            f"{sum(len(cs) for cs in final.values())} calls"
            if not recorded_twice
            else f"wrong: {recorded_twice}",
        )
    )
    ghost = [e for e in effects if e.pid == snap.pid and e.finished_at > snap.at]
    checks.append(
        Check("the killed worker did nothing after the kill", not ghost, f"pid {snap.pid}")
    )
    return checks


async def demo(keep: bool) -> int:
    """Run the demo in a fresh temporary directory."""
    return await run_in_workdir(
        console,
        "stalwart-saga-demo-",
        (
            f"[bold]Stalwart saga demo[/bold]: {N_ORDERS} order sagas, "
            "a worker killed while undoing failed ones"
        ),
        run_demo,
        keep=keep,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: the demo, or ``worker <db> <ledger>`` for its worker processes."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"] and len(args) == 3:
        return worker_main(args[1], args[2])
    if args not in ([], ["--keep"]):
        console.print("usage: python -m examples.saga_demo [--keep] | worker <db> <ledger>")
        return 2
    return asyncio.run(demo(keep=args == ["--keep"]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
