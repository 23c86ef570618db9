"""The payment workflow, written with the fluent saga API (``ctx.step(...)``).

Run it with ``python -m examples.payment_workflow``. A payment is validated, the card is
charged (compensated by a refund), the purchase is fulfilled, and a confirmation email
is sent as an ``.optional()`` step::

    await ctx.step(validate_payment, request)
    charge_id = await ctx.step(charge_card, request).compensate(refund_charge).retry(...)
    fulfilment_id = await ctx.step(fulfil_purchase, request, charge_id)
    email_id = await ctx.step(send_payment_confirmation, request, charge_id).optional()

Steps outside an explicit ``ctx.saga()`` block belong to the workflow's own saga: if the
workflow fails, the completed steps with a compensation are undone. Three payments:

* ``pay-2001`` goes through: every step completes;
* ``pay-2002``'s confirmation email cannot be delivered (the mail server is unreachable
  for that domain, twice): the optional step is ``skipped`` and the payment still
  completes. Nothing is refunded;
* ``pay-2003`` asks for an item that is out of stock: fulfilment fails, the charge is
  refunded and the workflow ends ``compensated``.
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
    activity,
    workflow,
)

OUT_OF_STOCK = frozenset({"GPU-RTX-9090"})
UNREACHABLE_MAIL_DOMAINS = frozenset({"mail.invalid"})
CHARGE_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05)
EMAIL_RETRY = RetryPolicy(max_attempts=2, initial_interval=0.05)


class InvalidPaymentError(NonRetryableError):
    """The payment request cannot be honoured as it is."""


class OutOfStockError(NonRetryableError):
    """An item of the purchase is not available."""


@dataclass(frozen=True)
class PaymentRequest:
    """A customer's payment for a purchase."""

    id: str
    customer_email: str
    card_token: str
    amount: Decimal
    skus: list[str]
    currency: str = "EUR"


@dataclass(frozen=True)
class PaymentReceipt:
    """What a completed payment workflow returns."""

    payment_id: str
    charge_id: str
    fulfilment_id: str
    confirmation_id: str | None
    """None when the confirmation email could not be sent (an optional step)."""


def _ref(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- activities
@activity(retry=RetryPolicy(max_attempts=1))
def validate_payment(request: PaymentRequest) -> None:
    """Refuse malformed requests before anything is charged (no effect, no compensation)."""
    if request.amount <= 0:
        raise InvalidPaymentError(f"amount must be positive, got {request.amount}")
    if not request.card_token.startswith("tok_"):
        raise InvalidPaymentError("unknown card token")


@activity
def charge_card(request: PaymentRequest) -> str:
    """Charge the card; returns the charge id (derived from the idempotency key, which a
    real gateway would receive to make a re-sent charge a no-op)."""
    return _ref("ch", record_effect("charge_card", time.time()))


@activity(retry=RetryPolicy(max_attempts=10, initial_interval=0.05, max_interval=1.0))
def refund_charge(charge_id: str) -> None:
    """Refund a charge (the compensation of ``charge_card``; receives its result)."""
    record_effect("refund_charge", time.time())


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.05))
def fulfil_purchase(request: PaymentRequest, charge_id: str) -> str:
    """Hand the paid purchase to fulfilment; returns the fulfilment id."""
    missing = sorted(OUT_OF_STOCK & set(request.skus))
    if missing:
        raise OutOfStockError(f"{', '.join(missing)} is out of stock")
    return _ref("ful", record_effect("fulfil_purchase", time.time()))


@activity
def send_payment_confirmation(request: PaymentRequest, charge_id: str) -> str:
    """Email the customer a confirmation; returns the message id."""
    domain = request.customer_email.rsplit("@", 1)[-1]
    if domain in UNREACHABLE_MAIL_DOMAINS:
        raise ConnectionError(f"mail server for {domain} is unreachable")
    return _ref("msg", record_effect("send_payment_confirmation", time.time()))


ACTIVITIES: list[ActivityDefinition[Any, Any]] = [
    validate_payment,
    charge_card,
    refund_charge,
    fulfil_purchase,
    send_payment_confirmation,
]


