"""The seed's user-trial process: reminders on days 7, 14 and 25, trial end on day 30.

An ``upgrade`` signal converts the user and cancels what is left; an ``extend`` signal
(honoured once) pushes the end of the trial back by seven days. The whole schedule is
durable: a worker restart on day 12 picks up exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from stalwart import WorkflowContext, activity, workflow

DAY = timedelta(days=1)


@dataclass
class TrialOutcome:
    """How a trial ended and what was sent on the way."""

    user_id: str
    converted: bool
    extended: bool
    plan: str | None
    actions: list[str] = field(default_factory=list)


@activity
async def send_trial_email(user_id: str, kind: str) -> None:
    """Send one of the trial emails (a stand-in for the mail provider)."""


@activity
async def disable_trial_features(user_id: str) -> None:
    """Switch the trial features off (a stand-in for the account service)."""


@workflow(name="user_trial")
async def user_trial(ctx: WorkflowContext, user_id: str, trial_days: int = 30) -> TrialOutcome:
    """Run one user's trial from sign-up to conversion or expiry."""
    start = ctx.now()
    outcome = TrialOutcome(user_id, converted=False, extended=False, plan=None)
    trial_end = start + trial_days * DAY
    pending = {
        "reminder": start + 7 * DAY,
        "conversion_offer": start + 14 * DAY,
        "final_reminder": start + 25 * DAY,
    }
    changes = 0

    @ctx.signal_handler("upgrade")
    def upgrade(plan: str) -> None:
        nonlocal changes
        outcome.converted, outcome.plan = True, plan
        changes += 1

    @ctx.signal_handler("extend")
    def extend() -> None:
        nonlocal trial_end, changes
        if not outcome.extended:
            outcome.extended = True
            trial_end += 7 * DAY
            changes += 1

    @ctx.query_handler("status")
    def status() -> dict[str, object]:
        return {
            "converted": outcome.converted,
            "extended": outcome.extended,
            "trial_end": trial_end.isoformat(),
            "sent": list(outcome.actions),
        }

    while not outcome.converted:
        kind, due = min(pending.items(), key=lambda kv: kv[1]) if pending else ("end", trial_end)
        if due > trial_end:
            kind, due = "end", trial_end
        seen = changes
        try:
            await ctx.wait_condition(
                lambda seen=seen: changes != seen,  # type: ignore[misc]
                timeout=max(0.0, (due - ctx.now()).total_seconds()),
            )
            continue  # an upgrade or an extension arrived: re-plan
        except TimeoutError:
            pass
        if kind == "end":
            await disable_trial_features(user_id)
            await send_trial_email(user_id, "trial_ended")
            outcome.actions.append("trial_ended")
            return outcome
        await send_trial_email(user_id, kind)
        outcome.actions.append(kind)
        del pending[kind]
    await send_trial_email(user_id, f"welcome_{outcome.plan}")
    outcome.actions.append(f"welcome_{outcome.plan}")
    return outcome
