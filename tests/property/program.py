"""The little workflow-program language of the property tests, and its JSON form.

A program is a tuple of ops. The Stalwart interpreter (``interpreter.py``) runs the JSON
form as a workflow input; the reference (``reference.py``) runs the dataclasses in plain
Python. Both fold every op's outcome into an integer accumulator with :func:`mix`, and
the activities compute their results with :func:`activity_value`; those two pure
functions are the only code they share (they define the data, not the semantics).

Ops (see ``reference.py`` for their exact semantics):

* ``Act`` — call an activity; it fails ``fail`` attempts then succeeds (retry policy of
  3 attempts), or fails for good (``fatal``: ``"nonretryable"`` or ``"exhausted"``); a
  failure for good is caught and folded.
* ``Step`` — a saga step (activity with a compensation); a failure propagates.
* ``Gather`` — 2-3 ``Act`` or 2-3 ``Step`` run concurrently with ``asyncio.gather``.
* ``Sleep`` — a durable timer.
* ``WaitSignal`` — wait for a signal the test sends (``early``: before the wait).
* ``Child`` — run a sub-program as a child workflow and await it.
* ``Saga`` — ``async with ctx.saga():`` around a body; a failure inside compensates.
* ``Fail`` — raise inside the workflow (fails the saga around it, or the run).
* ``ContinueAsNew`` — top level only: continue as a new run carrying the accumulator.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Literal

Fatal = Literal["nonretryable", "exhausted"] | None
MAX_ATTEMPTS = 3
"""Attempts of every activity call (``fail`` is below it, so those calls succeed)."""

ACT = "prop_act"
ACT_SYNC = "prop_act_sync"
STEP = "prop_step"
UNDO = "prop_undo"
WORKFLOW = "prop_interp"


@dataclass(frozen=True)
class Act:
    """Call ``prop_act`` (``prop_act_sync``: a sync body run in the thread pool)."""

    key: int
    fail: int = 0
    fatal: Fatal = None
    sync: bool = False


@dataclass(frozen=True)
class Step:
    """A saga step ``prop_step`` compensated by ``prop_undo(result, key)``."""

    key: int
    fail: int = 0
    fatal: Fatal = None


@dataclass(frozen=True)
class Gather:
    """Run ``items`` (all ``Act`` or all ``Step``) concurrently.

    ``fail_fast`` (steps only): a plain ``gather`` that raises at the first failure while
    the others still run; otherwise ``return_exceptions=True`` and the first failure in
    argument order is raised once every item ended.
    """

    items: tuple[Act, ...] | tuple[Step, ...]
    fail_fast: bool = False


@dataclass(frozen=True)
class Sleep:
    """A durable timer of ``seconds`` (times the run's time scale)."""

    seconds: int


@dataclass(frozen=True)
class WaitSignal:
    """Wait for signal ``name``; the test sends ``payload`` (before the wait if ``early``)."""

    name: str
    payload: int
    early: bool = False


@dataclass(frozen=True)
class Child:
    """Run ``program`` as a child workflow (default child id) and await its end."""

    program: tuple[Op, ...]


@dataclass(frozen=True)
class Saga:
    """Run ``body`` inside an explicit saga scope."""

    body: tuple[Op, ...]


@dataclass(frozen=True)
class Fail:
    """Raise ``ProgramFailure`` in the workflow code."""


@dataclass(frozen=True)
class ContinueAsNew:
    """Continue as a new run at the next op, carrying the accumulator (top level only)."""


Op = Act | Step | Gather | Sleep | WaitSignal | Child | Saga | Fail | ContinueAsNew
Program = tuple[Op, ...]


# ----------------------------------------------------------------------------- shared math
def mix(acc: int, token: Any) -> int:
    """Fold one op's outcome into the accumulator (a stable 32-bit hash)."""
    return zlib.crc32(json.dumps([acc, token], sort_keys=True).encode())


def activity_value(name: str, key: int, acc: int) -> int:
    """What activity ``name`` returns for ``(key, acc)`` when it succeeds."""
    return zlib.crc32(f"{name}:{key}:{acc}".encode()) % 1_000_003


def undo_attempts(key: int) -> int:
    """Attempts ``prop_undo`` needs for a step of this key (its first one fails if key % 3 == 0)."""
    return 2 if key % 3 == 0 else 1


def start_state(program: Program, *, acc: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """The input of the interpreter workflow for a fresh program."""
    return {"program": to_json(program), "pc": 0, "acc": acc, "scale": scale}


# ----------------------------------------------------------------------------- JSON form
def op_to_json(op: Op) -> dict[str, Any]:
    """The JSON form of one op (what the interpreter workflow reads)."""
    if isinstance(op, Act):
        return {"op": "act", "key": op.key, "fail": op.fail, "fatal": op.fatal, "sync": op.sync}
    if isinstance(op, Step):
        return {"op": "step", "key": op.key, "fail": op.fail, "fatal": op.fatal}
    if isinstance(op, Gather):
        return {
            "op": "gather",
            "items": [op_to_json(item) for item in op.items],
            "fail_fast": op.fail_fast,
        }
    if isinstance(op, Sleep):
        return {"op": "sleep", "seconds": op.seconds}
    if isinstance(op, WaitSignal):
        return {"op": "wait", "name": op.name, "payload": op.payload, "early": op.early}
    if isinstance(op, Child):
        return {"op": "child", "program": to_json(op.program)}
    if isinstance(op, Saga):
        return {"op": "saga", "body": to_json(op.body)}
    if isinstance(op, Fail):
        return {"op": "fail"}
    return {"op": "can"}


def to_json(program: Program) -> list[dict[str, Any]]:
    """The JSON form of a program."""
    return [op_to_json(op) for op in program]


def op_from_json(data: dict[str, Any]) -> Op:
    """Rebuild one op from its JSON form."""
    kind = data["op"]
    if kind == "act":
        return Act(data["key"], data.get("fail", 0), data.get("fatal"), data.get("sync", False))
    if kind == "step":
        return Step(data["key"], data.get("fail", 0), data.get("fatal"))
    if kind == "gather":
        items = tuple(op_from_json(item) for item in data["items"])
        return Gather(items, data.get("fail_fast", False))  # type: ignore[arg-type]
    if kind == "sleep":
        return Sleep(data["seconds"])
    if kind == "wait":
        return WaitSignal(data["name"], data["payload"], data.get("early", False))
    if kind == "child":
        return Child(from_json(data["program"]))
    if kind == "saga":
        return Saga(from_json(data["body"]))
    if kind == "fail":
        return Fail()
    if kind == "can":
        return ContinueAsNew()
    raise ValueError(f"unknown op {kind!r}")


def program_json(program: Program) -> str:
    """The program as one line of JSON (what a fixture file's ``program`` holds)."""
    return json.dumps(to_json(program))


def from_json(data: list[dict[str, Any]]) -> Program:
    """Rebuild a program from its JSON form."""
    return tuple(op_from_json(item) for item in data)


# ----------------------------------------------------------------------------- validity
def validate(program: Program) -> None:
    """Refuse programs outside the language's rules (a hand-written fixture's typos).

    Continue-as-new only at a program's top level; signals only in the root program, with
    unique names, and ``early`` only before its first continue-as-new (a signal recorded
    by a run that then continues as new is not carried over); gathers are homogeneous.
    """
    names: list[str] = []
    _check(program, names, root=True, top=True)
    if len(names) != len(set(names)):
        raise ValueError(f"signal names must be unique, got {names}")
    seen_can = False
    for op in program:
        seen_can = seen_can or isinstance(op, ContinueAsNew)
        if seen_can and any(w.early for w in _waits(op)):
            raise ValueError("an early signal must be waited for before the first ContinueAsNew")


def _check(ops: tuple[Op, ...], names: list[str], *, root: bool, top: bool) -> None:
    for op in ops:
        if isinstance(op, ContinueAsNew) and not top:
            raise ValueError("ContinueAsNew is allowed at a program's top level only")
        if isinstance(op, WaitSignal):
            if not root:
                raise ValueError("signals are only sent to the root workflow")
            names.append(op.name)
        if isinstance(op, Gather):
            kinds = {type(item) for item in op.items}
            if len(kinds) != 1 or not kinds <= {Act, Step} or not 1 <= len(op.items) <= 3:
                raise ValueError(f"a gather holds 1-3 items of one kind (Act or Step): {op}")
            if op.fail_fast and kinds != {Step}:
                raise ValueError("fail_fast is for gathers of steps")
        if isinstance(op, Act | Step) and not 0 <= op.fail < MAX_ATTEMPTS:
            raise ValueError(f"fail must be below {MAX_ATTEMPTS}: {op}")
        if isinstance(op, Saga):
            _check(op.body, names, root=root, top=False)
        if isinstance(op, Child):
            _check(op.program, names, root=False, top=True)


def _waits(op: Op) -> list[WaitSignal]:
    if isinstance(op, WaitSignal):
        return [op]
    if isinstance(op, Saga):
        return [w for inner in op.body for w in _waits(inner)]
    return []


def signals(program: Program) -> list[WaitSignal]:
    """Every signal wait of the root program, in program order."""
    return [w for op in program for w in _waits(op)]
