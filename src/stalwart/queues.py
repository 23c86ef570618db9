"""Named queues: where remote activities and flow-controlled workflows wait for a worker."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stalwart.errors import ConfigurationError
from stalwart.store.base import QueueLimits


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue served by a worker, with its flow control.

    ``concurrency`` bounds the queue's tasks (or started workflows) running at once across
    all workers; ``worker_concurrency`` bounds them in this worker; ``rate_limit`` allows
    at most that many starts per ``rate_period`` seconds. Every worker serving a queue
    must declare the same global limits (they are enforced by each claim).
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: int | None = None
    rate_period: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.isprintable():
            raise ConfigurationError(f"queue name must be a non-empty string, got {self.name!r}")
        for field in ("concurrency", "worker_concurrency", "rate_limit"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"Queue.{field} must be an integer >= 1, got {value!r}")
        if not math.isfinite(self.rate_period) or self.rate_period <= 0:
            raise ConfigurationError(f"Queue.rate_period must be > 0, got {self.rate_period!r}")

    def limits(self) -> QueueLimits:
        """The global limits, as the store enforces them."""
        return QueueLimits(self.concurrency, self.rate_limit, self.rate_period)
