"""User onboarding as a declarative saga: a ``stalwart.Saga`` class.

Run it with ``python -m examples.user_onboarding``. The saga creates the user's account,
then provisions a mailbox and a storage bucket *in parallel*, then sends a welcome email::

    steps = ["create_account", ["provision_mailbox", "provision_storage"], "send_welcome"]

The class's fields are the saga's state (the run's result is the final state, and
``handle.query("state")`` shows it at any time); each ``@saga_step`` method is a step,
and ``compensate="..."`` names the method that undoes it, which receives the step's
return value. Two users sign up:

* ``ada`` asks for 50 GB: every step completes;
* ``linus`` asks for 5000 GB, more than the storage region has free: provisioning the
  storage fails, so the saga undoes what completed, most recent first (the mailbox
  provisioned in parallel, then the account), and ends ``compensated``. The welcome
  email is never sent (its row stays ``pending``).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from dataclasses import dataclass, field
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
    Saga,
    StepInfo,
    WorkerOptions,
    WorkflowContext,
    WorkflowFailedError,
    activity,
    saga_step,
)

STORAGE_FREE_GB = 1000
"""Free capacity of the storage region: larger requests are refused."""
QUICK_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05)
UNDO_RETRY = RetryPolicy(max_attempts=10, initial_interval=0.05, max_interval=1.0)


class QuotaExceededError(NonRetryableError):
    """The storage region cannot hold the requested quota."""


def _ref(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _done(step: str) -> str:
    """Record the effect of the running activity; return its idempotency key."""
    return record_effect(step, time.time())


# ----------------------------------------------------------------------------- activities
@activity(retry=QUICK_RETRY)
def open_account(user: str, email: str) -> str:
    """Create the user's account; returns the account id."""
    return _ref("acct", _done("open_account"))


@activity(retry=UNDO_RETRY)
def close_account(account_id: str) -> None:
    """Delete an account created by ``open_account``."""
    _done("close_account")


@activity(retry=QUICK_RETRY)
async def create_mailbox(account_id: str, email: str) -> str:
    """Create the user's mailbox; returns its address."""
    await asyncio.sleep(0.02)  # the mail server is a little slower than the storage service
    await asyncio.to_thread(_done, "create_mailbox")
    return email


@activity(retry=UNDO_RETRY)
def delete_mailbox(address: str) -> None:
    """Delete a mailbox created by ``create_mailbox``."""
    _done("delete_mailbox")


@activity(retry=QUICK_RETRY)
def create_bucket(account_id: str, quota_gb: int) -> str:
    """Create the user's storage bucket; returns its name."""
    if quota_gb > STORAGE_FREE_GB:
        raise QuotaExceededError(
            f"{quota_gb} GB requested, the storage region has {STORAGE_FREE_GB} GB free"
        )
    return _ref("bucket", _done("create_bucket"))


@activity(retry=UNDO_RETRY)
def delete_bucket(bucket: str) -> None:
    """Delete a bucket created by ``create_bucket``."""
    _done("delete_bucket")


@activity(retry=QUICK_RETRY)
def send_welcome_email(email: str, mailbox: str, bucket: str) -> str:
    """Welcome the user; returns the message id."""
    return _ref("msg", _done("send_welcome_email"))


ACTIVITIES: list[ActivityDefinition[Any, Any]] = [
    open_account,
    close_account,
    create_mailbox,
    delete_mailbox,
    create_bucket,
    delete_bucket,
    send_welcome_email,
]


