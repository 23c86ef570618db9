"""The oracle's checkers catch what they claim to catch (synthetic logs and histories).

The chaos scenarios pass when the engine keeps its promises, so these tests make sure
their checkers would notice if it did not: each feeds ``oracle.check_oracle`` (or
``check_compensations``) a log and a history with one planted violation. No processes,
no store: milliseconds.
"""

from __future__ import annotations

from typing import Any

from stalwart._engine import events as ev
from stalwart._engine.events import HistoryEvent
from tests.chaos import oracle
from tests.chaos.support import Kill

RETRY: dict[str, Any] = {"retry": {"max_attempts": 3}}


def history(*items: tuple[float, ev.Event]) -> list[HistoryEvent]:
    """A history from (time, event) pairs."""
    return [HistoryEvent(n, t, e) for n, (t, e) in enumerate(items)]


def two_steps() -> dict[str, oracle.Timeline]:
    """``i`` ran ``ch_step`` twice (cmds 0 and 1), results recorded at t=2 and t=4."""
    h = history(
        (0.0, ev.WorkflowStarted(name="ch_steps", version=1, input=[], run_id="r")),
        (1.0, ev.ActivityScheduled(cmd=0, name="ch_step", input=[], options=RETRY)),
        (2.0, ev.ActivityCompleted(cmd=0, result=1, attempt=1)),
        (2.0, ev.ActivityScheduled(cmd=1, name="ch_step", input=[], options=RETRY)),
        (4.0, ev.ActivityCompleted(cmd=1, result=1, attempt=1)),
        (4.0, ev.WorkflowCompleted(result=2)),
    )
    return {"i": oracle.timeline(h, "completed")}


def entry(
    n: int,
    cmd: int,
    start: float,
    end: float | None,
    *,
    pid: int = 10,
    epoch: int = 1,
    worker: str = "w-a",
    attempt: int = 1,
) -> oracle.Entry:
    """A log row of instance ``i``."""
    outcome = None if end is None else "returned"
    return oracle.Entry(n, "i", cmd, "ch_step", attempt, pid, epoch, worker, start, end, outcome)


def kinds(report: oracle.Verdict) -> list[str]:
    """The kinds of violations found."""
    return [what for what, _, _ in report.found]


def test_a_clean_run_passes() -> None:
    log = [entry(1, 0, 1.1, 1.5), entry(2, 1, 2.1, 2.5)]
    found = oracle.check_oracle(log, two_steps(), [])
    assert found.count == 0, found.text()
    assert (found.executions, found.calls, found.repeats) == (2, 2, 0)


def test_a_repeat_after_a_kill_in_flight_is_explained() -> None:
    # pid 10 ran cmd 1 and was killed at 2.6 before recording it; pid 11 ran it again.
    log = [
        entry(1, 0, 1.1, 1.5),
        entry(2, 1, 2.1, None),
        entry(3, 1, 3.0, 3.5, pid=11, epoch=2, worker="w-b"),
    ]
    kill = Kill(10, dead_at=2.7, signalled_at=2.6)
    found = oracle.check_oracle(log, two_steps(), [kill])
    assert found.count == 0, found.text()
    assert (found.repeats, found.cut_short, found.per_kill) == (1, 1, [1])


def test_a_repeat_without_a_kill_is_caught() -> None:
    log = [entry(1, 0, 1.1, 1.5), entry(2, 1, 2.1, 2.5), entry(3, 1, 3.0, 3.5, pid=11)]
    found = oracle.check_oracle(log, two_steps(), [])
    assert "repeated executions not explained by a kill" in kinds(found)


def test_a_repeat_in_the_same_lease_epoch_is_caught() -> None:
    log = [
        entry(1, 0, 1.1, 1.5),
        entry(2, 1, 2.1, None),
        entry(3, 1, 3.0, 3.5, pid=11, epoch=1, worker="w-b"),
    ]
    found = oracle.check_oracle(log, two_steps(), [Kill(10, dead_at=2.7, signalled_at=2.6)])
    assert kinds(found) == [
        "repeats in the same worker incarnation or lease epoch as the killed run"
    ]


def test_two_live_workers_on_one_call_are_caught() -> None:
    # pid 11 started cmd 1 while pid 10 (never killed) was still running it.
    log = [entry(1, 0, 1.1, 1.5), entry(2, 1, 2.1, 3.2), entry(3, 1, 3.0, 3.5, pid=11, epoch=2)]
    found = oracle.check_oracle(log, two_steps(), [])
    assert "executions of one call by live workers at the same time" in kinds(found)


