"""A deterministic asyncio event loop for one workflow run.

Workflow code is ordinary ``async def`` code. It runs on this loop, which is driven by
hand: :meth:`WorkflowLoop.run_ready` runs every ready callback in FIFO order until none is
left, then returns. Nothing here waits on a clock or on I/O, so the same inputs give the
same interleaving of tasks on every replay. That makes ``asyncio.gather``,
``asyncio.wait``, ``asyncio.as_completed`` and ``asyncio.create_task`` deterministic.

``loop.call_at`` / ``call_later`` (used by ``asyncio.sleep``, ``wait_for`` and
``asyncio.timeout``) become *durable* timers through the ``timer_factory`` hook.
"""

from __future__ import annotations

import asyncio
import asyncio.futures
import asyncio.tasks
import collections
import contextlib
import contextvars
import logging
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any, NoReturn, TypeVar

from stalwart.errors import Cancelled

T = TypeVar("T")
logger = logging.getLogger("stalwart.workflow")

# The pure-Python Future/Task implementations let us raise ``Cancelled`` (which carries
# the cancel reason) instead of a bare CancelledError at the workflow's await points.
_PyFuture: Any = asyncio.futures._PyFuture  # type: ignore[attr-defined]
_PyTask: Any = asyncio.tasks._PyTask  # type: ignore[attr-defined]


def _cancelled_error(fut: Any) -> BaseException:
    # A task cancelled by the exception its coroutine raised keeps that exception (and
    # with it the reason); otherwise build one from the cancel message.
    exc = fut._cancelled_exc
    if exc is not None:
        fut._cancelled_exc = None
        if isinstance(exc, Cancelled):
            return exc
        return Cancelled(str(exc.args[0]) if exc.args else (fut._cancel_message or ""))
    return Cancelled(fut._cancel_message or "")


class WorkflowFuture(_PyFuture):  # type: ignore[misc]
    """A future whose cancellation surfaces as :class:`stalwart.Cancelled`."""

    def _make_cancelled_error(self) -> BaseException:
        return _cancelled_error(self)


class WorkflowTask(_PyTask):  # type: ignore[misc]
    """A task whose cancellation surfaces as :class:`stalwart.Cancelled`."""

    def _make_cancelled_error(self) -> BaseException:
        return _cancelled_error(self)


class DurableTimerHandle(asyncio.TimerHandle):
    """A timer handle backed by a durable timer; cancelling it abandons the timer."""

    __slots__ = ("cmd",)

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: WorkflowLoop,
        context: contextvars.Context | None,
        cmd: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self.cmd = cmd
        self._scheduled = True


TimerFactory = Callable[[float, Callable[[], None]], int]
"""``(fire_at, on_fire) -> cmd``: records a durable timer and returns its command number."""


def _closed_clock() -> float:
    raise RuntimeError("the workflow's loop is closed")


def _closed_timer_factory(fire_at: float, on_fire: Callable[[], None]) -> int:
    raise RuntimeError("the workflow's loop is closed")


def _closed_timer_cancelled(cmd: int) -> None:
    raise RuntimeError("the workflow's loop is closed")


class WorkflowLoop(asyncio.AbstractEventLoop):
    """Runs one workflow's tasks deterministically; see the module docstring."""

    def __init__(
        self,
        now: Callable[[], float],
        timer_factory: TimerFactory,
        timer_cancelled: Callable[[int], None],
    ) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._now = now
        self._timer_factory = timer_factory
        self._timer_cancelled = timer_cancelled
        self._closed = False
        self.unhandled: list[BaseException] = []
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._futures: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()

    # -- driving -----------------------------------------------------------------------
    def run_ready(self) -> None:
        """Run ready callbacks (FIFO) until there are none; then the workflow is blocked."""
        outer = asyncio._get_running_loop()
        asyncio._set_running_loop(self)
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            asyncio._set_running_loop(outer)

    @property
    def has_ready(self) -> bool:
        """Whether callbacks are waiting to run."""
        return bool(self._ready)

    # -- the parts of the loop API that workflow code (and asyncio itself) uses ----------
    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        holder: list[DurableTimerHandle] = []

        def fire() -> None:
            handle = holder[0]
            if not handle._cancelled:
                self._ready.append(handle)

        cmd = self._timer_factory(when, fire)
        handle = DurableTimerHandle(when, callback, args, self, context, cmd)
        holder.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + max(0.0, delay), callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if isinstance(handle, DurableTimerHandle):
            self._timer_cancelled(handle.cmd)

    def time(self) -> float:
        return self._now()

    def create_future(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = WorkflowFuture(loop=self)
        self._futures.add(fut)
        return fut

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task: asyncio.Task[T] = WorkflowTask(coro, loop=self, name=name, context=context)
        self.tasks.add(task)
        return task

    def discard(self) -> None:
        """Drop every pending task without running its ``except`` handlers.

        Used when an instance leaves memory (eviction, lost lease): the coroutines are
        closed (``GeneratorExit`` runs ``finally`` blocks only) and nothing is recorded.
        """
        for task in list(self.tasks):
            if not task.done():
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                with contextlib.suppress(BaseException):
                    task.get_coro().close()
        # Nothing will run here again: drop the callbacks that tie the futures and tasks
        # to each other and to the run (a task waits on a future whose callback is the
        # task's wake-up; futures call back into the run). Without these cycles a
        # discarded run is freed at once by reference counting instead of lingering
        # until a garbage collection reaches it: an evicted sleeper's ~50 objects.
        for fut in [*self._futures, *self.tasks]:
            fut._callbacks.clear()
        self.close()

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()
        # These are the run's bound methods: a closed loop must not keep the run alive.
        self._now = _closed_clock
        self._timer_factory = _closed_timer_factory
        self._timer_cancelled = _closed_timer_cancelled

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            self.unhandled.append(exc)
        logger.debug("workflow loop: %s", context.get("message"), exc_info=exc)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    # -- everything that would do I/O or look at real time is refused --------------------
    def _refuse(self, what: str) -> NoReturn:
        raise RuntimeError(
            f"{what} is not allowed inside a workflow: workflow code must be deterministic. "
            "Do I/O and threads in an activity, and use ctx.sleep()/asyncio.sleep for timers."
        )

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Any, *args: Any
    ) -> Any:
        self._refuse("run_in_executor / asyncio.to_thread")

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Any, *args: Any, context: Any = None
    ) -> Any:
        self._refuse("call_soon_threadsafe")

    def run_forever(self) -> None:
        self._refuse("run_forever")

    def run_until_complete(self, future: Any) -> Any:
        self._refuse("run_until_complete")

    def stop(self) -> None:
        self._refuse("stopping the loop")

    async def shutdown_asyncgens(self) -> None:
        return None

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        return None
