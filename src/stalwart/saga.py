"""Sagas: steps with compensations, undone in reverse completion order on failure or cancel.

Three ways to write one, one mechanism underneath (:class:`SagaScope`):

* pairing at declaration: ``@activity(compensate=refund_payment)``; inside
  ``async with ctx.saga():`` every such activity that completes registers its compensation;
* fluent, per call: ``await ctx.step(charge_card, token).compensate(refund_charge)``
  (``.timeout()``, ``.retry()``, ``.optional()``, ``.compensate_on_failure()``);
* declarative: ``class OrderFulfillment(stalwart.Saga)`` with ``@saga_step`` methods.

A compensation is a durable activity call with its own retry policy. The saga records
``CompensationStarted``, ``StepCompensated`` and ``CompensationFailed``; a crash during the
rollback resumes it by replay without repeating finished compensations. When a
compensation fails for good, the saga fires the alert hook once, is parked as ``failed``
with ``needs_intervention`` and resumes after ``handle.retry_compensation()``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from stalwart._engine import events as ev
from stalwart.errors import (
    ActivityError,
    Cancelled,
    CompensatedError,
    ConfigurationError,
    error_info,
)
from stalwart.retry import RetryPolicy

if TYPE_CHECKING:
    from stalwart.context import WorkflowContext
    from stalwart.decorators import ActivityDefinition

T = TypeVar("T")
CompensateWith = Literal["result", "input", "both", "nothing"]
ALERT_ACTIVITY = "stalwart.saga_alert"
"""The built-in activity every engine registers to fire its saga alert hooks."""


@dataclass(slots=True)
class _Compensation:
    step: int
    name: str
    undo_name: str
    undo: Callable[[], Awaitable[Any]]


class SagaScope:
    """Collects compensations of completed steps and runs them (LIFO) if the scope fails.

    Use ``async with ctx.saga() as saga:``. On an exception (or cancellation) inside the
    scope, steps still running are awaited, then every registered compensation runs in
    reverse completion order, and :class:`CompensatedError` is raised (the workflow ends
    ``compensated`` unless the code catches it).
    """

    def __init__(self, ctx: WorkflowContext) -> None:
        self._ctx = ctx
        self._stack: list[_Compensation] = []
        self._running: set[asyncio.Future[Any]] = set()
        self._parent: SagaScope | None = None

    async def __aenter__(self) -> SagaScope:
        self._parent = self._ctx._saga
        self._ctx._saga = self
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._ctx._saga = self._parent
        if exc is None or isinstance(exc, CompensatedError):
            if exc is None and self._parent is not None:
                self._parent._stack.extend(self._stack)  # an outer failure undoes these too
            return False
        if not self.has_steps:
            return False  # nothing to undo: the original failure propagates as it is
        reason = (
            f"cancelled: {exc.reason}"
            if isinstance(exc, Cancelled)
            else (f"{type(exc).__name__}: {exc}")
        )
        await self.settle_running()
        await self.compensate(reason)
        raise CompensatedError(reason, error_info(exc)) from exc

    def add(
        self, step: int, name: str, activity: ActivityDefinition[Any, Any], args: tuple[Any, ...]
    ) -> None:
        """Register the compensation of a completed step (undone first: added last)."""
        ctx = self._ctx
        # A compensation taking fewer parameters gets the first ones (e.g. the id only).
        args = args[: len(activity.signature.params)]
        self.add_callable(step, name, activity.name, lambda: ctx.call_activity(activity, args, {}))

    def add_callable(
        self, step: int, name: str, undo_name: str, undo: Callable[[], Awaitable[Any]]
    ) -> None:
        """Register workflow code that undoes a step (a declarative saga's method)."""
        self._stack.append(_Compensation(step, name, undo_name, undo))

    @property
    def has_steps(self) -> bool:
        """Whether any compensation is registered or any step is still running."""
        return bool(self._stack) or bool(self._running)

    def track(self, fut: asyncio.Future[Any]) -> None:
        """A step of this saga is running (awaited before compensating)."""
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)

    async def settle_running(self) -> None:
        """Wait until no step of this saga is running (their outcomes are recorded)."""
        while self._running:
            await asyncio.wait(list(self._running))

    async def compensate(self, reason: str) -> None:
        """Undo every registered step, most recent first. Durable and resumable."""
        run = self._ctx._run
        if not self._stack:
            return
        run.begin_compensation()
        try:
            while self._stack:
                comp = self._stack.pop()
                run.record(
                    ev.CompensationStarted(
                        step=comp.step, name=comp.name, reason=reason, undo=comp.undo_name
                    )
                )
                while True:
                    try:
                        await _uncancellable(comp.undo)
                    except Exception as exc:  # noqa: BLE001 - recorded; an operator decides
                        error = error_info(exc)
                        run.record(
                            ev.CompensationFailed(step=comp.step, name=comp.name, error=error)
                        )
                        await self._alert(comp, error)
                        await run.await_intervention(comp.step, comp.name, error)
                        continue
                    run.record(ev.StepCompensated(step=comp.step, name=comp.name))
                    break
        finally:
            run.end_compensation()

    async def _alert(self, comp: _Compensation, error: dict[str, Any]) -> None:
        payload = {
            "instance_id": self._ctx.instance_id,
            "workflow": self._ctx.workflow_name,
            "step": comp.step,
            "step_name": comp.name,
            "compensation": comp.undo_name,
            "error": error,
        }
        try:
            await self._ctx.call_activity(saga_alert_activity(), (payload,), {})
        except ActivityError:
            self._ctx.log.error("the saga alert hook failed for %s", self._ctx.instance_id)


