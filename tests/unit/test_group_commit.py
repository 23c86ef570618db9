"""Group commit: concurrent writes share transactions; nobody resumes before durability."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from stalwart.errors import StoreError
from stalwart.runtime.committer import LEAD_AT, MAX_LEADING, GroupCommitter
from stalwart.store.base import SendMessage, StoreCapabilities, WriteOp, WriteOutcome


class SlowStore:
    """Records batches; a write is 'durable' only when its commit returns."""

    def __init__(self, *, concurrent_writes: bool = False) -> None:
        self.capabilities = StoreCapabilities(
            durable=True, multi_process=False, extra={"concurrent_writes": concurrent_writes}
        )
        self.batches: list[int] = []
        self.committed = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # the fsync
        finally:
            self.in_flight -= 1
        self.batches.append(len(ops))
        self.committed += len(ops)
        return [WriteOutcome(True, message_id=i) for i, _ in enumerate(ops)]


async def _concurrent_writers(
    committer: GroupCommitter, store: SlowStore, n: int
) -> list[tuple[int, int]]:
    """``n`` writers submitting at once; for each, the store's committed count when it
    submitted and when it resumed."""
    seen: list[tuple[int, int]] = []

    async def writer(i: int) -> None:
        before = store.committed
        assert (await committer.submit(SendMessage(f"i{i}", "signal", "s"))).ok
        seen.append((before, store.committed))

    await asyncio.gather(*(writer(i) for i in range(n)))
    return seen


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


async def test_a_lone_write_commits_from_its_task_where_writes_run_side_by_side() -> None:
    """With ``concurrent_writes`` a write submitted with nothing queued commits from the
    submitting task (no trip through the commit task); writes submitted meanwhile still
    share transactions, and every waiter resumes only once its own write committed."""
    store = SlowStore(concurrent_writes=True)
    committer = GroupCommitter(store, max_batch=64)  # type: ignore[arg-type]
    committer.start()
    assert committer._task is not None
    outcome = await committer.submit(SendMessage("lone", "signal", "s"))
    assert outcome.ok and store.batches == [1] and committer.batches == 1
    assert not committer.pending

    seen = await _concurrent_writers(committer, store, 200)
    await committer.close()
    assert sum(store.batches) == 201
    assert store.batches[1] == 1  # the first of the burst went alone...
    assert len(store.batches) < 20  # ...the others shared transactions beside it
    assert all(after > before for before, after in seen)


async def test_a_burst_is_sent_in_chunks_while_it_is_still_being_queued() -> None:
    """With ``concurrent_writes``, once ``LEAD_AT`` operations are queued the submitter
    sends them itself, so the database works on them while the rest of the burst is
    prepared: several writes are in flight at once, none larger than a batch, and still
    nobody resumes before its own write committed."""
    store = SlowStore(concurrent_writes=True)
    committer = GroupCommitter(store, max_batch=512)  # type: ignore[arg-type]
    committer.start()
    seen = await _concurrent_writers(committer, store, 400)
    await committer.close()
    assert sum(store.batches) == 400
    assert store.max_in_flight >= 3  # the lone write, and chunks sent mid-burst
    assert store.max_in_flight <= 2 + MAX_LEADING  # lone write + commit task + leaders
    assert max(store.batches) <= 512 and store.batches.count(LEAD_AT) >= 2
    assert all(after > before for before, after in seen)


async def test_a_leader_sends_at_most_a_batch_and_the_rest_still_commits() -> None:
    store = SlowStore(concurrent_writes=True)
    committer = GroupCommitter(store, max_batch=8)  # type: ignore[arg-type]
    committer.start()
    results = await asyncio.wait_for(
        asyncio.gather(
            *(committer.submit(SendMessage(f"i{i}", "signal", "s")) for i in range(300))
        ),
        timeout=30,
    )
    await committer.close()
    assert all(r.ok for r in results) and sum(store.batches) == 300
    assert max(store.batches) <= 8


async def test_a_failed_lone_write_reaches_its_waiter() -> None:
    store = FailingStore()
    store.capabilities = StoreCapabilities(True, False, {"concurrent_writes": True})
    committer = GroupCommitter(store)  # type: ignore[arg-type]
    committer.start()
    with pytest.raises(OSError, match="disk full"):
        await committer.submit(SendMessage("x", "signal", "s"))
    assert not committer.pending
    await committer.close()


class TaskRecordingStore(SlowStore):
    """A store without ``concurrent_writes`` that notes which task called ``write``."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[asyncio.Task[object] | None] = []

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        self.writers.append(asyncio.current_task())
        return await super().write(ops)


