"""The reference interpreter and the program language, checked by hand-computed cases.

The property tests trust the reference; these cases pin its semantics to numbers worked
out here, independently of any engine run.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from .harness import property_settings
from .program import (
    ACT,
    STEP,
    UNDO,
    Act,
    Child,
    ContinueAsNew,
    Fail,
    Gather,
    Program,
    Saga,
    Sleep,
    Step,
    WaitSignal,
    activity_value,
    from_json,
    mix,
    to_json,
    validate,
)
from .reference import expected
from .strategies import programs


def test_activities_and_timers_take_consecutive_command_numbers() -> None:
    trace = expected((Act(1, fail=2), Sleep(7), WaitSignal("s0", 4)), "p")
    value = activity_value(ACT, 1, 0)
    (run,) = trace.runs
    assert run.commands == [
        ("activity", 0, ACT, [1, 0, 2, None], ("ok", 3, value)),
        ("timer", 1),
    ]
    acc = mix(mix(mix(0, value), ["slept", 7]), ["signal", "s0", 4])
    assert run.end == ("completed", acc)


def test_failed_activity_is_folded_with_its_error_and_attempts() -> None:
    trace = expected((Act(1, fatal="exhausted"), Act(2, fatal="nonretryable")), "p")
    (run,) = trace.runs
    assert [c[4] for c in run.commands] == [
        ("failed", 3, "RuntimeError"),
        ("failed", 1, "NonRetryableError"),
    ]
    acc = mix(mix(0, ["err", "RuntimeError", 3]), ["err", "NonRetryableError", 1])
    assert run.end == ("completed", acc)


def test_saga_undoes_completed_steps_most_recent_first() -> None:
    trace = expected((Saga((Step(1), Step(3), Fail())), Act(5)), "p")
    r1 = activity_value(STEP, 1, 0)
    r3 = activity_value(STEP, 3, mix(0, r1))
    (run,) = trace.runs
    assert run.commands[2:8] == [
        ("compensate", 1),
        ("activity", 2, UNDO, [r3, 3], ("ok", 2, None)),  # key 3: the undo is retried once
        ("compensated", 1),
        ("compensate", 0),
        ("activity", 3, UNDO, [r1, 1], ("ok", 1, None)),
        ("compensated", 0),
    ]
    acc = mix(mix(mix(0, r1), r3), ["saga", "compensated"])
    assert run.commands[8][3][1] == acc  # the next call sees the folded saga
    assert run.end[0] == "completed"


def test_saga_with_nothing_to_undo_lets_the_failure_through() -> None:
    assert expected((Saga((Fail(),)), Act(1)), "p").outcome == ("failed",)
    assert expected((Step(2), Saga((Act(1), Fail()))), "p").outcome == ("compensated",)


def test_inner_saga_hands_its_steps_to_the_outer_one() -> None:
    (run,) = expected((Saga((Saga((Step(1),)), Step(2), Fail())),), "p").runs
    assert [c for c in run.commands if c[0] == "compensate"] == [
        ("compensate", 1),
        ("compensate", 0),
    ]


def test_top_level_saga_is_not_undone_by_a_later_run_failure() -> None:
    (run,) = expected((Saga((Step(1),)), Step(2), Fail()), "p").runs
    assert [c for c in run.commands if c[0] == "compensate"] == [("compensate", 1)]
    assert run.end == ("compensated",)


def test_gather_compensation_follows_the_oracle_completion_order() -> None:
    program: Program = (Gather((Step(1), Step(2), Step(4))), Fail())
    in_order = expected(program, "p").runs[0].commands
    reversed_ = expected(program, "p", oracle=lambda _i, _r, cmds: cmds[::-1]).runs[0].commands
    assert [c[1] for c in in_order if c[0] == "compensate"] == [2, 1, 0]
    assert [c[1] for c in reversed_ if c[0] == "compensate"] == [0, 1, 2]


def test_fail_fast_gather_waits_for_running_steps_before_deciding() -> None:
    both_fail = (Saga((Gather((Step(1, fatal="exhausted"), Step(2, fatal="exhausted")), True),)),)
    (run,) = expected(both_fail, "p").runs
    assert run.end[0] == "completed"  # CompensatedError (nothing undone), caught by the op
    one_step = (Saga((Gather((Step(1, fatal="exhausted"),), True),)),)
    assert expected(one_step, "p").outcome == ("failed",)


def test_continue_as_new_carries_the_accumulator_and_the_position() -> None:
    trace = expected((Act(1), ContinueAsNew(), Act(2), ContinueAsNew(), Sleep(1)), "p")
    assert [run.input["pc"] for run in trace.runs] == [0, 2, 4]
    assert [run.end[0] for run in trace.runs] == ["continued", "continued", "completed"]
    assert trace.runs[1].input["acc"] == mix(0, activity_value(ACT, 1, 0))
    assert [c[1] for c in trace.runs[2].commands] == [0]  # numbering restarts per run


def test_children_are_named_by_parent_run_and_command() -> None:
    trace = expected((Act(1), ContinueAsNew(), Child((Fail(),)), Child((Act(3),))), "p")
    assert sorted(trace.children) == ["p/1.0", "p/1.1"]
    assert trace.children["p/1.0"].outcome == ("failed",)
    start = trace.runs[1].commands[1]
    assert start[0] == "child" and start[2]["acc"] == mix(
        trace.runs[1].input["acc"], ["child", "failed"]
    )


@pytest.mark.parametrize(
    "program",
    [
        (Saga((ContinueAsNew(),)),),
        (Child((WaitSignal("s0", 1),)),),
        (ContinueAsNew(), WaitSignal("s0", 1, early=True)),
        (WaitSignal("s0", 1), WaitSignal("s0", 2)),
        (Gather((Act(1), Step(2))),),  # type: ignore[arg-type]
        (Gather((Act(1), Act(2)), fail_fast=True),),
        (Act(1, fail=3),),
    ],
)
def test_invalid_programs_are_refused(program: Program) -> None:
    with pytest.raises(ValueError):
        validate(program)


@property_settings(share=0.2, floor=20)
@given(programs())
def test_generated_programs_are_valid_and_round_trip_through_json(program: Program) -> None:
    validate(program)
    assert from_json(to_json(program)) == program
    expected(program, "p")  # the reference runs every generated program to an end
