"""An in-process test engine with a virtual clock that skips idle time.

``TestEngine`` is an :class:`stalwart.Engine` on the in-memory store whose clock only
moves when nothing else can: whenever every workflow is blocked on timers (no activity
running, no step being committed, nothing ready on the event loop), time jumps to the
next timer. A 30-day process finishes in milliseconds, and the times the workflows see
(``ctx.now()``, history event times) are the virtual ones.

::

    async with TestEngine(workflows=[trial], activities=[send_email]) as env:
        handle = await trial.start(env, user, id="trial-1")
        await env.sleep(timedelta(days=10))        # let ten virtual days pass
        await handle.signal("upgrade", "pro")
        assert await handle.result() == "converted"

Activities can be replaced for a test with ``TestEngine(mocks={send_email: fake})`` or
``env.mock_activity(send_email, fake)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stalwart.client import Engine
from stalwart.decorators import ActivityDefinition, WorkflowDefinition
from stalwart.errors import ConfigurationError
from stalwart.retry import as_seconds
from stalwart.runtime.clock import Cancellable
from stalwart.runtime.options import WorkerOptions

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)
"""Where virtual time starts unless told otherwise."""


@dataclass(order=True)
class _Timer:
    when: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A clock that moves only when told to (or when the test engine finds it idle)."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._order = itertools.count()
        self.changed = asyncio.Event()

    def now(self) -> float:
        """Virtual epoch seconds."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` once virtual time reaches ``when``."""
        timer = _Timer(when, next(self._order), callback)
        heapq.heappush(self._timers, timer)
        self.changed.set()
        return timer

    def next_due(self) -> float | None:
        """When the earliest pending timer fires, if any."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    def advance_to(self, when: float) -> int:
        """Move time forward to ``when`` and fire every timer due by then, in order."""
        fired = 0
        while True:
            due = self.next_due()
            if due is None or due > when:
                break
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            timer.callback()
            fired += 1
        self._now = max(self._now, when)
        return fired


class TestEngine(Engine):
    """An engine for tests: in-memory store, virtual clock that skips idle time."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        workflows: Sequence[WorkflowDefinition[Any, Any]] | None = None,
        activities: Sequence[ActivityDefinition[Any, Any]] | None = None,
        mocks: Mapping[ActivityDefinition[Any, Any] | str, Callable[..., Any]] | None = None,
        start: datetime = DEFAULT_START,
        auto_skip: bool = True,
    ) -> None:
        if start.tzinfo is None:
            raise ConfigurationError("TestEngine(start=...) must be a timezone-aware datetime")
        self.virtual_clock = VirtualClock(start.timestamp())
        options = WorkerOptions(
            name="test-engine",
            sticky_seconds=math.inf,  # keep everything in memory: no store polling needed
            max_cached=1_000_000,
            poll_interval=0.05,
            lease_seconds=10 * 365 * 86400.0,
            shutdown_grace=0.5,
        )
        super().__init__(
            "memory://",
            workflows=workflows,
            activities=activities,
            options=options,
            clock=self.virtual_clock,
        )
        for target, fake in (mocks or {}).items():
            self.mock_activity(target, fake)
        self._auto_skip = auto_skip
        self._skipper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the engine and start skipping idle time."""
        await super().open()
        if self._auto_skip and self._skipper is None:
            self._skipper = asyncio.get_running_loop().create_task(self._skip_idle_time())

    async def close(self) -> None:
        """Stop skipping time and close the engine."""
        if self._skipper is not None:
            self._skipper.cancel()
            await asyncio.gather(self._skipper, return_exceptions=True)
            self._skipper = None
        await super().close()

    def now(self) -> datetime:
        """The current virtual time."""
        return datetime.fromtimestamp(self.virtual_clock.now(), tz=UTC)

    async def sleep(self, duration: float | timedelta) -> None:
        """Let ``duration`` of virtual time pass (workflows run meanwhile)."""
        seconds = as_seconds(duration, "sleep duration")
        assert seconds is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        self.virtual_clock.call_at(self.virtual_clock.now() + seconds, wake)
        if not self._auto_skip:
            self.virtual_clock.advance_to(self.virtual_clock.now() + seconds)
        await done

    def mock_activity(
        self, target: ActivityDefinition[Any, Any] | str, fake: Callable[..., Any]
    ) -> None:
        """Run ``fake`` instead of the activity ``target`` (same name, options, types)."""
        name = target.name if isinstance(target, ActivityDefinition) else target
        original = self.registry.activity(name)
        if original is None:
            raise ConfigurationError(f"no activity named {name!r} is registered to mock")
        replacement: ActivityDefinition[Any, Any] = ActivityDefinition(
            fake,
            name=name,
            retry=original.retry,
            timeout=original.timeout,
            heartbeat_timeout=original.heartbeat_timeout,
            schedule_to_close=original.schedule_to_close,
        )
        replacement.signature = original.signature
        self.registry.replace_activity(replacement)

    def _busy(self) -> bool:
        worker = self.worker
        if worker is None:
            return False
        if self.committer.pending:
            return True
        return any(
            inst.activity_tasks or inst.driving is not None or inst.incoming
            for inst in worker.live.values()
        )

    async def _skip_idle_time(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Let everything that can run, run (several passes: work hands over to work).
            for _ in range(5):
                await asyncio.sleep(0)
            if self._busy() or _has_ready_callbacks(loop):
                await asyncio.sleep(0.0005)
                continue
            due = self.virtual_clock.next_due()
            if due is None:
                self.virtual_clock.changed.clear()
                await self.virtual_clock.changed.wait()
                continue
            self.virtual_clock.advance_to(due)


def _has_ready_callbacks(loop: asyncio.AbstractEventLoop) -> bool:
    ready: Any = getattr(loop, "_ready", None)
    return ready is not None and len(ready) > 0
