"""Order fulfilment as a saga: charge the customer, reserve the stock, ship the parcel.

Run it with ``python -m examples.order_fulfillment``. Three orders go through it:

* ``order-1001`` is charged, reserved and shipped: the saga completes;
* ``order-1002`` contains a lithium battery pack the carrier refuses to ship: the saga
  fails at its last step and undoes the completed ones in reverse completion order
  (the stock is released, then the payment is refunded) and ends ``compensated``;
* ``order-1003`` contains a sofa, which waits for a freight pickup; the customer cancels
  meanwhile, and the saga again releases and refunds, and ends ``compensated``.

This is the *pairing* style of saga: each forward activity names its compensation when
it is declared (``@activity(compensate=refund_payment)``) and the workflow calls them
inside ``async with ctx.saga():``. A compensation is a durable activity call with its own
retry policy; it receives the forward step's result (the payment id, the reservation id).

Every effect is recorded in a ledger (``examples/saga_tools.py``), the outside world's
view, which the saga demo (``examples/saga_demo.py``) checks after killing a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from examples.orders import LineItem, Order
from examples.saga_tools import (
    Effect,
    console,
    failure_reason,
    read_effects,
    record_effect,
    sqlite_url,
    step_table,
    temporary_directory,
    use_ledger,
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
    WorkflowHandle,
    activity,
    workflow,
)

HAZARDOUS = frozenset({"LIPO-PACK-XL"})
"""SKUs the carrier refuses to carry."""
FREIGHT = frozenset({"SOFA-3-SEATER"})
"""SKUs that wait for a freight pickup."""
FREIGHT_PICKUP_SECONDS = 60.0

LATENCY: dict[str, float] = {
    "charge_customer": 0.0,
    "refund_payment": 0.0,
    "reserve_inventory": 0.0,
    "release_inventory": 0.0,
    "ship_parcel": 0.0,
}
"""Simulated I/O time of each activity, in seconds (the saga demo makes them slower)."""

FORWARD = ("charge_customer", "reserve_inventory", "ship_parcel")
COMPENSATIONS = {"charge_customer": "refund_payment", "reserve_inventory": "release_inventory"}
UNDO_RETRY = RetryPolicy(max_attempts=10, initial_interval=0.05, backoff=2.0, max_interval=1.0)
"""Compensations must eventually succeed: they retry longer than the forward steps."""


class CarrierRefusedError(NonRetryableError):
    """The carrier will not take the parcel (retrying cannot help)."""


@dataclass(frozen=True)
class Shipment:
    """What a completed fulfilment returns."""

    order_id: str
    amount: Decimal
    payment_id: str
    reservation_id: str
    tracking_number: str


def _ref(prefix: str, key: str) -> str:
    """A reference derived from the idempotency key: the same on every re-execution."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


async def _work(step: str) -> float:
    """Simulate the remote call; returns when it started."""
    started = time.time()
    if LATENCY.get(step):
        await asyncio.sleep(LATENCY[step])
    return started


async def _effect(step: str, started: float) -> str:
    return await asyncio.to_thread(record_effect, step, started)


# ----------------------------------------------------------------------------- activities
@activity(retry=UNDO_RETRY)
async def refund_payment(payment_id: str) -> None:
    """Give the customer their money back (compensates ``charge_customer``)."""
    await _effect("refund_payment", await _work("refund_payment"))


@activity(compensate=refund_payment, retry=RetryPolicy(max_attempts=3, initial_interval=0.05))
async def charge_customer(order: Order) -> str:
    """Charge the order's total; returns the payment id."""
    key = await _effect("charge_customer", await _work("charge_customer"))
    return _ref("pay", key)


@activity(retry=UNDO_RETRY)
async def release_inventory(reservation_id: str) -> None:
    """Put the reserved items back on the shelf (compensates ``reserve_inventory``)."""
    await _effect("release_inventory", await _work("release_inventory"))


@activity(compensate=release_inventory, retry=RetryPolicy(max_attempts=3, initial_interval=0.05))
async def reserve_inventory(order: Order) -> str:
    """Reserve the order's items; returns the reservation id."""
    key = await _effect("reserve_inventory", await _work("reserve_inventory"))
    return _ref("rsv", key)


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.05))
async def ship_parcel(order: Order, reservation_id: str) -> str:
    """Hand the parcel to the carrier; returns the tracking number."""
    started = await _work("ship_parcel")
    refused = sorted(HAZARDOUS & {item.sku for item in order.items})
    if refused:
        raise CarrierRefusedError(f"the carrier does not carry {', '.join(refused)}")
    if FREIGHT & {item.sku for item in order.items}:
        await asyncio.sleep(FREIGHT_PICKUP_SECONDS)  # waiting for the freight pickup
    return _ref("TRK", await _effect("ship_parcel", started)).upper()


