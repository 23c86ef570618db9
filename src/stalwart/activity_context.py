"""What an activity can learn about the durable call it is executing."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from stalwart.errors import StalwartError


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """The durable call an activity body is executing.

    ``idempotency_key`` (``"<instance id>:<command number>"``) is the same on every attempt
    of the same call, including re-executions after a crash: pass it to downstream
    services so an at-least-once activity has an exactly-once effect.
    """

    instance_id: str
    run_id: str
    activity: str
    cmd: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """A key stable across attempts and crashes of this one call."""
        return f"{self.instance_id}:{self.cmd}"


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
