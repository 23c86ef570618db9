"""Hypothesis strategies for programs: small (each example runs in well under a second),
nested at most two levels deep (sagas in sagas, children of children), with at most two
continue-as-new at the root and one per child."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .program import (
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
    validate,
)

SLEEPS = [1, 7, 60, 600]
"""Timer lengths in seconds (virtual time; a real-clock run scales them down)."""

keys = st.integers(0, 9)
fails = st.integers(0, 2)
# Mostly calls that succeed (possibly after retries); some fail for good. A step that
# fails ends its saga (or the run), so steps fail less often than plain calls.
act_fatals = st.sampled_from([None, None, None, None, "nonretryable", "exhausted"])
step_fatals = st.sampled_from([None] * 8 + ["nonretryable", "exhausted"])

acts = st.builds(Act, keys, fails, act_fatals, st.booleans())
steps = st.builds(Step, keys, fails, step_fatals)

# Op kinds by weight (sampled_from shrinks towards the first: plain activities).
TOP_KINDS = ["act", "act", "step", "step", "gather", "gather", "sleep", "saga", "saga", "saga"]
TOP_KINDS += ["child", "child"]
BODY_KINDS = ["step", "act", "step", "gather", "step", "gather", "sleep", "saga", "child"]
# Whether a Fail follows an op (False first: examples shrink to programs without one).
_FAIL_IN_BODY = st.sampled_from([False] * 5 + [True])
_FAIL_AT_TOP = st.sampled_from([False] * 15 + [True])


@st.composite
def gathers(draw: st.DrawFn) -> Gather:
    """Two or three activities, or two or three saga steps, run concurrently."""
    if draw(st.booleans()):
        return Gather(tuple(draw(st.lists(acts, min_size=2, max_size=3))))
    items = tuple(draw(st.lists(steps, min_size=2, max_size=3)))
    return Gather(items, fail_fast=draw(st.booleans()))


@st.composite
def _ops(
    draw: st.DrawFn, *, depth: int, root: bool, top: bool, max_ops: int, cans: int
) -> tuple[Op, ...]:
    kinds = list(TOP_KINDS if top else BODY_KINDS)
    if root:
        kinds += ["wait", "wait"]
    if top and cans:
        kinds += ["can", "can"]
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(kinds))
        if kind == "act":
            ops.append(draw(acts))
        elif kind == "step":
            ops.append(draw(steps))
        elif kind == "gather":
            ops.append(draw(gathers()))
        elif kind == "sleep":
            ops.append(Sleep(draw(st.sampled_from(SLEEPS))))
        elif kind == "wait":
            ops.append(WaitSignal("", draw(st.integers(0, 99)), draw(st.booleans())))
        elif kind == "can" and cans:
            ops.append(ContinueAsNew())
            cans -= 1
        elif kind == "saga" and depth > 0:
            body = draw(_ops(depth=depth - 1, root=root, top=False, max_ops=3, cans=0))
            # Half the sagas end with a forced failure, so their steps get compensated.
            ops.append(Saga((*body, Fail()) if draw(st.booleans()) else body))
        elif kind == "child" and depth > 0:
            program = draw(_ops(depth=depth - 1, root=False, top=True, max_ops=3, cans=1))
            ops.append(Child(program))
        else:
            ops.append(draw(acts))
        # Now and then the code itself fails: often in a saga body (which compensates),
        # rarely at a program's top level (which ends the run).
        if draw(_FAIL_IN_BODY if not top else _FAIL_AT_TOP):
            ops.append(Fail())
    return tuple(ops)


@st.composite
def programs(draw: st.DrawFn, *, max_ops: int = 5, depth: int = 2) -> Program:
    """A valid root program (signal names numbered, early signals before any ContinueAsNew)."""
    raw = draw(_ops(depth=depth, root=True, top=True, max_ops=max_ops, cans=2))
    program = name_signals(raw)
    validate(program)
    return program


def name_signals(program: Program) -> Program:
    """Give each signal wait a unique name (``s0``, ``s1``...); a wait after the first
    ContinueAsNew is sent late (a signal recorded by a run that continues as new stays
    with that run)."""
    counter = iter(range(1_000))
    seen_can = False

    def rename(op: Op) -> Op:
        if isinstance(op, WaitSignal):
            return WaitSignal(f"s{next(counter)}", op.payload, op.early and not seen_can)
        if isinstance(op, Saga):
            return Saga(tuple(rename(inner) for inner in op.body))
        return op

    renamed: list[Any] = []
    for op in program:
        seen_can = seen_can or isinstance(op, ContinueAsNew)
        renamed.append(rename(op))
    return tuple(renamed)
