"""Retry policy for activities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from stalwart.errors import ConfigurationError

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_INTERVAL = 1.0
DEFAULT_BACKOFF = 2.0
DEFAULT_MAX_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how far apart, an activity is retried.

    The wait before attempt ``n + 1`` is ``initial_interval * backoff ** (n - 1)``, capped
    at ``max_interval``. Waits are durable timers: a crash during a backoff keeps the
    attempt count. Exceptions whose type name is in ``non_retryable`` (or that derive from
    :class:`stalwart.NonRetryableError`) fail the activity at once.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Total attempts including the first; 1 means no retry."""
    initial_interval: float = DEFAULT_INITIAL_INTERVAL
    """Seconds to wait before the first retry."""
    backoff: float = DEFAULT_BACKOFF
    """Factor applied to the wait after each failed attempt."""
    max_interval: float = DEFAULT_MAX_INTERVAL
    """Upper bound on the wait between attempts, in seconds."""
    non_retryable: Sequence[str | type[BaseException]] = field(default=())
    """Exception types (or their names) that are never retried."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be an integer >= 1, got {self.max_attempts!r}"
            )
        for name in ("initial_interval", "max_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(
                    f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}"
                )
        if (
            not isinstance(self.backoff, int | float)
            or not math.isfinite(self.backoff)
            or self.backoff < 1
        ):
            raise ConfigurationError(f"RetryPolicy.backoff must be >= 1, got {self.backoff!r}")
        for item in self.non_retryable:
            if not isinstance(item, str) and not (
                isinstance(item, type) and issubclass(item, BaseException)
            ):
                raise ConfigurationError(
                    f"RetryPolicy.non_retryable takes exception types or names, got {item!r}"
                )

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = self.initial_interval * (self.backoff ** max(0, attempt - 1))
        return float(min(delay, self.max_interval))

    def to_data(self) -> dict[str, Any]:
        """The JSON form recorded with each scheduled activity."""
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval,
            "backoff": self.backoff,
            "max_interval": self.max_interval,
            "non_retryable": [
                item if isinstance(item, str) else item.__qualname__ for item in self.non_retryable
            ],
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> RetryPolicy:
        """Rebuild a policy from :meth:`to_data`."""
        return cls(
            max_attempts=int(data["max_attempts"]),
            initial_interval=float(data["initial_interval"]),
            backoff=float(data["backoff"]),
            max_interval=float(data["max_interval"]),
            non_retryable=tuple(data.get("non_retryable", ())),
        )


def as_seconds(value: Any, what: str) -> float | None:
    """Normalise a timeout/duration given as seconds or ``timedelta``; ``None`` stays None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{what} must be seconds or a timedelta, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{what} must be a finite duration >= 0, got {value!r}")
    return seconds