def test_a_takeover_before_the_kill_is_caught() -> None:
    # The second execution started before the first worker was killed: it was alive.
    log = [
        entry(1, 0, 1.1, 1.5),
        entry(2, 1, 2.1, None),
        entry(3, 1, 2.3, 3.5, pid=11, epoch=2, worker="w-b"),
    ]
    found = oracle.check_oracle(log, two_steps(), [Kill(10, dead_at=2.7, signalled_at=2.6)])
    assert "executions of one call by live workers at the same time" in kinds(found)


def test_a_step_run_after_its_result_was_recorded_is_caught() -> None:
    log = [entry(1, 0, 1.1, 1.5), entry(2, 1, 2.1, 2.5), entry(3, 0, 3.0, 3.1, pid=11)]
    found = oracle.check_oracle(log, two_steps(), [])
    assert "executions started after their call's result was recorded" in kinds(found)


def test_a_missing_or_doubled_result_is_caught() -> None:
    final = two_steps()
    final["i"].calls[0].outcomes.append(2.5)  # recorded twice
    final["i"].calls[1].outcomes.clear()  # never recorded, yet the instance completed
    log = [entry(1, 0, 1.1, 1.5), entry(2, 1, 2.1, 2.5)]
    found = oracle.check_oracle(log, final, [])
    assert ("calls whose result is not recorded exactly once", 2) in [
        (what, n) for what, n, _ in found.found
    ]


def test_a_result_nobody_produced_and_a_stranger_are_caught() -> None:
    log = [entry(1, 0, 1.1, 1.5), entry(2, 7, 2.1, 2.5)]  # cmd 1 never ran; cmd 7 unknown
    found = oracle.check_oracle(log, two_steps(), [])
    assert "recorded outcomes no logged execution produced" in kinds(found)
    assert "executions that match no call of their history" in kinds(found)


def test_a_cut_short_execution_without_a_kill_and_a_ghost_are_caught() -> None:
    log = [entry(1, 0, 1.1, None), entry(2, 1, 3.1, 3.5)]
    found = oracle.check_oracle(log, two_steps(), [])
    assert "executions cut short without a kill" in kinds(found)
    found = oracle.check_oracle(log, two_steps(), [Kill(10, dead_at=1.9, signalled_at=1.8)])
    assert "executions a killed process started after it was killed" in kinds(found)


def saga(*, undone: int, undo_calls: int) -> dict[str, oracle.Timeline]:
    """A compensated saga: ``ch_reserve`` (cmd 0) done, ``ch_ship`` (cmd 1) failed."""
    items: list[tuple[float, ev.Event]] = [
        (0.0, ev.WorkflowStarted(name="ch_order", version=1, input=[], run_id="r")),
        (1.0, ev.ActivityScheduled(cmd=0, name="ch_reserve", input=[], options=RETRY)),
        (2.0, ev.ActivityCompleted(cmd=0, result="x", attempt=1)),
        (2.0, ev.ActivityScheduled(cmd=1, name="ch_ship", input=[], options=RETRY)),
        (3.0, ev.ActivityFailed(cmd=1, attempts=1, error={"type": "E"})),
        (3.0, ev.CompensationStarted(step=0, name="ch_reserve")),
    ]
    for n in range(undo_calls):
        items.append(
            (3.0 + n, ev.ActivityScheduled(cmd=2 + n, name="ch_release", input=[], options=RETRY))
        )
        items.append((3.5 + n, ev.ActivityCompleted(cmd=2 + n, result=None, attempt=1)))
    items += [(9.0, ev.StepCompensated(step=0, name="ch_reserve"))] * undone
    items.append((9.0, ev.WorkflowCompensated(reason="E")))
    return {"o": oracle.timeline(history(*items), "compensated")}


def test_compensations_checked_once_each() -> None:
    undo_of = {"ch_reserve": "ch_release"}
    assert oracle.check_compensations(saga(undone=1, undo_calls=1), undo_of) == []
    assert oracle.check_compensations(saga(undone=0, undo_calls=0), undo_of)  # skipped
    assert oracle.check_compensations(saga(undone=2, undo_calls=1), undo_of)  # twice
    assert oracle.check_compensations(saga(undone=1, undo_calls=2), undo_of)  # ran twice
