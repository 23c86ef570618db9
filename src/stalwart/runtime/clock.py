"""The clock the runtime schedules by (real time here; a virtual clock in tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Cancel the callback if it has not run yet."""
        ...


class Clock(Protocol):
    """Wall time and callbacks scheduled at wall times."""

    def now(self) -> float:
        """Epoch seconds."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` on the event loop at epoch time ``when`` (at once if past)."""
        ...


class RealClock:
    """``time.time`` and the running event loop's timers."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now

    def now(self) -> float:
        """Epoch seconds."""
        return self._now()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Schedule ``callback`` at epoch time ``when`` on the running loop."""
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - self._now()), callback)
