"""The saga examples run, and do what their docstrings say.

Each example module has a ``run_*`` coroutine returning its outcomes (statuses, step
tables, ledger or bank contents), which these tests check, and a ``main()`` that prints
them. Some tests reproduce library bugs found while writing the examples (fixed since).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from examples.money_transfer import Transfer, TransferRefusedError
from examples.saga_tools import read_effects, sqlite_url, use_ledger

from examples import money_transfer, order_fulfillment, payment_workflow, user_onboarding
from stalwart import (
    Engine,
    WorkerOptions,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from stalwart.activity_context import ACTIVITY_CONTEXT_VAR, ActivityContext

ORDER_STEPS = ["charge_customer", "reserve_inventory", "ship_parcel"]
UNDO = ["release_inventory", "refund_payment"]


# ----------------------------------------------------------------------------- every main()
@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (order_fulfillment, ["order-1001", "order-1003", "refund_payment"]),
        (user_onboarding, ["linus", "remove_mailbox", "5000 GB requested"]),
        (payment_workflow, ["pay-2002", "skipped", "refund_charge"]),
        (money_transfer, ["t-2", "credit_back", "1,700.00"]),
    ],
    ids=lambda v: getattr(v, "__name__", "").rsplit(".", 1)[-1],
)
def test_main_prints_its_outcome_and_exits_0(
    module: object, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert module.main() == 0  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


# ----------------------------------------------------------------------------- a) orders
async def test_order_fulfillment_completes_compensates_and_cancels(tmp_path: Path) -> None:
    outcomes = {o.order.id: o for o in await order_fulfillment.run_orders(tmp_path)}
    assert {i: o.status for i, o in outcomes.items()} == {
        "order-1001": "completed",
        "order-1002": "compensated",
        "order-1003": "compensated",
    }

    shipped = outcomes["order-1001"]
    assert [(s.name, s.status, s.compensation) for s in shipped.steps] == [
        (name, "completed", None) for name in ORDER_STEPS
    ]
    assert shipped.detail.startswith("shipped, tracking number TRK_")
    assert [e.step for e in shipped.effects] == ORDER_STEPS

    refused = outcomes["order-1002"]
    assert [(s.name, s.status, s.compensation) for s in refused.steps] == [
        ("charge_customer", "compensated", "refund_payment"),
        ("reserve_inventory", "compensated", "release_inventory"),
        ("ship_parcel", "failed", None),
    ]
    assert refused.steps[2].error is not None
    assert refused.steps[2].error["type"] == "CarrierRefusedError"
    assert "LIPO-PACK-XL" in refused.detail
    # undone in reverse completion order: the reservation first, then the payment
    assert [e.step for e in refused.effects] == ORDER_STEPS[:2] + UNDO

    cancelled = outcomes["order-1003"]
    assert "cancelled: the customer cancelled the order" in cancelled.detail
    rows = {s.name: s for s in cancelled.steps}
    assert rows["charge_customer"].status == rows["reserve_inventory"].status == "compensated"
    assert rows["ship_parcel"].status not in ("completed", "compensated")
    assert rows["ship_parcel"].compensation is None
    assert [e.step for e in cancelled.effects] == ORDER_STEPS[:2] + UNDO


async def test_cancelled_order_leaves_no_running_step(tmp_path: Path) -> None:
    outcomes = await order_fulfillment.run_orders(tmp_path)
    cancelled = next(o for o in outcomes if o.order.id == "order-1003")
    assert [s.status for s in cancelled.steps if s.status == "running"] == []


async def test_cancel_during_compensation_still_undoes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(order_fulfillment.LATENCY, "release_inventory", 0.5)
    ledger = tmp_path / "ledger.db"
    use_ledger(ledger)
    refused = order_fulfillment.sample_orders()[1]
    try:
        async with Engine(
            sqlite_url(tmp_path / "engine.db"),
            workflows=[order_fulfillment.fulfil_order],
            activities=order_fulfillment.ACTIVITIES,
            options=WorkerOptions(poll_interval=0.05),
        ) as engine:
            handle = await order_fulfillment.fulfil_order.start(engine, refused, id=refused.id)
            await order_fulfillment.wait_for_step(handle, "reserve_inventory", "compensating")
            await handle.cancel("the customer gave up waiting")
            with pytest.raises(WorkflowFailedError) as info:
                await handle.result(timeout=10)
            steps = await handle.steps()
    finally:
        use_ledger(None)
    assert info.value.status == "compensated"
    assert [s.status for s in steps[:2]] == ["compensated", "compensated"]
    assert [e.step for e in read_effects(ledger)] == ORDER_STEPS[:2] + UNDO


# ----------------------------------------------------------------------------- b) onboarding
async def test_user_onboarding_undoes_the_parallel_group(tmp_path: Path) -> None:
    results = {r.user: r for r in await user_onboarding.run_sign_ups(tmp_path)}

    ada = results["ada"]
    assert ada.status == "completed"
    assert [(s.name, s.status) for s in ada.steps] == [
        ("create_account", "completed"),
        ("provision_mailbox", "completed"),
        ("provision_storage", "completed"),
        ("send_welcome", "completed"),
    ]
    assert ada.state["mailbox"] == "ada@example.com"
    assert ada.state["bucket"].startswith("bucket-")
    assert ada.state["welcome_message"].startswith("msg-")
    steps = [e.step for e in ada.effects]
    assert steps[0] == "open_account" and steps[-1] == "send_welcome_email"
    assert sorted(steps[1:3]) == ["create_bucket", "create_mailbox"]

    linus = results["linus"]
    assert linus.status == "compensated"
    assert "5000 GB requested" in linus.detail
    assert [(s.name, s.status) for s in linus.steps] == [
        ("create_account", "compensated"),
        ("provision_mailbox", "compensated"),
        ("provision_storage", "failed"),
        ("send_welcome", "pending"),
    ]
    # the mailbox (provisioned in parallel with the failing storage) is removed first
    assert [e.step for e in linus.effects] == [
        "open_account",
        "create_mailbox",
        "delete_mailbox",
        "close_account",
    ]
    assert {k: linus.state[k] for k in ("account_id", "mailbox", "bucket")} == dict.fromkeys(
        ("account_id", "mailbox", "bucket")
    )


# ----------------------------------------------------------------------------- c) payments
async def test_payment_workflow_optional_email_and_refund(tmp_path: Path) -> None:
    outcomes = {o.request.id: o for o in await payment_workflow.run_payments(tmp_path)}
    names = ["validate_payment", "charge_card", "fulfil_purchase", "send_payment_confirmation"]

    paid = outcomes["pay-2001"]
    assert paid.status == "completed"
    assert [(s.name, s.status) for s in paid.steps] == [(n, "completed") for n in names]
    assert paid.receipt is not None and paid.receipt.confirmation_id is not None
    assert [e.step for e in paid.effects] == names[1:]

    unconfirmed = outcomes["pay-2002"]
    assert unconfirmed.status == "completed"
    statuses = [(s.name, s.status) for s in unconfirmed.steps]
    assert statuses == [*[(n, "completed") for n in names[:3]], (names[3], "skipped")]
    assert unconfirmed.steps[3].attempts == 2  # its own retry policy, then skipped
    assert unconfirmed.receipt is not None and unconfirmed.receipt.confirmation_id is None
    assert [e.step for e in unconfirmed.effects] == ["charge_card", "fulfil_purchase"]

    refunded = outcomes["pay-2003"]
    assert refunded.status == "compensated"
    assert "GPU-RTX-9090 is out of stock" in refunded.detail
    assert [(s.name, s.status, s.compensation) for s in refunded.steps] == [
        ("validate_payment", "completed", None),
        ("charge_card", "compensated", "refund_charge"),
        ("fulfil_purchase", "failed", None),
    ]
    assert [e.step for e in refunded.effects] == ["charge_card", "refund_charge"]


# ----------------------------------------------------------------------------- d) transfers
async def test_money_transfer_conserves_balances(tmp_path: Path) -> None:
    report = await money_transfer.run_transfers(tmp_path)
    outcomes = {o.transfer.id: o for o in report.outcomes}
    assert {i: o.status for i, o in outcomes.items()} == {
        "t-1": "completed",
        "t-2": "compensated",
        "t-3": "completed",
    }
    assert [(s.name, s.status, s.compensation) for s in outcomes["t-2"].steps] == [
        ("debit_account", "compensated", "credit_back"),
        ("credit_account", "failed", None),
    ]
    assert "account 'dave' is frozen" in outcomes["t-2"].detail
    assert [(s.name, s.attempts) for s in outcomes["t-3"].steps] == [
        ("debit_account", 1),
        ("credit_account", 2),
    ]

    assert report.closing == {"alice": 75_000, "bob": 71_000, "carol": 24_000, "dave": 0}
    assert sum(report.closing.values()) == sum(report.opening.values())
    applied: Counter[str] = Counter()
    for entry in report.entries:
        applied[entry.account] += entry.delta
    assert report.closing == {a: report.opening[a] + applied[a] for a in report.opening}
    assert [(e.transfer_id, e.operation, e.delta) for e in report.entries] == [
        ("t-1", "debit", -25_000),
        ("t-1", "credit", 25_000),
        ("t-2", "debit", -10_000),
        ("t-2", "credit_back", 10_000),
        ("t-3", "debit", -4_000),
        ("t-3", "credit", 4_000),
    ]
    # t-3's lost reply: the retry found the idempotency key and applied nothing
    trail = [(e.instance, e.operation, e.attempt, e.outcome) for e in report.executions]
    assert ("t-3", "credit", 1, "applied") in trail
    assert ("t-3", "credit", 2, "duplicate") in trail
    assert ("t-2", "credit", 1, "refused") in trail
    assert [e.kind for e in report.executions if e.operation == "credit_back"] == ["compensation"]


def _as_activity(instance: str, cmd: int, attempt: int) -> ActivityContext:
    return ActivityContext(instance, "run-1", "debit_account", cmd, attempt)


def test_a_re_executed_account_operation_does_not_apply_twice(tmp_path: Path) -> None:
    bank = tmp_path / "bank.db"
    money_transfer.open_bank(bank, {"a": 1_000, "b": 0})
    money_transfer.use_bank(bank)
    transfer = Transfer("t-9", "a", "b", 300)
    try:
        # the first execution, its re-execution after a crash, and a later retry: one key
        for attempt in (1, 1, 2):
            token = ACTIVITY_CONTEXT_VAR.set(_as_activity("t-9", 0, attempt))
            try:
                assert money_transfer.debit_account(transfer) == "t-9:run-1:0"
            finally:
                ACTIVITY_CONTEXT_VAR.reset(token)
        # another call (another command number) is another effect; it is refused
        token = ACTIVITY_CONTEXT_VAR.set(_as_activity("t-10", 0, 1))
        try:
            with pytest.raises(TransferRefusedError, match="insufficient funds"):
                money_transfer.debit_account(Transfer("t-10", "a", "b", 5_000))
        finally:
            ACTIVITY_CONTEXT_VAR.reset(token)
    finally:
        money_transfer.use_bank(None)
    assert money_transfer.balances(bank) == {"a": 700, "b": 0}
    assert [e.outcome for e in money_transfer.executions(bank)] == [
        "applied",
        "duplicate",
        "duplicate",
        "refused",
    ]
    assert len(money_transfer.entries(bank)) == 1


@workflow(name="standing_order_probe")
async def standing_order(ctx: WorkflowContext, transfer: Transfer, months: int) -> None:
    """Debit once a month, continuing as new each month (bounded history)."""
    await money_transfer.debit_account(transfer)
    if months > 1:
        ctx.continue_as_new(transfer, months - 1)


async def test_idempotency_keys_differ_across_continue_as_new(tmp_path: Path) -> None:
    bank = tmp_path / "bank.db"
    money_transfer.open_bank(bank, {"a": 1_000, "b": 0})
    money_transfer.use_bank(bank)
    try:
        async with Engine(
            sqlite_url(tmp_path / "engine.db"),
            workflows=[standing_order],
            activities=money_transfer.ACTIVITIES,
            options=WorkerOptions(poll_interval=0.05),
        ) as engine:
            await standing_order.run(
                engine, Transfer("rent", "a", "b", 100), 2, id="rent", timeout=10
            )
    finally:
        money_transfer.use_bank(None)
    assert money_transfer.balances(bank)["a"] == 800
