"""The checks themselves: a recorded run passes, and each kind of damage to its history
is caught (so a passing property test means something)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from stalwart._engine import events as ev
from stalwart.testing import TestEngine

from .checks import History, Observed, check_against_reference
from .harness import VIRTUAL_TIMEOUT, run_program
from .interpreter import ACTIVITIES, prop_interp
from .test_fixtures import load_fixture

PROGRAM = load_fixture("gather_inside_saga").program


@pytest.fixture(scope="module")
def recorded() -> Observed:
    async def run() -> Observed:
        async with TestEngine(workflows=[prop_interp], activities=ACTIVITIES) as env:
            return await run_program(env, PROGRAM, timeout=VIRTUAL_TIMEOUT)

    return asyncio.run(run())


def _tampered(observed: Observed, change: Callable[[History], History]) -> Observed:
    history = change(list(observed.instances["p"][0]))
    renumbered = [dataclasses.replace(h, seq=i) for i, h in enumerate(history)]
    return Observed(observed.outcome, {**observed.instances, "p": [renumbered]})


def _replace_first(kind: type[ev.Event], **changes: object) -> Callable[[History], History]:
    def change(history: History) -> History:
        index = next(i for i, h in enumerate(history) if isinstance(h.event, kind))
        event = dataclasses.replace(history[index].event, **changes)
        history[index] = dataclasses.replace(history[index], event=event)
        return history

    return change


def _duplicate_first(kind: type[ev.Event]) -> Callable[[History], History]:
    def change(history: History) -> History:
        index = next(i for i, h in enumerate(history) if isinstance(h.event, kind))
        return [*history[: index + 1], history[index], *history[index + 1 :]]

    return change


def _swap_compensations(history: History) -> History:
    """Undo the first two compensated steps in the other order (same events otherwise)."""
    starts = [h.event.step for h in history if isinstance(h.event, ev.CompensationStarted)]
    first, second = starts[0], starts[1]
    swap = {first: second, second: first}
    out = []
    for h in history:
        if isinstance(h.event, ev.CompensationStarted | ev.StepCompensated):
            h = dataclasses.replace(
                h, event=dataclasses.replace(h.event, step=swap.get(h.event.step, h.event.step))
            )
        out.append(h)
    return out


def test_the_recorded_run_passes(recorded: Observed) -> None:
    check_against_reference(PROGRAM, recorded)


@pytest.mark.parametrize(
    ("damage", "change"),
    [
        ("another activity result", _replace_first(ev.ActivityCompleted, result=12345)),
        ("another attempt count", _replace_first(ev.ActivityCompleted, attempt=2)),
        ("an activity input", _replace_first(ev.ActivityScheduled, input=[9, 9, 0, None])),
        ("a result recorded twice", _duplicate_first(ev.ActivityCompleted)),
        ("a retry recorded twice", _duplicate_first(ev.ActivityAttemptFailed)),
        ("compensations out of order", _swap_compensations),
        ("another final result", _replace_first(ev.WorkflowCompleted, result=0)),
    ],
)
def test_damage_is_caught(
    recorded: Observed, damage: str, change: Callable[[History], History]
) -> None:
    with pytest.raises(AssertionError, match="disagrees with the reference"):
        check_against_reference(PROGRAM, _tampered(recorded, change))


def test_a_wrong_observed_result_is_caught(recorded: Observed) -> None:
    wrong = Observed(("completed", 1), recorded.instances)
    with pytest.raises(AssertionError, match="result"):
        check_against_reference(PROGRAM, wrong)
