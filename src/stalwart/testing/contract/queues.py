"""Store contract: task queues, queue flow control and deduplication keys."""

from __future__ import annotations

from stalwart.store.base import (
    TASK_MESSAGE,
    CompleteTask,
    CreateInstance,
    EnqueueTask,
    QueueLimits,
    Store,
)
from stalwart.testing.contract._support import (
    WF,
    FakeClock,
    _create,
    _create_op,
    _get,
    _register,
    _running,
    _write1,
)


def _task(
    task_id: str,
    *,
    queue: str = "q",
    priority: int = 0,
    not_before: float = 0.0,
    instance: str = "i1",
) -> EnqueueTask:
    return EnqueueTask(
        task_id,
        queue,
        instance,
        f"run-{instance}",
        3,
        1,
        "charge",
        [1, "x"],
        {"retry": {}},
        priority,
        not_before,
    )


class QueuesContract:
    """Task queues, queue flow control and deduplication keys."""

    async def test_enqueue_claim_and_complete(self, store: Store, clock: FakeClock) -> None:
        """A claimed task is running for its owner; completing it informs the instance."""
        await _running(store, clock, "i1")
        await _register(store, clock, "tw")
        assert (await _write1(store, _task("t1"))).ok
        assert (await _write1(store, _task("t1"))).ok  # idempotent
        (task,) = await store.claim_tasks("tw", {"q": QueueLimits()}, {"q": 10})
        assert (task.id, task.status, task.owner, task.input) == ("t1", "running", "tw", [1, "x"])
        assert await store.claim_tasks("tw", {"q": QueueLimits()}, {"q": 10}) == []
        outcome = {"type": "ActivityCompleted", "cmd": 3, "result": "ok", "attempt": 1}
        assert (await _write1(store, CompleteTask("t1", "other", outcome))).error == "conflict"
        t = clock.advance(1.0)
        assert (await _write1(store, CompleteTask("t1", "tw", outcome))).ok
        assert (await _write1(store, CompleteTask("t1", "tw", outcome))).error == "conflict"
        (msg,) = await store.fetch_inbox("i1")
        assert (msg.kind, msg.payload) == (TASK_MESSAGE, outcome)
        assert (await _get(store, "i1")).wake_at == t
        assert await store.queue_stats("q") == {"ready": 0, "running": 0, "done": 1}

    async def test_lost_claim_reply_is_handed_back_to_its_owner(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A claim whose reply was lost is returned again to the same live worker (which
        says what it holds), never to another one, and not when the owner holds it."""
        await _register(store, clock, "tw")
        await _register(store, clock, "other")
        for op in (_task("t1"), _task("t2"), _task("elsewhere", queue="other")):
            assert (await _write1(store, op)).ok
        limits = {"q": QueueLimits(concurrency=2), "other": QueueLimits()}
        claimed = await store.claim_tasks("tw", limits, {"q": 5, "other": 5})
        assert sorted(t.id for t in claimed) == ["elsewhere", "t1", "t2"]
        # The worker got the reply for t1 only (and serves only "q" now).
        again = await store.claim_tasks("tw", limits, {"q": 5}, held={"t1"})
        assert [(t.id, t.status, t.owner) for t in again] == [("t2", "running", "tw")]
        assert await store.claim_tasks("tw", limits, {"q": 5}, held={"t1", "t2"}) == []
        assert await store.claim_tasks("other", limits, {"q": 5}, held=set()) == []
        assert await store.queue_stats("q") == {"ready": 0, "running": 2, "done": 0}

    async def test_not_before_priority_and_other_queues(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Tasks wait for not_before; higher priority first; only the asked queues."""
        await _register(store, clock, "tw")
        now = clock()
        for op in (
            _task("late", not_before=now + 10),
            _task("low"),
            _task("high", priority=5),
            _task("elsewhere", queue="other"),
        ):
            assert (await _write1(store, op)).ok
        claimed = await store.claim_tasks("tw", {"q": QueueLimits()}, {"q": 1})
        assert [t.id for t in claimed] == ["high"]
        claimed = await store.claim_tasks("tw", {"q": QueueLimits()}, {"q": 5})
        assert [t.id for t in claimed] == ["low"]
        clock.advance(10.0)
        claimed = await store.claim_tasks("tw", {"q": QueueLimits()}, {"q": 5})
        assert [t.id for t in claimed] == ["late"]

    async def test_global_concurrency_and_rate_limits(self, store: Store, clock: FakeClock) -> None:
        """Limits hold across workers: running tasks count, and recent starts count."""
        await _register(store, clock, "a")
        await _register(store, clock, "b")
        for i in range(6):
            assert (await _write1(store, _task(f"t{i}"))).ok
        limits = {"q": QueueLimits(concurrency=2)}
        assert len(await store.claim_tasks("a", limits, {"q": 5})) == 2
        assert await store.claim_tasks("b", limits, {"q": 5}) == []
        rated = {"q": QueueLimits(rate_limit=3, rate_period=10.0)}
        assert len(await store.claim_tasks("b", rated, {"q": 5})) == 1  # 2 started already
        clock.advance(11.0)
        assert len(await store.claim_tasks("b", rated, {"q": 5})) == 3

    async def test_task_of_expired_worker_is_reclaimed(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A running task whose owner's lease expired can be claimed by another worker."""
        await _register(store, clock, "a", ttl=5.0)
        await _register(store, clock, "b")
        assert (await _write1(store, _task("t1"))).ok
        assert len(await store.claim_tasks("a", {"q": QueueLimits()}, {"q": 1})) == 1
        assert await store.claim_tasks("b", {"q": QueueLimits()}, {"q": 1}) == []
        clock.advance(6.0)
        (task,) = await store.claim_tasks("b", {"q": QueueLimits()}, {"q": 1})
        assert task.owner == "b"
        outcome = {"type": "ActivityFailed", "cmd": 3, "attempts": 1, "error": {}}
        assert (await _write1(store, CompleteTask("t1", "a", outcome))).error == "conflict"

    async def test_queued_instances_start_within_limits(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Instances on a queue are claimed the first time only within its limits."""
        for i in range(3):
            op = _create_op(f"w{i}")
            op = CreateInstance(
                op.id,
                op.name,
                op.version,
                op.run_id,
                op.input,
                op.started,
                queue="bulk",
                priority=i,
            )
            assert (await _write1(store, op)).created
        await _register(store, clock, "a")
        await _register(store, clock, "b")
        clock.advance(1.0)
        limits = {"bulk": QueueLimits(concurrency=1)}
        claims = await store.claim("a", [WF], queues=limits)
        assert [c.instance_id for c in claims] == ["w2"]  # the highest priority
        assert await store.claim("b", [WF], queues=limits) == []
        assert (await _get(store, "w2")).started_at is not None

    async def test_dedup_key(self, store: Store, clock: FakeClock) -> None:
        """A second active instance with the same dedup key is refused."""
        first = _create_op("d1")
        keyed = CreateInstance(
            first.id,
            first.name,
            first.version,
            first.run_id,
            first.input,
            first.started,
            dedup_key="k",
        )
        assert (await _write1(store, keyed)).created
        second = _create_op("d2")
        dup = CreateInstance(
            second.id,
            second.name,
            second.version,
            second.run_id,
            second.input,
            second.started,
            dedup_key="k",
        )
        outcome = await _write1(store, dup)
        assert (outcome.ok, outcome.error) == (False, "duplicate")
        assert outcome.record is not None and outcome.record.id == "d1"
        assert await store.get_instance("d2") is None
        await _create(store, "d3")

    async def test_instances_off_queues_are_claimed_when_limits_are_given(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Passing queue limits never hides instances that are on no queue."""
        await _create(store, "plain")
        await _register(store, clock, "a")
        clock.advance(1.0)
        claims = await store.claim("a", [WF], queues={"bulk": QueueLimits(concurrency=1)})
        assert [c.instance_id for c in claims] == ["plain"]

    async def test_deregistered_worker_hands_its_tasks_back(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A worker that deregisters with tasks running makes them ready again."""
        await _register(store, clock, "a")
        await _register(store, clock, "b")
        assert (await _write1(store, _task("t1"))).ok
        assert len(await store.claim_tasks("a", {"q": QueueLimits()}, {"q": 1})) == 1
        await store.deregister_worker("a")
        (task,) = await store.claim_tasks("b", {"q": QueueLimits(concurrency=1)}, {"q": 1})
        assert (task.id, task.owner) == ("t1", "b")
