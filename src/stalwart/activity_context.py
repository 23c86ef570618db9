"""What an activity can learn about, and tell, the durable call it is executing."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any

from stalwart.errors import ActivityCancelledError, StalwartError


class ActivityContext:
    """The durable call an activity body is executing (``stalwart.activity_context()``).

    ``idempotency_key`` (``"<instance id>:<run>:<command number>"``) is the same on every
    attempt of the same call, including re-executions after a crash, and differs between
    runs of a workflow that continues as new: pass it to downstream services so an
    at-least-once activity has an exactly-once effect.

    Long activities call :meth:`heartbeat` regularly: it proves liveness (an activity
    with a ``heartbeat_timeout`` that stops heartbeating fails its attempt), records
    progress ``details`` that the next attempt receives as :attr:`heartbeat_details`, and
    raises :class:`ActivityCancelledError` once the workflow no longer wants the result.
    """

    def __init__(
        self,
        instance_id: str,
        run_id: str,
        activity: str,
        cmd: int,
        attempt: int,
        *,
        heartbeat_details: Any = None,
        worker_id: str | None = None,
        lease_epoch: int | None = None,
    ) -> None:
        self.worker_id = worker_id
        """The id of the worker incarnation executing this attempt (``None`` in tests)."""
        self.lease_epoch = lease_epoch
        """The instance's lease epoch under which an inline activity runs (``None`` for a
        queued task, which the task's own claim guards instead)."""
        self.instance_id = instance_id
        self.run_id = run_id
        self.activity = activity
        self.cmd = cmd
        self.attempt = attempt
        self.heartbeat_details = heartbeat_details
        """The details of the last heartbeat of a previous attempt (``None`` at first)."""
        self._lock = threading.Lock()
        self._details: Any = heartbeat_details
        self._last_beat = time.monotonic()
        # A plain flag: written by the loop, read by the body's thread (a per-attempt
        # threading.Event cost a Condition and a lock on every activity call).
        self._cancelled = False

    @property
    def idempotency_key(self) -> str:
        """A key stable across attempts and crashes of this one call."""
        return f"{self.instance_id}:{self.run_id[:12]}:{self.cmd}"

    def heartbeat(self, details: Any = None) -> None:
        """Report liveness and progress (JSON-able ``details``); raises
        :class:`ActivityCancelledError` if the call was cancelled. Thread-safe."""
        with self._lock:
            self._last_beat = time.monotonic()
            if details is not None:
                self._details = details
        if self._cancelled:
            raise ActivityCancelledError(
                f"activity {self.activity!r} of {self.instance_id!r} was cancelled"
            )

    @property
    def is_cancelled(self) -> bool:
        """Whether the workflow no longer wants this call's result."""
        return self._cancelled

    def last_details(self) -> Any:
        """The details of the latest heartbeat of this attempt (or the previous one)."""
        with self._lock:
            return self._details

    def seconds_since_heartbeat(self) -> float:
        """Seconds since the attempt started or last heartbeated."""
        with self._lock:
            return time.monotonic() - self._last_beat

    def cancel(self) -> None:
        """Mark the call cancelled (the runtime calls this)."""
        self._cancelled = True


_current: contextvars.ContextVar[ActivityContext | None] = contextvars.ContextVar(
    "stalwart_activity_context", default=None
)
ACTIVITY_CONTEXT_VAR = _current
"""Set by the runtime around each activity attempt."""


def activity_context() -> ActivityContext:
    """The context of the activity running now; raises outside a durable activity call."""
    ctx = _current.get()
    if ctx is None:
        raise StalwartError("activity_context() is only available inside a running activity")
    return ctx