# ----------------------------------------------------------------------------- workflow
@workflow(name="payment_workflow")
async def process_payment(ctx: WorkflowContext, request: PaymentRequest) -> PaymentReceipt:
    """Validate, charge (refunded if a later step fails), fulfil, confirm (optional)."""
    await ctx.step(validate_payment, request)
    charge_id = await (
        ctx.step(charge_card, request).compensate(refund_charge).retry(CHARGE_RETRY).timeout(30)
    )
    fulfilment_id = await ctx.step(fulfil_purchase, request, charge_id).timeout(30)
    # A confirmation that cannot be sent is not worth a refund: the step is optional.
    confirmation_id = await (
        ctx.step(send_payment_confirmation, request, charge_id).retry(EMAIL_RETRY).optional()
    )
    return PaymentReceipt(request.id, charge_id, fulfilment_id, confirmation_id)


# ----------------------------------------------------------------------------- the example
def sample_payments() -> list[PaymentRequest]:
    """The three payments of the example."""
    return [
        PaymentRequest(
            "pay-2001", "ada@example.com", "tok_visa_4242", Decimal("59.90"), ["BOOK-1"]
        ),
        PaymentRequest(
            "pay-2002", "grace@mail.invalid", "tok_mc_5555", Decimal("24.50"), ["MUG-2"]
        ),
        PaymentRequest(
            "pay-2003", "alan@example.com", "tok_amex_3782", Decimal("1999.00"), ["GPU-RTX-9090"]
        ),
    ]


@dataclass
class PaymentOutcome:
    """How one payment ended."""

    request: PaymentRequest
    status: str
    detail: str
    receipt: PaymentReceipt | None
    steps: list[StepInfo]
    effects: list[Effect] = field(default_factory=list)


async def run_payments(workdir: Path) -> list[PaymentOutcome]:
    """Run the three payments on SQLite files in ``workdir``; return their outcomes."""
    ledger = workdir / "ledger.db"
    use_ledger(ledger)
    outcomes: list[PaymentOutcome] = []
    try:
        async with Engine(
            sqlite_url(workdir / "engine.db"),
            workflows=[process_payment],
            activities=ACTIVITIES,
            options=WorkerOptions(poll_interval=0.05),
        ) as engine:
            requests = sample_payments()
            handles = [await process_payment.start(engine, r, id=r.id) for r in requests]
            for handle, request in zip(handles, requests, strict=True):
                receipt: PaymentReceipt | None = None
                try:
                    receipt = await handle.result(timeout=30)
                    status = "completed"
                    detail = f"charged {request.amount} {request.currency}, " + (
                        "confirmation sent" if receipt.confirmation_id else "no confirmation"
                    )
                except WorkflowFailedError as exc:
                    status, detail = exc.status, f"refunded ({failure_reason(exc.message)})"
                outcomes.append(
                    PaymentOutcome(request, status, detail, receipt, await handle.steps())
                )
    finally:
        use_ledger(None)
    effects = read_effects(ledger)
    for out in outcomes:
        out.effects = [e for e in effects if e.instance == out.request.id]
    return outcomes


def show(outcomes: list[PaymentOutcome]) -> None:
    """Print each payment's outcome, step table and ledger."""
    for out in outcomes:
        colour = "green" if out.status == "completed" else "yellow"
        console.print(
            f"[bold]{out.request.id}[/bold]  [{colour}]{out.status}[/{colour}]  {out.detail}"
        )
        console.print(step_table(out.steps, closed=True))
        trail = " → ".join(e.step for e in out.effects) or "nothing"
        console.print(f"  [dim]ledger:[/dim] {trail}\n")


def main() -> int:
    """Run the example and print the outcomes."""
    console.print(
        "[bold]Payment workflow[/bold] (fluent steps): "
        "validate → charge → fulfil → confirmation email (optional)\n"
    )
    with temporary_directory("stalwart-payment-workflow-") as workdir:
        outcomes = asyncio.run(run_payments(workdir))
    show(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