async def test_a_lone_write_with_nothing_else_ready_commits_from_its_task() -> None:
    """Without ``concurrent_writes`` a write to an idle committer, with nothing else
    ready to run, commits from the submitting task (no trip through the commit task)."""
    store = TaskRecordingStore()
    committer = GroupCommitter(store)  # type: ignore[arg-type]
    committer.start()
    await asyncio.sleep(0)  # the commit task is parked on its wake-up
    submitter = asyncio.get_running_loop().create_task(
        committer.submit(SendMessage("lone", "signal", "s"))
    )
    assert (await submitter).ok
    assert store.writers == [submitter] and store.batches == [1]
    assert not committer.pending
    await committer.close()


async def test_writes_ready_in_the_same_turn_join_the_leaders_batch() -> None:
    """The leader lets the rest of the event-loop turn run first: a wave of writers
    resumed together commits as one transaction, each resuming only after it."""
    store = TaskRecordingStore()
    committer = GroupCommitter(store, max_batch=512)  # type: ignore[arg-type]
    committer.start()
    seen = await _concurrent_writers(committer, store, 50)
    assert store.batches == [50]
    assert store.writers[0] is not committer._task  # the first writer led
    assert all(after > before for before, after in seen)
    await committer.close()


async def test_a_cancelled_leader_fails_the_writes_it_carried_and_others_go_on() -> None:
    """Cancelling the task that commits for others must not strand them: they get a
    StoreError (the write may or may not have landed) and later writes still commit."""
    store = TaskRecordingStore()
    committer = GroupCommitter(store)  # type: ignore[arg-type]
    committer.start()
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(committer.submit(SendMessage(f"i{i}", "signal", "s"))) for i in range(5)
    ]
    while not store.in_flight:
        await asyncio.sleep(0)
    assert store.writers == [tasks[0]]  # the first submitter leads the batch of five
    tasks[0].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, StoreError) for r in results[1:]), results
    assert (await asyncio.wait_for(committer.submit(SendMessage("later", "signal", "s")), 5)).ok
    await asyncio.wait_for(committer.close(), timeout=5)


class FailingStore:
    capabilities = StoreCapabilities(durable=True, multi_process=False)

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


async def test_concurrent_workflows_share_transactions_on_sqlite(tmp_path: object) -> None:
    """End to end on SQLite, whose lone commits run on the event loop: concurrent
    workflows' steps still go into shared transactions (a fast path that let each
    submitter commit alone once cut fanout throughput threefold; this catches it)."""
    from pathlib import Path

    from stalwart import Engine, WorkflowContext, activity, workflow

    @activity(name="gc_step")
    async def gc_step(i: int) -> int:
        return i

    @workflow(name="gc_chain")
    async def gc_chain(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await gc_step(i)
        return total

    assert isinstance(tmp_path, Path)
    url = f"sqlite:///{tmp_path / 'gc.db'}"
    async with Engine(url, workflows=[gc_chain], activities=[gc_step]) as engine:
        handles = await asyncio.gather(*(gc_chain.start(engine, 3) for _ in range(200)))
        assert await asyncio.gather(*(h.result(timeout=60) for h in handles)) == [3] * 200
        ops, batches = engine.committer.ops, engine.committer.batches
    assert ops >= 800  # a start and four steps' writes per workflow
    assert ops / batches >= 5, (ops, batches)
