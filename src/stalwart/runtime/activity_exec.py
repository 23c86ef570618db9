"""Executing one attempt of an activity and classifying the outcome."""

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


async def execute_attempt(
    defn: ActivityDefinition[Any, Any] | None,
    act: PendingActivity,
    *,
    instance_id: str,
    run_id: str,
    converter: TypeConverter,
    executor: Executor,
    now: Callable[[], float],
) -> ev.Event:
    """Run one attempt; return the event that records its outcome."""
    attempt = act.attempt
    if defn is None:
        return ev.ActivityFailed(
            cmd=act.cmd,
            attempts=attempt,
            non_retryable=True,
            error={
                "type": "ActivityNotRegistered",
                "message": f"activity {act.name!r} is not registered in this worker",
                "traceback": "",
            },
        )
    try:
        args = defn.signature.decode_args(converter, act.input)
    except EncodingError as exc:
        return ev.ActivityFailed(
            cmd=act.cmd, attempts=attempt, error=error_info(exc), non_retryable=True
        )
    timeout = act.options.get("timeout")
    info = ActivityContext(instance_id, run_id, act.name, act.cmd, attempt)
    try:
        result = await _invoke(defn, args, info, timeout, executor)
    except TimeoutError as exc:
        if timeout is not None and not str(exc):
            exc = TimeoutError(f"activity exceeded its start-to-close timeout of {timeout:g}s")
        return _failure(act, exc, now)
    except Exception as exc:  # noqa: BLE001 - every activity failure is recorded
        return _failure(act, exc, now)
    try:
        data = defn.signature.encode_result(converter, result)
    except EncodingError as exc:
        # An unencodable result would fail the same way on every attempt: record it once.
        return ev.ActivityFailed(
            cmd=act.cmd, attempts=attempt, error=error_info(exc), non_retryable=True
        )
    return ev.ActivityCompleted(cmd=act.cmd, result=data, attempt=attempt)


async def _invoke(
    defn: ActivityDefinition[Any, Any],
    args: list[Any],
    info: ActivityContext,
    timeout: float | None,
    executor: Executor,
) -> Any:
    # Each attempt runs in its own task (see Worker._run_activity), so the context variable
    # set here is visible to the activity body only.
    token = ACTIVITY_CONTEXT_VAR.set(info)
    try:
        if timeout is None:
            return await _call(defn, args, executor)
        async with asyncio.timeout(timeout):
            return await _call(defn, args, executor)
    finally:
        ACTIVITY_CONTEXT_VAR.reset(token)


async def _call(defn: ActivityDefinition[Any, Any], args: list[Any], executor: Executor) -> Any:
    if defn.is_async:
        return await defn.fn(*args)
    call = functools.partial(contextvars.copy_context().run, defn.fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _failure(act: PendingActivity, exc: BaseException, now: Callable[[], float]) -> ev.Event:
    policy = RetryPolicy.from_data(act.options["retry"])
    info = error_info(exc)
    non_retryable = isinstance(exc, NonRetryableError) or _listed(exc, policy)
    if non_retryable or act.attempt >= policy.max_attempts:
        return ev.ActivityFailed(
            cmd=act.cmd, attempts=act.attempt, error=info, non_retryable=non_retryable
        )
    return ev.ActivityAttemptFailed(
        cmd=act.cmd,
        attempt=act.attempt,
        error=info,
        retry_at=now() + policy.delay_after(act.attempt),
    )


def _listed(exc: BaseException, policy: RetryPolicy) -> bool:
    names = {t if isinstance(t, str) else t.__qualname__ for t in policy.non_retryable}
    return any(cls.__qualname__ in names or cls.__name__ in names for cls in type(exc).__mro__)
