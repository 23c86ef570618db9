"""Group commit: concurrent writes share one transaction, each waiter resumes when durable.

Writers call :meth:`GroupCommitter.submit`; a single background task takes everything
queued, hands it to :meth:`Store.write` as one batch (one transaction, one fsync), and
resolves each waiter with its own outcome only after the commit returned. There is no
artificial delay: while one batch commits, the next one accumulates.

On a store whose writes wait on the network without holding the event loop and may run
side by side on separate connections (capability ``concurrent_writes``: PostgreSQL), a
write submitted with nothing queued commits from the submitting task instead, one at a
time: a sequential workflow then skips two event-loop turns per step, and whatever is
submitted meanwhile queues and commits as a batch next to it. And when a burst queues
``LEAD_AT`` operations (a wave of workflows resumed by the last commit, all running in
one event-loop turn), the submitter that reaches it sends them itself, so the database
works on that part while the loop prepares the rest (up to ``MAX_LEADING`` such batches
in flight). Not on SQLite: its lone commits run on the event loop, so every write of a
burst would find the committer idle and commit alone, and its single writer connection
could not take a second batch anyway.

On the other stores a write submitted to an idle committer leads instead: it commits
the queue from its own task, once everything else ready in this event-loop turn has
queued behind it (exactly what the commit task would have found). When nothing else is
ready, it commits at once: a sequential workflow then resumes without a trip through
the event loop, and a burst still commits as one batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from stalwart import faults
from stalwart.errors import StoreError
from stalwart.store.base import Store, WriteOp, WriteOutcome

logger = logging.getLogger("stalwart.runtime")


LEAD_AT = 64
"""Queued operations at which a submitter sends them itself (``concurrent_writes``)."""
MAX_LEADING = 2
"""Batches sent by submitters that may be in flight at once, besides the commit task's."""


def _others_ready() -> bool:
    """Whether other callbacks wait to run in this event-loop turn (True when unknown).

    Reads the ready queue of asyncio's own event loops (``_ready``, unchanged since
    Python 3.4); on a loop without one, the leader always lets the turn finish first.
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return ready is None or len(ready) > 0


def _abandon(fut: asyncio.Future[WriteOutcome]) -> None:
    """The waiter's task was cancelled while committing: its own outcome is unwanted."""
    if fut.done() and not fut.cancelled():
        fut.exception()  # the StoreError told to the others: not an unretrieved error
    else:
        fut.cancel()  # still queued: committed later, nobody waits for it


class GroupCommitter:
    """Batches writes from concurrent workflows into shared transactions."""

    def __init__(self, store: Store, *, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[tuple[WriteOp, asyncio.Future[WriteOutcome]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._committing = False
        self._direct = bool(store.capabilities.extra.get("concurrent_writes"))
        self._direct_busy = False
        self._leading = 0
        self._solo = False
        self.batches = 0
        self.ops = 0

    @property
    def pending(self) -> bool:
        """Whether operations are queued or a batch is being committed."""
        return (
            bool(self._queue)
            or self._committing
            or self._direct_busy
            or self._leading > 0
            or self._solo
        )

    def start(self) -> None:
        """Start the background commit task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, op: WriteOp) -> WriteOutcome:
        """Queue one operation and wait until it is durably committed (or refused)."""
        if self._task is None or self._closed:
            return (await self._store.write([op]))[0]
        if self._direct and not self._direct_busy and not self._queue:
            return await self._commit_direct(op)
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        if self._direct and len(self._queue) >= LEAD_AT and self._leading < MAX_LEADING:
            # A burst (a wave of workflows resumed by the last commit) is still running
            # on the loop: send what it queued so far now, from this task, so that the
            # database works on it while the loop prepares the rest.
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            if self._queue:  # longer than a batch: the rest is the commit task's
                self._wakeup.set()
            self._leading += 1
            try:
                await self._commit_batch(batch)
            except asyncio.CancelledError:
                _abandon(fut)
                raise
            finally:
                self._leading -= 1
        elif not self._direct and len(self._queue) == 1 and not self._committing and not self._solo:
            try:
                await self._lead()
            except asyncio.CancelledError:
                _abandon(fut)
                raise
        elif not self._solo:
            self._wakeup.set()
        return await fut

    async def _lead(self) -> None:
        """Commit the queue from this task, once the rest of this loop turn joined it."""
        self._solo = True
        try:
            if _others_ready():
                await asyncio.sleep(0)  # they run first, and queue behind this write
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            await self._commit_batch(batch)
        finally:
            self._solo = False
            if self._queue or self._closed:
                self._wakeup.set()  # queued meanwhile (or closing): the commit task's turn

    async def _commit_direct(self, op: WriteOp) -> WriteOutcome:
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._direct_busy = True
        try:
            await self._commit_batch([(op, fut)])
        except asyncio.CancelledError:
            _abandon(fut)
            raise
        finally:
            self._direct_busy = False
        return fut.result()

    async def submit_many(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Queue several operations (committed in the same or consecutive batches)."""
        if self._task is None or self._closed:
            return await self._store.write(ops)
        loop = asyncio.get_running_loop()
        futures = []
        for op in ops:
            fut: asyncio.Future[WriteOutcome] = loop.create_future()
            self._queue.append((op, fut))
            futures.append(fut)
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            if not self._queue or self._solo:
                if self._closed and not self._queue and not self._solo:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            self._committing = True
            try:
                await self._commit_batch(batch)
            finally:
                self._committing = False

    async def _commit_batch(
        self, batch: list[tuple[WriteOp, asyncio.Future[WriteOutcome]]]
    ) -> None:
        """Commit ``batch`` as one write and resolve each waiter with its own outcome."""
        try:
            faults.point("commit.before")
            outcomes = await self._store.write([op for op, _ in batch])
            faults.point("commit.after")
        except asyncio.CancelledError:
            # The task committing for others was cancelled while the store worked: the
            # write may or may not have landed, which is what a StoreError tells them.
            interrupted = StoreError("the commit was interrupted; its outcome is unknown")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(interrupted)
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter receives the failure
            logger.warning("group commit of %d operation(s) failed: %s", len(batch), exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.ops += len(batch)
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            if not fut.done():
                fut.set_result(outcome)
