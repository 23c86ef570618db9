"""The workflow context: the deterministic API that workflow code uses.

Every workflow receives a :class:`WorkflowContext` as its first argument. Anything that
would differ between the first run and a replay (time, randomness, ids, external values)
goes through it, so replays see exactly what the first run saw.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import logging
import random as _random
import uuid as _uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from stalwart._engine.run import ChildState, ContinueAsNew, UpdateHandler, WorkflowRun
from stalwart.codec import Signature, TypeConverter
from stalwart.errors import (
    Cancelled,
    ChildWorkflowError,
    CompensatedError,
    ConfigurationError,
    error_info,
)
from stalwart.retry import RetryPolicy, as_seconds
from stalwart.saga import SagaScope, Step

if TYPE_CHECKING:
    from stalwart.decorators import ActivityDefinition, WorkflowDefinition

PARENT_CLOSE_POLICIES = ("terminate", "cancel", "abandon")
"""What happens to a still-running child when its parent ends."""

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_current: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar(
    "stalwart_workflow_context", default=None
)
CONTEXT_VAR = _current
"""Set to the running workflow's context inside its tasks (the runtime binds it)."""


def current_workflow_context() -> WorkflowContext | None:
    """The context of the workflow whose code is running now, or ``None`` outside one."""
    return _current.get()


class _ReplaySafeLogger(logging.LoggerAdapter[logging.Logger]):
    """Drops records while the workflow is replaying, so each line is logged once."""

    def __init__(self, logger: logging.Logger, ctx: WorkflowContext) -> None:
        super().__init__(logger, {"workflow_id": ctx.instance_id})
        # Weak: the context owns this logger, and a cycle would outlive an evicted run.
        self._ctx = weakref.ref(ctx)
        self._instance_id = ctx.instance_id

    def isEnabledFor(self, level: int) -> bool:
        ctx = self._ctx()
        return ctx is not None and ctx.logging_enabled() and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self._instance_id}] {msg}", kwargs


