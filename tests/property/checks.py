"""Checking what Stalwart recorded against the reference interpreter.

:func:`check_against_reference` is properties (a)-(c) for one run of a program:

* (a) the root's result, and for every instance (found by following child starts) every
  run's input, its commands in order with their recorded outcomes (activity name, input,
  attempts, result or error type; timers; child starts; compensations) and its end, equal
  the reference's;
* (b) every call, timer and child has exactly one recorded outcome, with as many failed
  attempts recorded as its attempt count says; child ids are unique;
* (c) every recorded run replays from scratch with the engine's ``Replayer``: no
  divergence, the same end, nothing pending, and the interpreter issues the very same
  commands (inputs included: the engine itself only compares type, number and name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stalwart._engine import events as ev
from stalwart.testing import Replayer

from . import interpreter
from .interpreter import prop_interp
from .program import UNDO, Program, program_json
from .reference import InstanceTrace, Oracle, RunTrace, child_name, expected

History = list[ev.HistoryEvent]


@dataclass
class Observed:
    """What a run of a program produced."""

    outcome: tuple[Any, ...]
    """``("completed", acc)`` or ``(status,)`` as seen by ``handle.result()``."""
    instances: dict[str, list[History]] = field(default_factory=dict)
    """Every run's history of the root and all its descendants, by instance id."""
    restarted: bool = False
    """Whether the engine was replaced before the root ended (restart runs)."""


# ----------------------------------------------------------------------------- naming
def name_instances(instances: dict[str, list[History]], root: str) -> dict[str, list[History]]:
    """The recorded runs by the reference's child names (:func:`reference.child_name`)
    instead of real ids, so a child is compared with the one the reference expects there."""
    named: dict[str, list[History]] = {}
    todo = [(root, root)]
    while todo:
        name, real = todo.pop()
        runs = instances.get(real, [])
        named[name] = runs
        for index, history in enumerate(runs):
            for h in history:
                if isinstance(h.event, ev.ChildWorkflowStarted):
                    todo.append((child_name(name, index, h.event.cmd), h.event.child_id))
    return named


def history_oracle(named: dict[str, list[History]]) -> Oracle:
    """Answer the reference's one timing question from the recorded histories: the order
    in which the given calls' outcomes were recorded."""

    def order(name: str, run: int, cmds: list[int]) -> list[int]:
        runs = named.get(name, [])
        if run >= len(runs):
            return list(cmds)
        position: dict[int, int] = {}
        for h in runs[run]:
            if isinstance(h.event, ev.ActivityCompleted | ev.ActivityFailed):
                position.setdefault(h.event.cmd, h.seq)
        return sorted(cmds, key=lambda cmd: (position.get(cmd, 1 << 60), cmd))

    return order


def _outcomes(history: History) -> dict[int, tuple[Any, ...]]:
    outcomes: dict[int, tuple[Any, ...]] = {}
    for h in history:
        e = h.event
        if isinstance(e, ev.ActivityCompleted):
            outcomes[e.cmd] = ("ok", e.attempt, e.result)
        elif isinstance(e, ev.ActivityFailed):
            outcomes[e.cmd] = ("failed", e.attempts, e.error.get("type"))
    return outcomes


def run_end(event: ev.Event) -> tuple[Any, ...]:
    """How a run ended, in the reference's terms."""
    if isinstance(event, ev.WorkflowCompleted):
        return ("completed", event.result)
    if isinstance(event, ev.WorkflowContinuedAsNew):
        return ("continued", event.input[0])
    if isinstance(event, ev.WorkflowFailed):
        return ("failed",)
    if isinstance(event, ev.WorkflowCompensated):
        return ("compensated",)
    return ("not ended", event.kind)


def recorded_run(history: History) -> RunTrace:
    """A recorded run in the reference's terms (commands in the order they were issued)."""
    outcomes = _outcomes(history)
    first = history[0].event
    assert isinstance(first, ev.WorkflowStarted)
    trace = RunTrace(input=first.input[0])
    for h in history[1:]:
        e = h.event
        if isinstance(e, ev.ActivityScheduled):
            outcome = outcomes.get(e.cmd, ("no outcome",))
            trace.commands.append(("activity", e.cmd, e.name, e.input, outcome))
        elif isinstance(e, ev.TimerStarted):
            trace.commands.append(("timer", e.cmd))
        elif isinstance(e, ev.ChildWorkflowStarted):
            trace.commands.append(("child", e.cmd, e.input[0]))
        elif isinstance(e, ev.CompensationStarted):
            trace.commands.append(("compensate", e.step))
        elif isinstance(e, ev.StepCompensated):
            trace.commands.append(("compensated", e.step))
        elif e.kind in {"WorkflowCompleted", "WorkflowContinuedAsNew"} or isinstance(
            e, ev.WorkflowFailed | ev.WorkflowCompensated
        ):
            trace.end = run_end(e)
        elif e.is_command:
            trace.commands.append(("unexpected command", e.describe()))
    if not trace.end:
        trace.end = run_end(history[-1].event)
    return trace