# ----------------------------------------------------------------------------- the saga
class UserOnboarding(Saga):
    """Account, then mailbox and storage in parallel, then the welcome email."""

    name = "user_onboarding"
    steps = ["create_account", ["provision_mailbox", "provision_storage"], "send_welcome"]

    user: str
    email: str
    storage_gb: int = 50
    account_id: str | None = None
    mailbox: str | None = None
    bucket: str | None = None
    welcome_message: str | None = None

    @saga_step(compensate="remove_account")
    async def create_account(self, ctx: WorkflowContext) -> str:
        self.account_id = await open_account(self.user, self.email)
        return self.account_id

    async def remove_account(self, ctx: WorkflowContext, account_id: str) -> None:
        await close_account(account_id)
        self.account_id = None

    @saga_step(compensate="remove_mailbox")
    async def provision_mailbox(self, ctx: WorkflowContext) -> str:
        assert self.account_id is not None
        self.mailbox = await create_mailbox(self.account_id, self.email)
        return self.mailbox

    async def remove_mailbox(self, ctx: WorkflowContext, address: str) -> None:
        await delete_mailbox(address)
        self.mailbox = None

    @saga_step(compensate="remove_storage")
    async def provision_storage(self, ctx: WorkflowContext) -> str:
        assert self.account_id is not None
        self.bucket = await create_bucket(self.account_id, self.storage_gb)
        return self.bucket

    async def remove_storage(self, ctx: WorkflowContext, bucket: str) -> None:
        await delete_bucket(bucket)
        self.bucket = None

    @saga_step
    async def send_welcome(self, ctx: WorkflowContext) -> None:
        assert self.mailbox is not None and self.bucket is not None
        self.welcome_message = await send_welcome_email(self.email, self.mailbox, self.bucket)


UNDO = {
    "create_account": "remove_account",
    "provision_mailbox": "remove_mailbox",
    "provision_storage": "remove_storage",
}
"""Each step's compensation method (shown in the step tables)."""


# ----------------------------------------------------------------------------- the example
@dataclass
class SignUp:
    """How one sign-up ended."""

    user: str
    status: str
    detail: str
    state: dict[str, Any]
    steps: list[StepInfo]
    effects: list[Effect] = field(default_factory=list)


def sign_ups() -> list[UserOnboarding]:
    """The two users of the example."""
    return [
        UserOnboarding(user="ada", email="ada@example.com", storage_gb=50),
        UserOnboarding(user="linus", email="linus@example.com", storage_gb=5000),
    ]


async def run_sign_ups(workdir: Path) -> list[SignUp]:
    """Onboard both users on SQLite files in ``workdir``; return how each ended."""
    ledger = workdir / "ledger.db"
    use_ledger(ledger)
    out: list[SignUp] = []
    try:
        async with Engine(
            sqlite_url(workdir / "engine.db"),
            workflows=[UserOnboarding.workflow],
            activities=ACTIVITIES,
            options=WorkerOptions(poll_interval=0.05),
        ) as engine:
            handles = [
                await UserOnboarding.start(engine, s, id=f"onboard-{s.user}") for s in sign_ups()
            ]
            for handle, sign_up in zip(handles, sign_ups(), strict=True):
                try:
                    final = await handle.result(timeout=30)
                    status, detail = "completed", f"welcome message {final.welcome_message}"
                except WorkflowFailedError as exc:
                    status, detail = exc.status, f"rolled back ({failure_reason(exc.message)})"
                state = await handle.query("state")
                out.append(SignUp(sign_up.user, status, detail, state, await handle.steps()))
    finally:
        use_ledger(None)
    effects = read_effects(ledger)
    for sign_up_out in out:
        sign_up_out.effects = [e for e in effects if e.instance == f"onboard-{sign_up_out.user}"]
    return out


def show(results: list[SignUp]) -> None:
    """Print each sign-up's outcome, step table, final state and ledger."""
    for r in results:
        colour = "green" if r.status == "completed" else "yellow"
        console.print(f"[bold]{r.user}[/bold]  [{colour}]{r.status}[/{colour}]  {r.detail}")
        console.print(step_table(r.steps, closed=True, undo=UNDO))
        fields = ("account_id", "mailbox", "bucket", "welcome_message")
        state = ", ".join(f"{k.split('_')[0]}={r.state[k]}" for k in fields)
        console.print(f"  [dim]final state:[/dim] {state}")
        trail = " → ".join(e.step for e in r.effects) or "nothing"
        console.print(f"  [dim]ledger:[/dim]      {trail}\n")


def main() -> int:
    """Run the example and print the outcomes."""
    console.print(
        "[bold]User onboarding saga[/bold] (a stalwart.Saga class): "
        "account → \\[mailbox ‖ storage] → welcome\n"
    )
    with temporary_directory("stalwart-user-onboarding-") as workdir:
        results = asyncio.run(run_sign_ups(workdir))
    show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