async def _uncancellable(undo: Callable[[], Awaitable[Any]]) -> Any:
    """Run a compensation to its end even if the workflow is cancelled meanwhile: a
    rollback that stops half-way is worse than none."""
    task = asyncio.ensure_future(undo())
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()


def _fire_alert(payload: dict[str, Any]) -> None:
    """Placeholder body: each engine registers its own ``stalwart.saga_alert``."""


@functools.cache
def saga_alert_activity() -> ActivityDefinition[Any, None]:
    """The alert activity saga code calls (each engine registers its implementation)."""
    from stalwart.decorators import ActivityDefinition  # decorators imports this module

    return ActivityDefinition(
        _fire_alert, name=ALERT_ACTIVITY, retry=RetryPolicy(max_attempts=5, initial_interval=1.0)
    )


def compensation_args(with_: CompensateWith, result: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a compensation receives: the step's result, its input, both, or nothing."""
    if with_ == "result":
        return (result,)
    if with_ == "input":
        return args
    if with_ == "both":
        return (result, *args)
    return ()


class Step(Awaitable[T]):
    """A saga step built fluently: ``await ctx.step(fn, *args).compensate(undo)``."""

    def __init__(
        self,
        ctx: WorkflowContext,
        fn: ActivityDefinition[Any, T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._ctx = ctx
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._undo: ActivityDefinition[Any, Any] | None = None
        self._with: CompensateWith = "result"
        self._timeout: float | timedelta | None = None
        self._retry: RetryPolicy | None = None
        self._optional = False
        self._on_failure = False

    def compensate(
        self, undo: ActivityDefinition[Any, Any], *, with_: CompensateWith = "result"
    ) -> Step[T]:
        """Undo this step with activity ``undo`` if the saga fails later (``with_`` says
        what it receives: the step's ``result`` (default), its ``input``, ``both``)."""
        self._undo = undo
        self._with = with_
        return self

    def timeout(self, seconds: float | timedelta) -> Step[T]:
        """Start-to-close timeout of each attempt."""
        self._timeout = seconds
        return self

    def retry(self, policy: RetryPolicy) -> Step[T]:
        """The retry policy of this call."""
        self._retry = policy
        return self

    def optional(self) -> Step[T]:
        """A failure of this step is ignored (returns ``None``, triggers no compensation)."""
        self._optional = True
        return self

    def compensate_on_failure(self) -> Step[T]:
        """Compensate this step even if it failed (it may have had partial effects)."""
        self._on_failure = True
        return self

    def __await__(self) -> Generator[Any, None, T]:
        return self._run().__await__()

    async def _run(self) -> T:
        scope = self._ctx._saga or self._ctx._root_saga
        return await run_step(
            self._ctx,
            scope,
            self._fn,
            self._args,
            self._kwargs,
            undo=self._undo,
            with_=self._with,
            optional=self._optional,
            on_failure=self._on_failure,
            timeout=self._timeout,
            retry=self._retry,
        )


async def run_step(
    ctx: WorkflowContext,
    scope: SagaScope | None,
    fn: ActivityDefinition[Any, T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    undo: ActivityDefinition[Any, Any] | None,
    with_: CompensateWith = "result",
    optional: bool = False,
    on_failure: bool = False,
    timeout: float | timedelta | None = None,
    retry: RetryPolicy | None = None,
) -> T:
    """Run one activity as a saga step, registering its compensation in ``scope``."""
    holder: list[int] = []
    call = ctx.call_activity(fn, args, kwargs, retry=retry, timeout=timeout, cmd_holder=holder)
    task: asyncio.Future[T] = asyncio.ensure_future(call)
    if scope is not None:
        scope.track(task)
    try:
        result = await task
    except ActivityError:
        step = holder[0]
        if optional:
            ctx._run.record(ev.MarkerRecorded(name=f"saga:skipped:{step}", value=fn.name))
            return None  # type: ignore[return-value]
        if on_failure and undo is not None and scope is not None:
            scope.add(step, fn.name, undo, compensation_args("input", None, args))
        raise
    if undo is not None and scope is not None:
        scope.add(holder[0], fn.name, undo, compensation_args(with_, result, args))
    return result


def check_compensation(undo: Any, where: str) -> None:
    """Refuse a compensation that is not an ``@activity``."""
    from stalwart.decorators import ActivityDefinition

    if not isinstance(undo, ActivityDefinition):
        raise ConfigurationError(f"{where}: a compensation must be an @activity, got {undo!r}")


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns an awaitable."""
    return inspect.iscoroutinefunction(fn)