def recorded_instance(named: dict[str, list[History]], name: str) -> InstanceTrace:
    """The recorded trace of an instance and its descendants (by reference names)."""
    trace = InstanceTrace(name, [recorded_run(h) for h in named[name]])
    for index, run in enumerate(trace.runs):
        for command in run.commands:
            if command[0] == "child":
                child = child_name(name, index, command[1])
                if child in named:
                    trace.children[child] = recorded_instance(named, child)
    return trace


def check_child_ids(instances: dict[str, list[History]], root: str, out: list[str]) -> None:
    """Every child started is a distinct instance (ids unique in the whole tree)."""
    starts: dict[str, list[str]] = {}
    for instance_id, runs in instances.items():
        for index, history in enumerate(runs):
            for h in history:
                if isinstance(h.event, ev.ChildWorkflowStarted):
                    place = f"{instance_id} run {index} #{h.event.cmd}"
                    starts.setdefault(h.event.child_id, []).append(place)
    for child_id, places in starts.items():
        if len(places) > 1 or child_id == root:
            out.append(f"child id {child_id!r} names more than one instance: started by {places}")


# ----------------------------------------------------------------------------- checks
def compare_instances(want: InstanceTrace, got: InstanceTrace, out: list[str]) -> None:
    """Append every difference between the reference and the recorded trace to ``out``."""
    where = want.id
    if len(want.runs) != len(got.runs):
        out.append(f"{where}: {len(got.runs)} run(s) recorded, the reference has {len(want.runs)}")
    for index, (w, g) in enumerate(zip(want.runs, got.runs, strict=False)):
        label = f"{where} run {index}"
        if w.input != g.input:
            out.append(f"{label}: input {g.input} != reference {w.input}")
        for pos in range(max(len(w.commands), len(g.commands))):
            wc = w.commands[pos] if pos < len(w.commands) else None
            gc = g.commands[pos] if pos < len(g.commands) else None
            if wc != gc:
                out.append(f"{label}: command {pos}: recorded {gc}, reference {wc}")
                out.append(f"{label}: recorded commands {g.commands}")
                out.append(f"{label}: reference commands {w.commands}")
                break
        if w.end != g.end:
            out.append(f"{label}: ended {g.end}, reference {w.end}")
    for child_id, child in want.children.items():
        if child_id not in got.children:
            out.append(f"{where}: child {child_id} was not recorded")
        else:
            compare_instances(child, got.children[child_id], out)


@dataclass
class _Tally:
    """What one run's history records about each call, timer and child."""

    scheduled: dict[int, int] = field(default_factory=dict)
    started: list[tuple[str, Any]] = field(default_factory=list)
    ends: dict[tuple[str, Any], int] = field(default_factory=dict)
    retries: dict[int, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)

    def end(self, key: tuple[str, Any]) -> None:
        self.ends[key] = self.ends.get(key, 0) + 1


def _tally(history: History) -> _Tally:
    tally = _Tally()
    for h in history:
        e = h.event
        if isinstance(e, ev.ActivityScheduled):
            tally.scheduled[e.cmd] = tally.scheduled.get(e.cmd, 0) + 1
            tally.started.append(("activity", e.cmd))
        elif isinstance(e, ev.TimerStarted):
            tally.started.append(("timer", e.cmd))
        elif isinstance(e, ev.ChildWorkflowStarted):
            tally.started.append(("child", e.child_id))
        elif isinstance(e, ev.ActivityCompleted | ev.ActivityFailed):
            tally.end(("activity", e.cmd))
            done = e.attempt if isinstance(e, ev.ActivityCompleted) else e.attempts
            tally.attempts[e.cmd] = done
        elif isinstance(e, ev.ActivityAttemptFailed):
            tally.retries[e.cmd] = tally.retries.get(e.cmd, 0) + 1
        elif isinstance(e, ev.TimerFired):
            tally.end(("timer", e.cmd))
        elif isinstance(e, ev.ChildWorkflowCompleted):
            tally.end(("child", e.child_id))
    return tally