class WorkflowContext:
    """Deterministic services for workflow code (time, ids, timers, signals, activities)."""

    def __init__(
        self,
        run: WorkflowRun,
        *,
        instance_id: str,
        run_id: str,
        workflow_name: str,
        converter: TypeConverter,
        signature: Signature | None = None,
    ) -> None:
        self._run = run
        self.instance_id = instance_id
        """The workflow instance's id (stable across replays and continue-as-new)."""
        self.run_id = run_id
        """The id of this run of the instance."""
        self.workflow_name = workflow_name
        """The registered name of the running workflow."""
        self._converter = converter
        self._signature = signature
        self._saga: SagaScope | None = None
        self._root_saga: SagaScope | None = None
        self._uuid_count = 0
        self._random: _random.Random | None = None
        self.log: logging.LoggerAdapter[logging.Logger] = _ReplaySafeLogger(
            logging.getLogger(f"stalwart.workflow.{workflow_name}"), self
        )
        """A logger that stays silent while the workflow replays."""

    def detach(self) -> None:
        """Forget the run: it left memory (evicted, ended, fenced off) and is never resumed
        through this context again; without the back-references all is freed at once."""
        del self._run
        self._saga = self._root_saga = None

    def logging_enabled(self) -> bool:
        """Whether ``ctx.log`` writes now: live execution of a run still in memory."""
        return hasattr(self, "_run") and not self.is_replaying

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs recorded history (side effects must be skipped)."""
        return self._run.is_replaying

    def now(self) -> datetime:
        """The current workflow time (UTC, timezone-aware), identical on replay."""
        return datetime.fromtimestamp(self._run.now(), tz=UTC)

    def uuid(self) -> _uuid.UUID:
        """A UUID that is random-looking but identical on replay.

        Derived from the run id and a counter of its own, so adding ``random()`` calls
        does not shift the ids a workflow generates.
        """
        self._run.check_not_querying("ctx.uuid()")
        self._uuid_count += 1
        digest = hashlib.sha256(f"{self.run_id}:uuid:{self._uuid_count}".encode()).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def random(self) -> _random.Random:
        """A ``random.Random`` seeded from the run id: the same numbers on every replay."""
        if self._random is None:
            seed = hashlib.sha256(f"{self.run_id}:random".encode()).digest()
            self._random = _random.Random(seed)
        return self._random

    def side_effect(self, fn: Callable[[], T], *, type: Any = None) -> T:
        """Run ``fn`` once and record its value; replays return the recorded value.

        The value is stored as JSON: pass ``type=`` (or annotate ``fn``'s return type) to
        get a typed value back on replay.
        """
        tp = type if type is not None else _return_annotation(fn)
        data = self._run.side_effect(lambda: self._converter.to_data(fn(), tp, path="side_effect"))
        value: T = self._converter.from_data(data, tp, path="side_effect")
        return value

    def upsert_search_attributes(self, attributes: dict[str, Any]) -> None:
        """Set attributes to find this instance by (``engine.list(search={...})``).

        Values must be JSON scalars (str, int, float, bool); ``None`` removes a key.
        They are stored with the workflow's next write.
        """
        for key, value in attributes.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"search attribute names must be strings, got {key!r}")
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ConfigurationError(
                    f"search attribute {key!r} must be a str, int, float, bool or None, "
                    f"got {type(value).__name__}"
                )
        self._run.upsert_search_attributes(attributes)

    def patched(self, change_id: str) -> bool:
        """True on the new code path of an in-place change named ``change_id``.

        Wrap a change to a running workflow's logic as ``if ctx.patched("id"): new else:
        old``: runs recorded before the change replay the old branch, new runs take the new
        one. Once no old run is left, replace the call by ``ctx.deprecate_patch("id")``.
        """
        return self._run.patched(change_id)

    def deprecate_patch(self, change_id: str) -> None:
        """Mark ``change_id`` as always taken, still accepting histories with its marker."""
        self._run.deprecate_patch(change_id)

    async def sleep(self, duration: float | timedelta) -> None:
        """Sleep durably: the timer survives crashes and restarts.

        ``asyncio.sleep`` inside a workflow is durable too; this form also accepts a
        ``timedelta``.
        """
        seconds = as_seconds(duration, "sleep duration")
        assert seconds is not None
        await asyncio.sleep(seconds)

    @overload
    async def wait_for_signal(
        self, name: str, *, timeout: float | timedelta | None = None
    ) -> Any: ...

    @overload
    async def wait_for_signal(
        self, name: str, *, timeout: float | timedelta | None = None, type: type[T]
    ) -> T: ...

    async def wait_for_signal(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        type: Any = None,
    ) -> Any:
        """Wait for the next signal called ``name`` and return its payload.

        Signals sent before the wait are buffered and returned in the order they were
        sent. With ``timeout``, raises :class:`TimeoutError` if none arrives in time (the
        timeout is a durable timer). With ``type``, the payload is decoded into that type.
        """
        seconds = as_seconds(timeout, "signal timeout")
        fut = self._run.wait_signal(name)
        if seconds is None:
            data = await fut
        else:
            try:
                data = await asyncio.wait_for(fut, seconds)
            except TimeoutError:
                raise TimeoutError(
                    f"no signal {name!r} arrived within {seconds:g} seconds"
                ) from None
        if type is None:
            return data
        return self._converter.from_data(data, type, path=f"signal {name!r}")

    async def start_child(
        self,
        wf: WorkflowDefinition[Any, T],
        *args: Any,
        id: str | None = None,
        parent_close: str = "terminate",
        **kwargs: Any,
    ) -> ChildHandle[T]:
        """Start a child workflow and return a handle to await, signal or cancel it.

        The child is created in the same write that records this call, so a crash cannot
        lose or duplicate it. ``id`` defaults to ``"<parent id>/<command number>"``
        (``"<parent id>/<run id prefix>/<command number>"`` in a run continued as new).
        ``parent_close`` says what happens to the child if this workflow ends first:
        ``"terminate"`` (default), ``"cancel"`` or ``"abandon"``.
        """
        from stalwart.decorators import WorkflowDefinition

        if not isinstance(wf, WorkflowDefinition):
            raise ConfigurationError(f"start_child() takes a @workflow function, got {wf!r}")
        if parent_close not in PARENT_CLOSE_POLICIES:
            raise ConfigurationError(
                f"parent_close must be one of {', '.join(PARENT_CLOSE_POLICIES)}, "
                f"got {parent_close!r}"
            )
        data = wf.signature.encode_args(self._converter, args, kwargs)
        child_id = id if id is not None else self._default_child_id()
        if not child_id or not child_id.isprintable() or len(child_id) > 255:
            raise ConfigurationError(f"invalid child workflow id {child_id!r}")
        state = self._run.start_child(child_id, wf.name, wf.version, data, parent_close)
        return ChildHandle(self, wf, state)

    def _default_child_id(self) -> str:
        # Command numbers restart in every run: a run that continues another one puts its
        # run id in the default, or its first child would reuse its predecessor's id.
        started = self._run.started
        if started.previous_run_id is None:
            return f"{self.instance_id}/{self._run.next_cmd}"
        return f"{self.instance_id}/{started.run_id[:12]}/{self._run.next_cmd}"

    def continue_as_new(self, *args: Any, **kwargs: Any) -> NoReturn:
        """End this run and start a fresh one of the same workflow with new arguments.

        The instance keeps its id; the new run starts with an empty history (bounding
        replay cost for workflows that loop for months). Handles follow the chain to the
        final result.
        """
        if self._signature is None:
            raise ConfigurationError("continue_as_new() is not available in this context")
        data = self._signature.encode_args(self._converter, args, kwargs)
        raise ContinueAsNew(data)

    # -- sagas ------------------------------------------------------------------------
    def saga(self) -> SagaScope:
        """A saga scope: ``async with ctx.saga():``.

        Inside it, every activity declared with ``@activity(compensate=undo)`` that
        completes registers ``undo``; if the block fails or the workflow is cancelled, the
        registered compensations run durably in reverse completion order and
        :class:`CompensatedError` is raised (the run ends ``compensated``).
        """
        return SagaScope(self)

    def step(self, fn: ActivityDefinition[Any, T], *args: Any, **kwargs: Any) -> Step[T]:
        """A saga step built fluently:
        ``await ctx.step(charge, card).compensate(refund).timeout(30).retry(policy)``.

        Outside an explicit ``ctx.saga()`` block, steps belong to the workflow's own saga:
        if the workflow then fails or is cancelled, they are compensated.
        """
        from stalwart.decorators import ActivityDefinition

        if not isinstance(fn, ActivityDefinition):
            raise ConfigurationError(f"ctx.step() takes an @activity function, got {fn!r}")
        return Step(self, fn, args, kwargs)

    async def run_main(self, main: Coroutine[Any, Any, T]) -> T:
        """Run the workflow function inside its root saga (used by the runtime)."""
        root = self._root_saga = SagaScope(self)
        try:
            return await main
        except (Exception, Cancelled) as exc:
            if not root.has_steps or isinstance(exc, CompensatedError):
                raise
            reason = (
                f"cancelled: {exc.reason}"
                if isinstance(exc, Cancelled)
                else (f"{type(exc).__name__}: {exc}")
            )
            await root.settle_running()
            await root.compensate(reason)
            raise CompensatedError(reason, error_info(exc)) from exc

    # -- waiting ----------------------------------------------------------------------
    async def wait_condition(
        self, predicate: Callable[[], bool], *, timeout: float | timedelta | None = None
    ) -> None:
        """Wait until ``predicate()`` is true (re-checked each time the workflow blocks).

        The predicate must only read workflow state (e.g. fields a signal handler sets).
        With ``timeout`` (a durable timer), raises :class:`TimeoutError` if it stays false.
        """
        seconds = as_seconds(timeout, "condition timeout")
        fut = self._run.wait_condition(predicate)
        if seconds is None:
            await fut
            return
        try:
            await asyncio.wait_for(fut, seconds)
        except TimeoutError:
            raise TimeoutError(f"condition still false after {seconds:g} seconds") from None

    async def first(
        self, *awaitables: Awaitable[Any], timeout: float | timedelta | None = None
    ) -> tuple[int, Any]:
        """Race awaitables (activities, timers, signal waits, children): return the index
        and result of the first to finish and cancel the others. Deterministic on replay:
        the winner is whichever result was recorded first.

        If the winner raised, that exception propagates. With ``timeout`` and no winner
        in time, raises :class:`TimeoutError`.
        """
        if not awaitables:
            raise ConfigurationError("first() needs at least one awaitable")
        tasks = [asyncio.ensure_future(aw) for aw in awaitables]
        seconds = as_seconds(timeout, "first() timeout")
        try:
            done, _ = await asyncio.wait(
                tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        if not done:
            raise TimeoutError(f"nothing finished within {seconds:g} seconds")
        index = next(i for i, task in enumerate(tasks) if task in done)
        return index, tasks[index].result()

    # -- handlers ---------------------------------------------------------------------
    def set_signal_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Handle signals called ``name`` with ``handler(payload)`` (sync or async).

        The payload is decoded into the handler's annotated parameter type. Signals sent
        before the handler was set are delivered to it first, in order.
        """
        sig = Signature(handler, skip_first=False, label=f"signal handler {name!r}")
        is_async = inspect.iscoroutinefunction(handler)

        def deliver(payload: Any) -> None:
            args = sig.decode_args(self._converter, [payload] if sig.params else [])
            if is_async:
                self._run.spawn(handler(*args))
            else:
                handler(*args)

        self._run.set_signal_handler(name, deliver)

    def signal_handler(self, name: str) -> Callable[[F], F]:
        """Decorator form of :meth:`set_signal_handler`."""

        def register(fn: F) -> F:
            self.set_signal_handler(name, fn)
            return fn

        return register

    def set_query_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Answer ``handle.query(name, *args)`` with ``handler(*args)`` (sync, read-only).

        Queries are answered from the workflow's current state, rebuilt by replay when
        the instance is not in this process's memory; nothing is recorded.
        """
        sig = Signature(handler, skip_first=False, label=f"query {name!r}")

        def answer(args: list[Any]) -> Any:
            return handler(*sig.decode_args(self._converter, args))

        self._run.query_handlers[name] = answer

    def query_handler(self, name: str) -> Callable[[F], F]:
        """Decorator form of :meth:`set_query_handler`."""

        def register(fn: F) -> F:
            self.set_query_handler(name, fn)
            return fn

        return register

    def set_update_handler(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        validator: Callable[..., Any] | None = None,
    ) -> None:
        """Handle ``handle.update(name, *args)``: a request that may change state and
        returns ``handler``'s result (or raises its error) to the caller.

        ``validator(*args)`` (sync, read-only) runs first; if it raises, the update is
        refused before the handler runs and the caller gets the error.
        """
        sig = Signature(handler, skip_first=False, label=f"update {name!r}")

        def validate(args: list[Any]) -> None:
            values = sig.decode_args(self._converter, args)
            if validator is not None:
                validator(*values)

        def start(update_id: str, args: list[Any]) -> None:
            self._run.spawn(self._run_update(update_id, handler, sig, args))

        self._run.update_handlers[name] = UpdateHandler(validate, start)

    def update_handler(
        self, name: str, *, validator: Callable[..., Any] | None = None
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`set_update_handler`."""

        def register(fn: F) -> F:
            self.set_update_handler(name, fn, validator=validator)
            return fn

        return register

    async def _run_update(
        self, update_id: str, handler: Callable[..., Any], sig: Signature, args: list[Any]
    ) -> None:
        try:
            result = handler(*sig.decode_args(self._converter, args))
            if inspect.isawaitable(result):
                result = await result
            data = sig.encode_result(self._converter, result)
        except Exception as exc:  # noqa: BLE001 - the caller receives the handler's error
            self._run.complete_update(update_id, None, error_info(exc))
            return
        self._run.complete_update(update_id, data, None)

    def activity(
        self,
        fn: ActivityDefinition[Any, T],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        queue: str | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]:
        """Call an activity durably, overriding its retry policy, timeouts or queue (a
        queued call runs on any worker serving that queue) for this call."""
        from stalwart.decorators import ActivityDefinition

        if not isinstance(fn, ActivityDefinition):
            raise ConfigurationError(
                f"ctx.activity() takes a function decorated with @activity, got {fn!r}"
            )
        return self.call_activity(
            fn,
            args,
            kwargs,
            retry=retry,
            timeout=timeout,
            heartbeat_timeout=heartbeat_timeout,
            schedule_to_close=schedule_to_close,
            queue=queue,
            priority=priority,
        )

    def call_activity(
        self,
        defn: ActivityDefinition[Any, T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        cmd_holder: list[int] | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Encode the arguments now (errors surface at the call site), schedule on await.

        ``cmd_holder`` receives the call's command number once it is scheduled.
        """
        data = defn.signature.encode_args(self._converter, args, kwargs)
        options = defn.options_data(
            retry=retry,
            timeout=as_seconds(timeout, "activity timeout"),
            heartbeat_timeout=as_seconds(heartbeat_timeout, "heartbeat timeout"),
            schedule_to_close=as_seconds(schedule_to_close, "schedule-to-close timeout"),
            queue=queue,
            priority=priority,
        )
        return self._await_activity(defn, data, options, cmd_holder)

    async def _await_activity(
        self,
        defn: ActivityDefinition[Any, T],
        data: list[Any],
        options: dict[str, Any],
        cmd_holder: list[int] | None,
    ) -> T:
        if cmd_holder is not None:
            cmd_holder.append(self._run.next_cmd)
        fut = self._run.schedule_activity(defn.name, data, options)
        result = await fut
        value: T = defn.signature.decode_result(self._converter, result)
        return value


class ChildHandle(Generic[T]):
    """A child workflow started by the current workflow."""

    def __init__(
        self, ctx: WorkflowContext, wf: WorkflowDefinition[Any, T], state: ChildState
    ) -> None:
        self._ctx = ctx
        self._wf = wf
        self._state = state
        self.id = state.child_id
        """The child's instance id."""

    async def result(self) -> T:
        """Wait for the child to end; its typed result, or :class:`ChildWorkflowError`."""
        done = await asyncio.shield(self._state.future)
        if done.status != "completed":
            err = done.error or {}
            raise ChildWorkflowError(
                self.id, done.status, str(err.get("type", "")), str(err.get("message", ""))
            )
        value: T = self._wf.signature.decode_result(self._ctx._converter, done.result)
        return value

    def __await__(self) -> Generator[Any, None, T]:
        return self.result().__await__()

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send the child a signal (durably, with this workflow's next write)."""
        data = self._ctx._converter.to_data(payload, Any, path=f"signal {name!r} payload")
        self._ctx._run.signal_external(self.id, name, data)

    async def cancel(self, reason: str = "") -> None:
        """Ask the child to cancel (``Cancelled`` is raised at its current await)."""
        self._ctx._run.cancel_external(self.id, reason)


def _return_annotation(fn: Callable[..., Any]) -> Any:
    import typing

    try:
        return typing.get_type_hints(fn).get("return", Any)
    except (NameError, TypeError):
        return Any
