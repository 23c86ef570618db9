"""Group commit: concurrent writes share one transaction, each waiter resumes when durable.

Writers call :meth:`GroupCommitter.submit`; a single background task takes everything
queued, hands it to :meth:`Store.write` as one batch (one transaction, one fsync), and
resolves each waiter with its own outcome only after the commit returned. There is no
artificial delay: while one batch commits, the next one accumulates.

On a store whose writes wait on the network without holding the event loop and may run
side by side on separate connections (capability ``concurrent_writes``: PostgreSQL), a
write submitted with nothing queued commits from the submitting task instead, one at a
time: a sequential workflow then skips two event-loop turns per step, and whatever is
submitted meanwhile queues and commits as a batch next to it. Not on SQLite: its lone
commits run on the event loop, so every write of a burst would find the committer idle
and commit alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from stalwart import faults
from stalwart.store.base import Store, WriteOp, WriteOutcome

logger = logging.getLogger("stalwart.runtime")


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
        self.batches = 0
        self.ops = 0

    @property
    def pending(self) -> bool:
        """Whether operations are queued or a batch is being committed."""
        return bool(self._queue) or self._committing or self._direct_busy

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
        self._wakeup.set()
        return await fut

    async def _commit_direct(self, op: WriteOp) -> WriteOutcome:
        self._direct_busy = True
        try:
            faults.point("commit.before")
            (outcome,) = await self._store.write([op])
            faults.point("commit.after")
        except Exception as exc:
            logger.warning("commit of 1 operation failed: %s", exc)
            raise
        finally:
            self._direct_busy = False
        self.batches += 1
        self.ops += 1
        return outcome

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
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            self._committing = True
            try:
                faults.point("commit.before")
                outcomes = await self._store.write([op for op, _ in batch])
                faults.point("commit.after")
            except Exception as exc:  # noqa: BLE001 - every waiter receives the failure
                logger.warning("group commit of %d operation(s) failed: %s", len(batch), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._committing = False
            self.batches += 1
            self.ops += len(batch)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)