def check_exactly_once(instances: dict[str, list[History]], out: list[str]) -> None:
    """Every call, timer and child of every run has exactly one recorded outcome, the
    failed attempts recorded before it match its attempt count, and the run has one
    terminal event, its last."""
    for instance_id, runs in instances.items():
        for index, history in enumerate(runs):
            label = f"{instance_id} run {index}"
            tally = _tally(history)
            for key in tally.started:
                if tally.ends.get(key, 0) != 1:
                    out.append(f"{label}: {key} has {tally.ends.get(key, 0)} recorded outcome(s)")
            for key in tally.ends:
                if key not in tally.started:
                    out.append(f"{label}: outcome recorded for {key}, which was never started")
            for cmd, count in tally.scheduled.items():
                if count != 1:
                    out.append(f"{label}: activity #{cmd} scheduled {count} times")
                retries, attempts = tally.retries.get(cmd, 0), tally.attempts.get(cmd)
                if attempts is not None and retries != attempts - 1:
                    out.append(
                        f"{label}: activity #{cmd} ended at attempt {attempts} after "
                        f"{retries} recorded failed attempt(s)"
                    )
            terminal = [h for h in history if h.event.kind in _RUN_ENDS]
            if len(terminal) != 1 or terminal[0] is not history[-1]:
                out.append(f"{label}: {len(terminal)} terminal event(s), last {history[-1].kind}")


_RUN_ENDS = {
    "WorkflowCompleted",
    "WorkflowContinuedAsNew",
    "WorkflowFailed",
    "WorkflowCompensated",
    "WorkflowCancelled",
    "WorkflowTerminated",
    "WorkflowTimedOut",
}
_REPLAY_STATUS = {
    "WorkflowCompleted": "completed",
    "WorkflowContinuedAsNew": "continued",
    "WorkflowFailed": "failed",
    "WorkflowCompensated": "compensated",
}
_REPLAYER = Replayer([prop_interp])


def _issued(history: History) -> list[tuple[Any, ...]]:
    """What the interpreter itself asked for, as the history records it."""
    issued: list[tuple[Any, ...]] = []
    for h in history:
        e = h.event
        if isinstance(e, ev.ActivityScheduled) and e.name != UNDO:
            issued.append(("activity", e.name, e.input))
        elif isinstance(e, ev.TimerStarted):
            issued.append(("timer",))
        elif isinstance(e, ev.ChildWorkflowStarted):
            issued.append(("child", e.input[0]))
        elif isinstance(e, ev.WorkflowContinuedAsNew):
            issued.append(("can", e.input[0]))
        elif isinstance(e, ev.WorkflowCompleted):
            issued.append(("return", e.result))
    return issued


def check_replays(instances: dict[str, list[History]], out: list[str]) -> None:
    """Replay every recorded run from scratch: no divergence, the same end, nothing
    pending, and the very same commands (inputs included) and result."""
    for instance_id, runs in instances.items():
        for index, history in enumerate(runs):
            label = f"{instance_id} run {index}"
            interpreter.TRACE = []
            try:
                result = _REPLAYER.replay(history, instance_id=instance_id)
                trace = interpreter.TRACE
            finally:
                interpreter.TRACE = None
            want = _REPLAY_STATUS.get(history[-1].kind, "?")
            if not result.ok or result.status != want or result.pending:
                out.append(
                    f"{label}: replay ok={result.ok} status={result.status} (recorded {want}) "
                    f"pending={result.pending} error={result.error}"
                )
                continue
            replayed = [("timer",) if t[0] == "timer" else t for t in trace]
            if replayed != _issued(history):
                out.append(f"{label}: replay issued {replayed}, history holds {_issued(history)}")


def check_against_reference(
    program: Program, observed: Observed, instance_id: str = "p", *, scale: float = 1.0
) -> None:
    """Properties (a)-(c) for one run of a program; raises with every difference found."""
    named = name_instances(observed.instances, instance_id)
    want = expected(program, instance_id, scale=scale, oracle=history_oracle(named))
    got = recorded_instance(named, instance_id)
    problems: list[str] = []
    if observed.outcome != want.outcome:
        problems.append(f"result {observed.outcome}, reference {want.outcome}")
    check_child_ids(observed.instances, instance_id, problems)
    compare_instances(want, got, problems)
    check_exactly_once(observed.instances, problems)
    check_replays(observed.instances, problems)
    if problems:
        raise AssertionError(
            "Stalwart disagrees with the reference interpreter\n"
            f"program: {program_json(program)}\n" + "\n".join(problems)
        )
