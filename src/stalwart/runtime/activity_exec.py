"""Executing one attempt of an activity and classifying the outcome.

An attempt is bounded by three clocks: ``timeout`` (start-to-close, per attempt),
``heartbeat_timeout`` (longest silence between heartbeats) and ``schedule_to_close``
(from the first schedule to the last attempt's end: no retry starts after it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from stalwart._engine import events as ev
from stalwart._engine.run import PendingActivity
from stalwart.activity_context import ACTIVITY_CONTEXT_VAR, ActivityContext
from stalwart.codec import TypeConverter
from stalwart.decorators import ActivityDefinition
from stalwart.errors import EncodingError, NonRetryableError, error_info
from stalwart.retry import RetryPolicy


class HeartbeatTimeoutError(TimeoutError):
    """The activity did not heartbeat within its ``heartbeat_timeout``."""


async def execute_attempt(
    defn: ActivityDefinition[Any, Any] | None,
    act: PendingActivity,
    *,
    instance_id: str,
    run_id: str,
    converter: TypeConverter,
    executor: Executor,
    now: Callable[[], float],
    worker_id: str | None = None,
    lease_epoch: int | None = None,
) -> ev.Event:
    """Run one attempt; return the event that records its outcome."""
    attempt = act.attempt
    if defn is None:
        return _fatal(
            act, "ActivityNotRegistered", f"activity {act.name!r} is not registered in this worker"
        )
    deadline = _deadline(act)
    if deadline is not None and now() >= deadline:
        return _fatal(act, "TimeoutError", "the activity's schedule-to-close timeout elapsed")
    try:
        args = defn.signature.decode_args(converter, act.input)
    except EncodingError as exc:
        return ev.ActivityFailed(
            cmd=act.cmd, attempts=attempt, error=error_info(exc), non_retryable=True
        )
    info = ActivityContext(
        instance_id,
        run_id,
        act.name,
        act.cmd,
        attempt,
        heartbeat_details=act.heartbeat,
        worker_id=worker_id,
        lease_epoch=lease_epoch,
    )
    limits = _Limits(act.options, deadline, now)
    try:
        result = await _invoke(defn, args, info, limits, executor)
    except asyncio.CancelledError:
        info.cancel()  # a sync body learns it at its next heartbeat
        raise
    except TimeoutError as exc:
        return _failure(act, limits.explain(exc), now, info.last_details(), deadline)
    except Exception as exc:  # noqa: BLE001 - every activity failure is recorded
        return _failure(act, exc, now, info.last_details(), deadline)
    try:
        data = defn.signature.encode_result(converter, result)
    except EncodingError as exc:
        # An unencodable result would fail the same way on every attempt: record it once.
        return ev.ActivityFailed(
            cmd=act.cmd, attempts=attempt, error=error_info(exc), non_retryable=True
        )
    return ev.ActivityCompleted(cmd=act.cmd, result=data, attempt=attempt)


class _Limits:
    """The time limits of one attempt."""

    def __init__(
        self, options: dict[str, Any], deadline: float | None, now: Callable[[], float]
    ) -> None:
        self.start_to_close: float | None = options.get("timeout")
        self.heartbeat: float | None = options.get("heartbeat_timeout")
        self.deadline = deadline
        budget = [self.start_to_close] if self.start_to_close is not None else []
        if deadline is not None:
            budget.append(max(0.0, deadline - now()))
        self.attempt_budget = min(budget) if budget else None

    def explain(self, exc: TimeoutError) -> TimeoutError:
        if isinstance(exc, HeartbeatTimeoutError) or str(exc):
            return exc
        if self.start_to_close is not None and self.attempt_budget == self.start_to_close:
            return TimeoutError(
                f"activity exceeded its start-to-close timeout of {self.start_to_close:g}s"
            )
        return TimeoutError("the activity's schedule-to-close timeout elapsed")


async def _invoke(
    defn: ActivityDefinition[Any, Any],
    args: list[Any],
    info: ActivityContext,
    limits: _Limits,
    executor: Executor,
) -> Any:
    # Each attempt runs in its own task (see Worker._run_activity), so the context variable
    # set here is visible to the activity body only.
    token = ACTIVITY_CONTEXT_VAR.set(info)
    try:
        call = _call(defn, args, executor)
        if limits.heartbeat is not None:
            call = _watch_heartbeats(call, info, limits.heartbeat)
        if limits.attempt_budget is None:
            return await call
        async with asyncio.timeout(limits.attempt_budget):
            return await call
    finally:
        ACTIVITY_CONTEXT_VAR.reset(token)


async def _call(defn: ActivityDefinition[Any, Any], args: list[Any], executor: Executor) -> Any:
    if defn.is_async:
        return await defn.fn(*args)
    call = functools.partial(contextvars.copy_context().run, defn.fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


async def _watch_heartbeats(call: Any, info: ActivityContext, heartbeat_timeout: float) -> Any:
    """Run ``call``, failing it if the body stays silent longer than the timeout."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            remaining = heartbeat_timeout - info.seconds_since_heartbeat()
            if remaining <= 0:
                info.cancel()
                task.cancel()
                raise HeartbeatTimeoutError(
                    f"activity did not heartbeat within its heartbeat timeout of "
                    f"{heartbeat_timeout:g}s"
                )
            done, _ = await asyncio.wait({task}, timeout=remaining)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()


def _deadline(act: PendingActivity) -> float | None:
    limit = act.options.get("schedule_to_close")
    return act.scheduled_at + limit if limit is not None else None


def _fatal(act: PendingActivity, kind: str, message: str) -> ev.Event:
    return ev.ActivityFailed(
        cmd=act.cmd,
        attempts=act.attempt,
        non_retryable=True,
        error={"type": kind, "message": message, "traceback": ""},
    )


def _failure(
    act: PendingActivity,
    exc: BaseException,
    now: Callable[[], float],
    details: Any,
    deadline: float | None,
) -> ev.Event:
    policy = RetryPolicy.from_data(act.options["retry"])
    info = error_info(exc)
    non_retryable = isinstance(exc, NonRetryableError) or _listed(exc, policy)
    retry_at = now() + policy.delay_after(act.attempt)
    out_of_time = deadline is not None and retry_at >= deadline
    if non_retryable or act.attempt >= policy.max_attempts or out_of_time:
        return ev.ActivityFailed(
            cmd=act.cmd, attempts=act.attempt, error=info, non_retryable=non_retryable
        )
    return ev.ActivityAttemptFailed(
        cmd=act.cmd, attempt=act.attempt, error=info, retry_at=retry_at, details=details
    )


def _listed(exc: BaseException, policy: RetryPolicy) -> bool:
    names = {t if isinstance(t, str) else t.__qualname__ for t in policy.non_retryable}
    return any(cls.__qualname__ in names or cls.__name__ in names for cls in type(exc).__mro__)
