"""The e-commerce order workflow of the demo, and its activities.

Each activity sleeps a little (standing in for a call to an inventory service, a payment
gateway, a carrier, a mail server) and then records that it ran in a *ledger*: a table
in a separate SQLite file, written outside the engine with autocommit. The ledger is the
outside world's view of what happened, so the demo can check it against the workflows'
histories after a worker has been killed.

The ledger file is named by the ``ORDER_DEMO_LEDGER`` environment variable (the demo
sets it for the worker processes it starts).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

from stalwart import WorkflowContext, activity, activity_context, workflow

LEDGER_ENV = "ORDER_DEMO_LEDGER"

STEPS = ("validate_inventory", "charge_payment", "ship_order", "send_confirmation_email")
"""The activities of one order, in the order the workflow calls them."""

# Simulated I/O time of each step, in seconds: (minimum, spread).
_LATENCY = {
    "validate_inventory": (0.015, 0.020),
    "charge_payment": (0.040, 0.040),
    "ship_order": (0.025, 0.025),
    "send_confirmation_email": (0.010, 0.015),
}


# ----------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class LineItem:
    """One line of an order."""

    sku: str
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True)
class Order:
    """An order as placed by a customer."""

    id: str
    customer_email: str
    items: list[LineItem]

    @property
    def total(self) -> Decimal:
        """The amount to charge."""
        return sum((item.unit_price * item.quantity for item in self.items), Decimal("0"))


@dataclass(frozen=True)
class Receipt:
    """What the workflow returns once the order went through."""

    order_id: str
    amount: Decimal
    reservation_id: str
    payment_id: str
    tracking_number: str
    email_id: str


# ----------------------------------------------------------------------------- the ledger
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id        TEXT NOT NULL,
    step            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    started_at      REAL NOT NULL,
    finished_at     REAL NOT NULL
)
"""

_local = threading.local()


def ledger_connect(path: str) -> sqlite3.Connection:
    """A connection to the ledger file (autocommit, WAL, shared by processes)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def init_ledger(path: str) -> None:
    """Create the ledger table."""
    conn = ledger_connect(path)
    try:
        conn.execute(LEDGER_SCHEMA)
    finally:
        conn.close()


def _ledger() -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = ledger_connect(os.environ[LEDGER_ENV])
    return conn


def _simulate_io(order_id: str, step: str) -> str:
    """Sleep like a remote call would, then record the execution; return its key.

    The latency is derived from (order, step), so a re-execution takes as long as the
    first one. The ledger row is written when the call's effect has happened: a row
    means "the customer was charged", "the parcel was handed over", and so on.
    """
    ctx = activity_context()
    low, spread = _LATENCY[step]
    digest = hashlib.sha256(f"{order_id}/{step}".encode()).digest()
    started = time.time()
    time.sleep(low + spread * digest[0] / 255)
    _ledger().execute(
        "INSERT INTO executions "
        "(order_id, step, pid, attempt, idempotency_key, started_at, finished_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (order_id, step, os.getpid(), ctx.attempt, ctx.idempotency_key, started, time.time()),
    )
    return ctx.idempotency_key


def _ref(prefix: str, key: str) -> str:
    """A reference derived from the idempotency key: the same on every re-execution."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- activities
@activity
def validate_inventory(order: Order) -> str:
    """Reserve the items; returns the reservation id."""
    return _ref("rsv", _simulate_io(order.id, "validate_inventory"))


@activity
def charge_payment(order_id: str, amount: Decimal) -> str:
    """Charge the customer; returns the payment id.

    A real gateway would receive the idempotency key, so that a charge re-sent after a
    crash is not taken twice.
    """
    return _ref("pay", _simulate_io(order_id, "charge_payment"))


@activity
def ship_order(order: Order, reservation_id: str) -> str:
    """Hand the parcel to the carrier; returns the tracking number."""
    return _ref("trk", _simulate_io(order.id, "ship_order")).upper()


@activity
def send_confirmation_email(order: Order, tracking_number: str) -> str:
    """Tell the customer; returns the message id."""
    return _ref("msg", _simulate_io(order.id, "send_confirmation_email"))


# ----------------------------------------------------------------------------- workflow
@workflow
async def process_order(ctx: WorkflowContext, order: Order) -> Receipt:
    """Reserve, charge, ship and confirm one order."""
    reservation_id = await validate_inventory(order)
    payment_id = await charge_payment(order.id, order.total)
    tracking_number = await ship_order(order, reservation_id)
    email_id = await send_confirmation_email(order, tracking_number)
    return Receipt(
        order_id=order.id,
        amount=order.total,
        reservation_id=reservation_id,
        payment_id=payment_id,
        tracking_number=tracking_number,
        email_id=email_id,
    )
