"""The one generic Stalwart workflow of the property tests: it runs a program given as JSON.

``prop_interp(state)`` executes ``state["program"]`` from op ``state["pc"]``, folding every
op's outcome into ``state["acc"]`` (see ``program.py`` for the language), and returns the
accumulator. ``state["scale"]`` multiplies timer durations and retry intervals: 1.0 on
the virtual clock, a thousandth on a real one.

Replay checks set :data:`TRACE` to a list: the interpreter then appends every command it
issues (with its full input), so a replay can be compared with the recorded history
beyond what the engine itself checks (command type, number and activity name).
"""

from __future__ import annotations

import asyncio
from typing import Any

from stalwart import (
    ActivityDefinition,
    ActivityError,
    ChildWorkflowError,
    CompensatedError,
    NonRetryableError,
    RetryPolicy,
    WorkflowContext,
    activity,
    activity_context,
    workflow,
)

from .program import (
    ACT,
    ACT_SYNC,
    MAX_ATTEMPTS,
    STEP,
    UNDO,
    WORKFLOW,
    activity_value,
    mix,
    undo_attempts,
)

TRACE: list[tuple[Any, ...]] | None = None
"""When a list, the commands the interpreter issues are appended to it (replay checks)."""


class ProgramFailure(Exception):
    """What a ``Fail`` op raises."""


def _behave(name: str, key: int, acc: int, fail: int, fatal: str | None) -> int:
    """The body of every program activity: fail as told for this attempt, else compute."""
    attempt = activity_context().attempt
    if fatal == "nonretryable":
        raise NonRetryableError(f"{name} key {key} refuses")
    if fatal == "exhausted" or attempt <= fail:
        raise RuntimeError(f"{name} key {key} attempt {attempt} failed")
    return activity_value(name, key, acc)


@activity(name=ACT)
async def prop_act(key: int, acc: int, fail: int, fatal: str | None) -> int:
    """A plain activity (async body)."""
    return _behave(ACT, key, acc, fail, fatal)


@activity(name=ACT_SYNC)
def prop_act_sync(key: int, acc: int, fail: int, fatal: str | None) -> int:
    """A plain activity with a sync body (runs in the worker's thread pool)."""
    return _behave(ACT_SYNC, key, acc, fail, fatal)


@activity(name=STEP)
async def prop_step(key: int, acc: int, fail: int, fatal: str | None) -> int:
    """A saga step."""
    return _behave(STEP, key, acc, fail, fatal)


# The compensation's own retry policy: short, because on a real clock the wait is real.
@activity(name=UNDO, retry=RetryPolicy(max_attempts=3, initial_interval=0.002, backoff=1.0))
async def prop_undo(result: int, key: int) -> None:
    """Undo a step (receives the step's result and key); fails once for some keys."""
    if activity_context().attempt < undo_attempts(key):
        raise RuntimeError(f"undo of key {key} failed once")


ACTIVITIES: list[ActivityDefinition[Any, Any]] = [prop_act, prop_act_sync, prop_step, prop_undo]
_PLAIN: dict[bool, ActivityDefinition[Any, Any]] = {False: prop_act, True: prop_act_sync}


def _trace(*entry: Any) -> None:
    if TRACE is not None:
        TRACE.append(entry)


class _Interpreter:
    """One run of a program (a new one after each continue-as-new)."""

    def __init__(self, ctx: WorkflowContext, state: dict[str, Any]) -> None:
        self.ctx = ctx
        self.state = state
        self.acc: int = state["acc"]
        self.scale: float = state["scale"]
        self.waiting: str | None = None
        # The test sends "late" signals once this query names the signal being awaited.
        ctx.set_query_handler("waiting", lambda: self.waiting)

    def fold(self, token: Any) -> None:
        self.acc = mix(self.acc, token)

    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=MAX_ATTEMPTS, initial_interval=2.0 * self.scale, backoff=1.0
        )

    async def run(self) -> int:
        program: list[dict[str, Any]] = self.state["program"]
        for index in range(self.state["pc"], len(program)):
            op = program[index]
            if op["op"] == "can":
                following = {**self.state, "pc": index + 1, "acc": self.acc}
                _trace("can", following)
                self.ctx.continue_as_new(following)
            await self.op(op)
        _trace("return", self.acc)
        return self.acc

    async def body(self, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            await self.op(op)

    async def op(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "act":
            await self.act(op)
        elif kind == "step":
            self.fold(await self.step(op))
        elif kind == "gather":
            await self.gather(op)
        elif kind == "sleep":
            _trace("timer", op["seconds"] * self.scale)
            await self.ctx.sleep(op["seconds"] * self.scale)
            self.fold(["slept", op["seconds"]])
        elif kind == "wait":
            self.waiting = op["name"]
            payload = await self.ctx.wait_for_signal(op["name"])
            self.waiting = None
            self.fold(["signal", op["name"], payload])
        elif kind == "child":
            await self.child(op)
        elif kind == "saga":
            await self.saga(op)
        elif kind == "fail":
            raise ProgramFailure("the program failed here")
        else:
            raise ValueError(f"unknown op {kind!r}")

    def _args(self, op: dict[str, Any]) -> tuple[int, int, int, str | None]:
        return (op["key"], self.acc, op["fail"], op["fatal"])

    def _call(self, op: dict[str, Any]) -> Any:
        defn = _PLAIN[op["sync"]]
        args = self._args(op)
        _trace("activity", defn.name, list(args))
        return self.ctx.activity(defn, *args, retry=self.retry())

    def _step(self, op: dict[str, Any]) -> Any:
        args = self._args(op)
        _trace("activity", STEP, list(args))
        return (
            self.ctx.step(prop_step, *args).retry(self.retry()).compensate(prop_undo, with_="both")
        )

    async def act(self, op: dict[str, Any]) -> None:
        try:
            result = await self._call(op)
        except ActivityError as exc:
            self.fold(["err", exc.error_type, exc.attempts])
            return
        self.fold(result)

    async def step(self, op: dict[str, Any]) -> int:
        result: int = await self._step(op)
        return result

    async def gather(self, op: dict[str, Any]) -> None:
        items: list[dict[str, Any]] = op["items"]
        if items[0]["op"] == "act":
            outcomes = await asyncio.gather(*(self._call(i) for i in items), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, ActivityError):
                    self.fold(["err", outcome.error_type, outcome.attempts])
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    self.fold(outcome)
            return
        steps = [self._step(i) for i in items]
        if op["fail_fast"]:
            for result in await asyncio.gather(*steps):
                self.fold(result)
            return
        outcomes = await asyncio.gather(*steps, return_exceptions=True)
        for outcome in outcomes:
            if not isinstance(outcome, BaseException):
                self.fold(outcome)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def child(self, op: dict[str, Any]) -> None:
        state = {"program": op["program"], "pc": 0, "acc": self.acc, "scale": self.scale}
        _trace("child", state)
        handle = await self.ctx.start_child(prop_interp, state)
        try:
            result = await handle
        except ChildWorkflowError as exc:
            self.fold(["child", exc.status])
            return
        self.fold(["child", "completed", result])

    async def saga(self, op: dict[str, Any]) -> None:
        try:
            async with self.ctx.saga():
                await self.body(op["body"])
        except CompensatedError:
            self.fold(["saga", "compensated"])
            return
        self.fold(["saga", "ok"])


@workflow(name=WORKFLOW)
async def prop_interp(ctx: WorkflowContext, state: dict[str, Any]) -> int:
    """Run the program in ``state`` and return its accumulator."""
    return await _Interpreter(ctx, state).run()
