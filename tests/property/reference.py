"""An independent reference interpreter of the program language (plain Python, no Stalwart).

It computes, for a program, what a correct durable-execution engine must produce: every
instance (the root and each child), each of its runs (continue-as-new starts a new one)
with the run's input, the commands it issues in order, and how it ends.

Semantics (from docs/architecture.md "Sagas" and "Composition", and DESIGN.md §5):

* Every command takes the next command number of its run: an activity call (also a
  compensation's), a timer, a child start. Commands of a gather are created in argument
  order. Every child is a new instance (its default id must differ from every other
  instance's, also across continue-as-new; the checks name children by parent, run and
  command, see :func:`child_name`).
* An activity succeeds after ``fail`` failed attempts (``attempts = fail + 1``); a
  ``nonretryable`` one fails at once (``NonRetryableError``, 1 attempt); an ``exhausted``
  one fails every attempt (``RuntimeError``, 3 attempts).
* A saga scope keeps the compensations of its completed steps in completion order and, on
  a failure inside it, first waits for its steps still running, then undoes them most
  recent first: ``CompensationStarted(step)``, the ``prop_undo(result, key)`` call,
  ``StepCompensated(step)``; then ``CompensatedError`` leaves the scope. A scope with no
  completed and no running step lets the original failure through unchanged. A nested
  scope that succeeds hands its compensations to the enclosing explicit scope. Steps
  outside any explicit scope belong to the run's root saga: a run failing with steps
  there ends ``compensated`` after undoing them, otherwise ``failed``.
* The root saga is not an enclosing scope of explicit sagas: a top-level ``Saga`` that
  succeeded is not undone by a later failure of the run (``EXPLICIT_SAGA_JOINS_ROOT``).

Only one thing is not a function of the program: the order in which concurrent steps of
a gather ended (it decides the compensation order and, for a fail-fast gather, which
steps were still running at the first failure). The reference asks an :class:`Oracle`;
the checks answer from the recorded history, so the reference still decides everything
the engine must get right (what is compensated, in which order, with which input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .program import (
    ACT,
    ACT_SYNC,
    MAX_ATTEMPTS,
    STEP,
    UNDO,
    Act,
    Child,
    ContinueAsNew,
    Fail,
    Gather,
    Op,
    Program,
    Saga,
    Sleep,
    Step,
    WaitSignal,
    activity_value,
    from_json,
    mix,
    to_json,
    undo_attempts,
)

EXPLICIT_SAGA_JOINS_ROOT = False
"""Whether a successful top-level ``Saga`` hands its compensations to the root saga (the
engine's behaviour: it does not; flip this if that changes by design)."""

Command = tuple[Any, ...]
Oracle = Callable[[str, int, list[int]], list[int]]
"""``(instance name, run index, step command numbers) -> those numbers in the order their
outcomes were recorded``."""


def child_name(parent: str, run: int, cmd: int) -> str:
    """The name the checks give a child: its parent's, the run and the command that
    started it (``p/1.3``). Real ids are the engine's business; they must be unique."""
    return f"{parent}/{run}.{cmd}"


def in_given_order(instance_id: str, run: int, cmds: list[int]) -> list[int]:
    """The oracle of a purely sequential world: steps end in the order they started."""
    return list(cmds)


@dataclass
class RunTrace:
    """One run: its input, the commands it issued, how it ended."""

    input: dict[str, Any]
    commands: list[Command] = field(default_factory=list)
    end: tuple[Any, ...] = ()


@dataclass
class InstanceTrace:
    """One workflow instance: its runs in order and its children by name."""

    id: str
    runs: list[RunTrace] = field(default_factory=list)
    children: dict[str, InstanceTrace] = field(default_factory=dict)

    @property
    def outcome(self) -> tuple[Any, ...]:
        """How the instance ended: ``("completed", acc)``, ``("failed",)``, ``("compensated",)``."""
        return self.runs[-1].end


class _Failure(Exception):
    """A failure propagating through the program (a step failed for good, or ``Fail``)."""


class _Continue(Exception):
    """A ContinueAsNew op: the run ends and the next starts from ``state``."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state


@dataclass
class _Scope:
    parent: _Scope | None
    stack: list[tuple[int, int, int]] = field(default_factory=list)
    """Completed steps ``(command number, result, key)``, in completion order."""
    running: bool = False
    """Steps of this scope were still running when the failure reached it."""


class Reference:
    """Runs programs in plain Python; see the module docstring."""

    def __init__(self, oracle: Oracle = in_given_order) -> None:
        self.oracle = oracle

    def run_instance(self, instance_id: str, state: dict[str, Any]) -> InstanceTrace:
        """Every run of one instance, from its first input until it ends."""
        trace = InstanceTrace(instance_id)
        while True:
            run = _Run(self, trace, len(trace.runs), state)
            trace.runs.append(run.trace)
            following = run.execute()
            if following is None:
                return trace
            state = following


class _Run:
    """One run of a program in the reference."""

    def __init__(
        self, ref: Reference, instance: InstanceTrace, index: int, state: dict[str, Any]
    ) -> None:
        self.ref = ref
        self.instance = instance
        self.index = index
        self.state = state
        self.trace = RunTrace(input=state)
        self.next_cmd = 0
        self.acc: int = state["acc"]
        self.root = _Scope(None)
        self.scope: _Scope | None = None  # the innermost explicit saga

    # -- bookkeeping -----------------------------------------------------------------------
    def take_cmd(self) -> int:
        cmd = self.next_cmd
        self.next_cmd += 1
        return cmd

    def emit(self, *command: Any) -> None:
        self.trace.commands.append(command)

    def fold(self, token: Any) -> None:
        self.acc = mix(self.acc, token)

    # -- the run -----------------------------------------------------------------------------
    def execute(self) -> dict[str, Any] | None:
        """Run to the end; the next run's input after a continue-as-new, else None."""
        program = from_json(self.state["program"])
        try:
            for index in range(self.state["pc"], len(program)):
                op = program[index]
                if isinstance(op, ContinueAsNew):
                    raise _Continue({**self.state, "pc": index + 1, "acc": self.acc})
                self.op(op)
        except _Continue as cont:
            self.trace.end = ("continued", cont.state)
            return cont.state
        except _Failure:
            if not self.root.stack and not self.root.running:
                self.trace.end = ("failed",)
                return None
            self.compensate(self.root)
            self.trace.end = ("compensated",)
            return None
        self.trace.end = ("completed", self.acc)
        return None

    def op(self, op: Op) -> None:
        if isinstance(op, Act):
            self.fold(self.activity(ACT_SYNC if op.sync else ACT, op))
        elif isinstance(op, Step):
            self.fold(self.step(op))
        elif isinstance(op, Gather):
            self.gather(op)
        elif isinstance(op, Sleep):
            self.emit("timer", self.take_cmd())
            self.fold(["slept", op.seconds])
        elif isinstance(op, WaitSignal):
            self.fold(["signal", op.name, op.payload])
        elif isinstance(op, Child):
            self.child(op)
        elif isinstance(op, Saga):
            self.saga(op)
        elif isinstance(op, Fail):
            raise _Failure()
        else:
            raise AssertionError(f"{op} is not allowed here")

    # -- activities -------------------------------------------------------------------------
    def schedule(self, name: str, op: Act | Step, acc: int) -> tuple[int, tuple[Any, ...]]:
        """Issue the call; return its command number and recorded outcome."""
        cmd = self.take_cmd()
        if op.fatal == "nonretryable":
            outcome: tuple[Any, ...] = ("failed", 1, "NonRetryableError")
        elif op.fatal == "exhausted":
            outcome = ("failed", MAX_ATTEMPTS, "RuntimeError")
        else:
            outcome = ("ok", op.fail + 1, activity_value(name, op.key, acc))
        self.emit("activity", cmd, name, [op.key, acc, op.fail, op.fatal], outcome)
        return cmd, outcome

    @staticmethod
    def folded(outcome: tuple[Any, ...]) -> Any:
        """What a plain activity call folds: its result, or its error and attempts."""
        if outcome[0] == "ok":
            return outcome[2]
        return ["err", outcome[2], outcome[1]]

    def activity(self, name: str, op: Act | Step) -> Any:
        _, outcome = self.schedule(name, op, self.acc)
        return self.folded(outcome)

    def current(self) -> _Scope:
        return self.scope if self.scope is not None else self.root

    def step(self, op: Step) -> int:
        cmd, outcome = self.schedule(STEP, op, self.acc)
        if outcome[0] != "ok":
            raise _Failure()
        self.current().stack.append((cmd, outcome[2], op.key))
        result: int = outcome[2]
        return result

    def gather(self, op: Gather) -> None:
        acc = self.acc  # every call is created before any of them returns
        plain = [item for item in op.items if isinstance(item, Act)]
        if plain:
            outcomes = [self.schedule(ACT_SYNC if i.sync else ACT, i, acc)[1] for i in plain]
            for outcome in outcomes:
                self.fold(self.folded(outcome))
            return
        calls = [(self.schedule(STEP, item, acc), item.key) for item in op.items]
        by_cmd = {cmd: (outcome, key) for (cmd, outcome), key in calls}
        ended = self.ref.oracle(self.instance.id, self.index, [cmd for (cmd, _), _ in calls])
        scope = self.current()
        for cmd in ended:  # compensations are registered in completion order
            outcome, key = by_cmd[cmd]
            if outcome[0] == "ok":
                scope.stack.append((cmd, outcome[2], key))
        failed = [cmd for (cmd, outcome), _ in calls if outcome[0] != "ok"]
        if op.fail_fast and failed:
            # The gather raised at the first failure recorded; later ones were running.
            first = next(cmd for cmd in ended if by_cmd[cmd][0][0] != "ok")
            scope.running = ended.index(first) < len(ended) - 1
            raise _Failure()
        for (_, outcome), _ in calls:
            if outcome[0] == "ok":
                self.fold(outcome[2])
        if failed:
            raise _Failure()

    # -- composition ------------------------------------------------------------------------
    def child(self, op: Child) -> None:
        cmd = self.take_cmd()
        state = {
            "program": to_json(op.program),
            "pc": 0,
            "acc": self.acc,
            "scale": self.state["scale"],
        }
        self.emit("child", cmd, state)
        name = child_name(self.instance.id, self.index, cmd)
        trace = self.ref.run_instance(name, state)
        self.instance.children[name] = trace
        end = trace.outcome
        self.fold(["child", "completed", end[1]] if end[0] == "completed" else ["child", end[0]])

    def saga(self, op: Saga) -> None:
        scope = _Scope(self.scope)
        self.scope = scope
        try:
            for inner in op.body:
                self.op(inner)
        except _Failure:
            self.scope = scope.parent
            if not scope.stack and not scope.running:
                raise  # nothing to undo: the original failure goes on
            self.compensate(scope)
            self.fold(["saga", "compensated"])
            return
        self.scope = scope.parent
        if scope.parent is not None:
            scope.parent.stack.extend(scope.stack)
        elif EXPLICIT_SAGA_JOINS_ROOT:
            self.root.stack.extend(scope.stack)
        self.fold(["saga", "ok"])

    def compensate(self, scope: _Scope) -> None:
        while scope.stack:
            step, result, key = scope.stack.pop()
            self.emit("compensate", step)
            cmd = self.take_cmd()
            self.emit("activity", cmd, UNDO, [result, key], ("ok", undo_attempts(key), None))
            self.emit("compensated", step)


def expected(
    program: Program,
    instance_id: str,
    *,
    scale: float = 1.0,
    oracle: Oracle = in_given_order,
) -> InstanceTrace:
    """The reference trace of ``program`` started as ``instance_id``."""
    state = {"program": to_json(program), "pc": 0, "acc": 0, "scale": scale}
    return Reference(oracle).run_instance(instance_id, state)
