"""Group commit: concurrent writes share transactions; nobody resumes before durability."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from stalwart.runtime.committer import GroupCommitter
from stalwart.store.base import SendMessage, WriteOp, WriteOutcome


class SlowStore:
    """Records batches; a write is 'durable' only when its commit returns."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.committed = 0

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        await asyncio.sleep(0.01)  # the fsync
        self.batches.append(len(ops))
        self.committed += len(ops)
        return [WriteOutcome(True, message_id=i) for i, _ in enumerate(ops)]


async def test_concurrent_writes_are_batched_and_resume_after_commit() -> None:
    store = SlowStore()
    committer = GroupCommitter(store, max_batch=64)  # type: ignore[arg-type]
    committer.start()
    seen_committed: list[int] = []

    async def writer(i: int) -> None:
        outcome = await committer.submit(SendMessage(f"i{i}", "signal", "s"))
        assert outcome.ok
        seen_committed.append(store.committed)

    await asyncio.gather(*(writer(i) for i in range(200)))
    await committer.close()
    assert sum(store.batches) == 200
    assert len(store.batches) < 20  # many writes per transaction
    # Every waiter observed its own write already committed when it resumed.
    assert all(c >= 1 for c in seen_committed)
    assert sorted(seen_committed) == seen_committed


class FailingStore:
    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        raise OSError("disk full")


async def test_a_failed_commit_reaches_every_waiter() -> None:
    committer = GroupCommitter(FailingStore())  # type: ignore[arg-type]
    committer.start()
    results = await asyncio.gather(
        *(committer.submit(SendMessage("x", "signal", "s")) for _ in range(5)),
        return_exceptions=True,
    )
    await committer.close()
    assert all(isinstance(r, OSError) for r in results)