ACTIVITIES: list[ActivityDefinition[Any, Any]] = [
    charge_customer,
    refund_payment,
    reserve_inventory,
    release_inventory,
    ship_parcel,
]


# ----------------------------------------------------------------------------- workflow
@workflow(name="order_fulfillment")
async def fulfil_order(ctx: WorkflowContext, order: Order) -> Shipment:
    """Charge, reserve and ship one order; undo what was done if a step fails."""
    async with ctx.saga():
        payment_id = await charge_customer(order)
        reservation_id = await reserve_inventory(order)
        tracking_number = await ship_parcel(order, reservation_id)
    return Shipment(order.id, order.total, payment_id, reservation_id, tracking_number)


# ----------------------------------------------------------------------------- the example
def sample_orders() -> list[Order]:
    """The three orders of the example."""
    return [
        Order(
            "order-1001",
            "ada@example.com",
            [
                LineItem("KB-MECH-01", 1, Decimal("89.90")),
                LineItem("MOUSE-02", 1, Decimal("24.99")),
            ],
        ),
        Order(
            "order-1002",
            "grace@example.com",
            [
                LineItem("DRONE-MINI", 1, Decimal("199.00")),
                LineItem("LIPO-PACK-XL", 2, Decimal("39.50")),
            ],
        ),
        Order(
            "order-1003",
            "edsger@example.com",
            [LineItem("SOFA-3-SEATER", 1, Decimal("649.00"))],
        ),
    ]


@dataclass
class OrderOutcome:
    """How one order ended, its step table and its effects in the ledger."""

    order: Order
    status: str
    detail: str
    steps: list[StepInfo]
    effects: list[Effect] = field(default_factory=list)


async def wait_for_step(
    handle: WorkflowHandle[Shipment], name: str, status: str, timeout: float = 10.0
) -> None:
    """Poll the step table until step ``name`` has ``status``."""
    deadline = time.monotonic() + timeout
    while not any(s.name == name and s.status == status for s in await handle.steps()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{handle.id}: {name} did not reach {status} in {timeout:g}s")
        await asyncio.sleep(0.01)


async def outcome(handle: WorkflowHandle[Shipment], order: Order) -> OrderOutcome:
    """Wait for the order's end and collect its outcome."""
    try:
        shipment = await handle.result(timeout=30)
        status, detail = "completed", f"shipped, tracking number {shipment.tracking_number}"
    except WorkflowFailedError as exc:
        status, detail = exc.status, f"rolled back ({failure_reason(exc.message)})"
    return OrderOutcome(order, status, detail, await handle.steps())


async def run_orders(workdir: Path) -> list[OrderOutcome]:
    """Run the three orders on SQLite files in ``workdir``; return their outcomes."""
    ledger = workdir / "ledger.db"
    use_ledger(ledger)
    options = WorkerOptions(poll_interval=0.05)
    try:
        async with Engine(
            sqlite_url(workdir / "engine.db"),
            workflows=[fulfil_order],
            activities=ACTIVITIES,
            options=options,
        ) as engine:
            ok, refused, cancelled = sample_orders()
            handles = [await fulfil_order.start(engine, o, id=o.id) for o in (ok, refused)]
            sofa = await fulfil_order.start(engine, cancelled, id=cancelled.id)
            await wait_for_step(sofa, "ship_parcel", "running")
            await sofa.cancel("the customer cancelled the order")
            outcomes = [
                await outcome(h, o) for h, o in zip([*handles, sofa], sample_orders(), strict=True)
            ]
    finally:
        use_ledger(None)
    effects = read_effects(ledger)
    for out in outcomes:
        out.effects = [e for e in effects if e.instance == out.order.id]
    return outcomes


def show(outcomes: list[OrderOutcome]) -> None:
    """Print each order's outcome, step table and ledger."""
    for out in outcomes:
        colour = "green" if out.status == "completed" else "yellow"
        console.print(
            f"[bold]{out.order.id}[/bold] ({out.order.total} EUR)  "
            f"[{colour}]{out.status}[/{colour}]  {out.detail}"
        )
        console.print(step_table(out.steps, closed=True))
        trail = " → ".join(e.step for e in out.effects) or "nothing"
        console.print(f"  [dim]ledger:[/dim] {trail}\n")


def main() -> int:
    """Run the example and print the outcomes."""
    console.print("[bold]Order fulfilment saga[/bold]: charge → reserve → ship\n")
    with temporary_directory("stalwart-order-fulfillment-") as workdir:
        outcomes = asyncio.run(run_orders(workdir))
    show(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
