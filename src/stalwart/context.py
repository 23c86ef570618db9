"""The workflow context: the deterministic API that workflow code uses.

Every workflow receives a :class:`WorkflowContext` as its first argument. Anything that
would differ between the first run and a replay (time, randomness, ids, external values)
goes through it, so replays see exactly what the first run saw.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import random as _random
import uuid as _uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from stalwart._engine.run import WorkflowRun
from stalwart.codec import TypeConverter
from stalwart.errors import ConfigurationError
from stalwart.retry import RetryPolicy, as_seconds

if TYPE_CHECKING:
    from stalwart.decorators import ActivityDefinition

T = TypeVar("T")

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
        self._ctx = ctx

    def isEnabledFor(self, level: int) -> bool:
        return not self._ctx.is_replaying and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self._ctx.instance_id}] {msg}", kwargs


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
    ) -> None:
        self._run = run
        self.instance_id = instance_id
        """The workflow instance's id (stable across replays and continue-as-new)."""
        self.run_id = run_id
        """The id of this run of the instance."""
        self.workflow_name = workflow_name
        """The registered name of the running workflow."""
        self._converter = converter
        self._uuid_count = 0
        self._random: _random.Random | None = None
        self.log: logging.LoggerAdapter[logging.Logger] = _ReplaySafeLogger(
            logging.getLogger(f"stalwart.workflow.{workflow_name}"), self
        )
        """A logger that stays silent while the workflow replays."""

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

    def activity(
        self,
        fn: ActivityDefinition[Any, T],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]:
        """Call an activity durably, overriding its retry policy or timeout for this call."""
        from stalwart.decorators import ActivityDefinition

        if not isinstance(fn, ActivityDefinition):
            raise ConfigurationError(
                f"ctx.activity() takes a function decorated with @activity, got {fn!r}"
            )
        return self.call_activity(fn, args, kwargs, retry=retry, timeout=timeout)

    def call_activity(
        self,
        defn: ActivityDefinition[Any, T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Encode the arguments now (errors surface at the call site), schedule on await."""
        data = defn.signature.encode_args(self._converter, args, kwargs)
        options = defn.options_data(retry=retry, timeout=as_seconds(timeout, "activity timeout"))
        return self._await_activity(defn, data, options)

    async def _await_activity(
        self, defn: ActivityDefinition[Any, T], data: list[Any], options: dict[str, Any]
    ) -> T:
        fut = self._run.schedule_activity(defn.name, data, options)
        result = await fut
        value: T = defn.signature.decode_result(self._converter, result)
        return value


def _return_annotation(fn: Callable[..., Any]) -> Any:
    import typing

    try:
        return typing.get_type_hints(fn).get("return", Any)
    except (NameError, TypeError):
        return Any
