"""The fault-injection plan: parsing, counting hits, and staying inert when unused."""

from __future__ import annotations

import pytest

from stalwart import faults


def test_plan_fires_at_the_nth_hit_only() -> None:
    plan = faults.FaultPlan.parse("commit.before:raise:2, activity.after_result:raise")
    plan.hit("commit.before")
    with pytest.raises(faults.InjectedFault, match=r"commit\.before"):
        plan.hit("commit.before")
    plan.hit("commit.before")  # only the 2nd hit fires
    with pytest.raises(faults.InjectedFault):
        plan.hit("activity.after_result")
    plan.hit("commit.after")  # not planned


def test_bad_plans_are_refused() -> None:
    for text in ("nowhere:raise", "commit.before:explode", "commit.before:raise:x"):
        with pytest.raises(ValueError):
            faults.FaultPlan.parse(text)


def test_points_are_inert_without_a_plan() -> None:
    assert faults.ACTIVE is None
    faults.point("commit.before")
    faults.install(faults.FaultPlan.parse("commit.before:raise"))
    try:
        with pytest.raises(faults.InjectedFault):
            faults.point("commit.before")
    finally:
        faults.install(None)
