"""Store contract: creating instances and committing steps."""

from __future__ import annotations

import dataclasses

import pytest

from stalwart._engine.events import (
    ActivityCompleted,
    ActivityScheduled,
    HistoryEvent,
    SignalReceived,
    TimerFired,
    TimerStarted,
    WorkflowCompleted,
)
from stalwart.store.base import (
    TERMINAL_STATUSES,
    AppendEvents,
    InstanceRecord,
    ListFilter,
    Store,
    StoreCapabilities,
    Suspend,
)
from stalwart.testing.contract._support import (
    LONG_TTL,
    OTHER,
    WF,
    FakeClock,
    _create,
    _create_op,
    _end,
    _get,
    _register,
    _running,
    _send,
    _started,
    _state,
    _write1,
)


class WritesContract:
    """Creating instances and committing steps."""

    # -- basics ------------------------------------------------------------------------
    async def test_capabilities_are_declared_as_data(self, store: Store) -> None:
        """``capabilities`` is a StoreCapabilities of booleans."""
        caps = store.capabilities
        assert isinstance(caps, StoreCapabilities)
        assert isinstance(caps.durable, bool)
        assert isinstance(caps.multi_process, bool)
        assert all(isinstance(k, str) and isinstance(v, bool) for k, v in caps.extra.items())

    async def test_store_reads_time_from_the_given_clock(
        self, store: Store, clock: FakeClock
    ) -> None:
        """``now()`` and every timestamp the store writes come from its clock."""
        assert store.now() == clock()
        clock.advance(12.5)
        assert store.now() == clock()
        rec = await _create(store, "i1")
        assert rec.created_at == rec.updated_at == clock()

    async def test_empty_batch_gives_no_outcomes(self, store: Store) -> None:
        """Writing no operations is allowed and returns an empty list."""
        assert await store.write([]) == []

    async def test_reads_of_unknown_instances_are_empty(self, store: Store) -> None:
        """Unknown ids read as ``None`` / empty lists, never as errors."""
        assert await store.get_instance("nope") is None
        assert await store.load_history("nope", "run-nope") == []
        assert await store.fetch_inbox("nope") == []

    # -- CreateInstance ----------------------------------------------------------------
    async def test_create_unowned_instance(self, store: Store, clock: FakeClock) -> None:
        """A new unowned instance is pending, due now, with WorkflowStarted at seq 0."""
        op = _create_op("i1", input=[{"sku": "A-1", "qty": 2}], version=4)
        outcome = await _write1(store, op)
        now = clock()
        assert outcome.ok and outcome.error is None and outcome.created
        expected = InstanceRecord(
            id="i1",
            name=WF,
            version=4,
            status="pending",
            run_id="run-i1",
            input=[{"sku": "A-1", "qty": 2}],
            output=None,
            error=None,
            created_at=now,
            updated_at=now,
            owner=None,
            epoch=1,
            wake_at=now,
            history_len=1,
            current_step=None,
            parent_id=None,
        )
        assert outcome.record == expected
        assert await store.get_instance("i1") == expected
        assert await store.load_history("i1", "run-i1") == [HistoryEvent(0, now, op.started)]
        assert await store.fetch_inbox("i1") == []

    async def test_the_record_a_create_returns_is_the_stored_row(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Every field of the record a create returns (queue, priority, dedup key and a
        forked history prefix included) is what a read of the new row returns."""
        base = _create_op("i1", input=[{"n": [1, 2.5, None, "x"]}, True], owner="w1", epoch=3)
        t0 = clock()
        op = dataclasses.replace(
            base,
            parent_id="p-1",
            queue="q",
            priority=5,
            dedup_key="order-7",
            prefix=[(t0, ActivityCompleted(cmd=0, result=1))],
        )
        outcome = await _write1(store, op)
        assert outcome.ok and outcome.created
        assert outcome.record == await store.get_instance("i1")
        assert outcome.record is not None and outcome.record.history_len == 2

    async def test_create_owned_instance(self, store: Store, clock: FakeClock) -> None:
        """An instance created owned keeps the owner and epoch given, and is not due."""
        await _register(store, clock, "w1")
        rec = await _create(store, "child", owner="w1", epoch=7, parent_id="parent-1")
        assert (rec.status, rec.owner, rec.epoch, rec.wake_at) == ("pending", "w1", 7, None)
        assert rec.parent_id == "parent-1"
        assert rec.history_len == 1
        assert await store.get_instance("child") == rec
        assert await store.claim("w2", [WF]) == []
        assert await store.next_wake([WF]) is None

    async def test_recreating_an_ended_child_tells_the_parent_its_outcome(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A parent that starts a child it already started (same id and input) after that
        child ended gets the child's outcome again: nothing else would ever send it."""
        parent = await _running(store, clock, "parent-1")
        child = await _create(store, "child", owner="w1", parent_id="parent-1")
        await _end(store, child, "completed")
        before = len(await store.fetch_inbox("parent-1"))
        outcome = await _write1(store, _create_op("child", owner="w1", parent_id="parent-1"))
        assert outcome.ok and outcome.created is False
        inbox = await store.fetch_inbox("parent-1")
        assert len(inbox) == before + 1
        assert (inbox[-1].kind, inbox[-1].name) == ("child", "child")
        assert inbox[-1].payload["status"] == "completed"
        assert (await _get(store, "parent-1")).wake_at is not None
        assert parent.status == "running"

    async def test_create_is_idempotent(self, store: Store, clock: FakeClock) -> None:
        """Creating an existing id returns the stored record (created=False), changes nothing."""
        first = await _create(store, "i1", input=["original"])
        before = await _state(store, "i1")
        clock.advance(5.0)
        again = _create_op(
            "i1", name=OTHER, version=9, run_id="run-other", input=["changed"], owner="w9"
        )
        outcome = await _write1(store, again)
        assert outcome.ok and outcome.error is None
        assert outcome.created is False
        assert outcome.record == first
        assert await _state(store, "i1") == before
        assert await store.load_history("i1", "run-other") == []

    async def test_create_twice_in_one_batch(self, store: Store, clock: FakeClock) -> None:
        """The second create of an id in the same batch sees the first one."""
        op = _create_op("i1")
        first, second = await store.write([op, _create_op("i1", input=["other"])])
        assert first.ok and first.created
        assert second.ok and not second.created
        assert second.record == first.record == await store.get_instance("i1")
        assert len(await store.load_history("i1", "run-i1")) == 1

    async def test_create_round_trips_unicode_and_nested_input(self, store: Store) -> None:
        """Ids, names and nested JSON input survive storage exactly."""
        data = [{"名前": "Zoë 🚀", "list": [1, 2.5, None, True, {"x": []}]}, "", 2**53 + 1]
        rec = await _create(store, "订单-ü", name="工作流", input=data, run_id="运行-1")
        stored = await _get(store, "订单-ü")
        assert stored == rec
        assert stored.name == "工作流"
        assert repr(stored.input) == repr(data)
        (started,) = await store.load_history("订单-ü", "运行-1")
        assert repr(started.event) == repr(_started("运行-1", name="工作流", input=data))

    # -- AppendEvents ------------------------------------------------------------------
    async def test_append_commits_events_with_consecutive_seq(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Events get seq history_len, history_len+1, ...; the record follows the op."""
        await _register(store, clock, "w1")
        await _create(store, "i1", owner="w1")
        t1 = clock.advance(1.0)
        batch1 = [
            (t1, ActivityScheduled(cmd=0, name="a", input=[], options={})),
            (t1 + 0.25, ActivityCompleted(cmd=0, result=1)),
        ]
        out = await _write1(
            store,
            AppendEvents("i1", "w1", 1, 1, batch1, wake_at=t1 + 60.0, current_step="a"),
        )
        assert out.ok and out.error is None
        rec = await _get(store, "i1")
        assert (rec.status, rec.owner, rec.epoch) == ("running", "w1", 1)
        assert (rec.history_len, rec.wake_at, rec.updated_at) == (3, t1 + 60.0, t1)
        assert rec.current_step == "a"
        t2 = clock.advance(2.0)
        batch2 = [(t2, TimerStarted(cmd=1, fire_at=t2 + 5.0))]
        out = await _write1(store, AppendEvents("i1", "w1", 1, 3, batch2, wake_at=t2 + 5.0))
        assert out.ok
        rec = await _get(store, "i1")
        assert (rec.history_len, rec.wake_at, rec.updated_at) == (4, t2 + 5.0, t2)
        assert rec.current_step is None
        history = await store.load_history("i1", "run-i1")
        assert [h.seq for h in history] == [0, 1, 2, 3]
        assert [(h.time, h.event) for h in history[1:]] == [*batch1, *batch2]

    async def test_first_append_moves_pending_to_running(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Any accepted AppendEvents (even without events) makes a pending instance running."""
        await _register(store, clock, "w1")
        await _create(store, "i1", owner="w1")
        out = await _write1(store, AppendEvents("i1", "w1", 1, 1))
        assert out.ok
        rec = await _get(store, "i1")
        assert (rec.status, rec.history_len, rec.owner, rec.wake_at) == ("running", 1, "w1", None)

    @pytest.mark.parametrize(
        "mismatch", ["other_owner", "old_epoch", "newer_epoch", "stale_seq", "future_seq"]
    )
    async def test_append_refused_on_cas_mismatch(
        self, store: Store, clock: FakeClock, mismatch: str
    ) -> None:
        """Wrong owner, epoch or expected_seq: ok=False, "conflict", nothing written."""
        rec = await _running(store, clock, "i1")
        await _send(store, "i1")
        before = await _state(store, "i1")
        clock.advance(3.0)
        owner, epoch, seq = "w1", rec.epoch, rec.history_len
        if mismatch == "other_owner":
            owner = "w2"
        elif mismatch == "old_epoch":
            epoch -= 1
        elif mismatch == "newer_epoch":
            epoch += 1
        elif mismatch == "stale_seq":
            seq -= 1
        else:
            seq += 1
        msg_id = before[2][0].id
        op = AppendEvents(
            "i1",
            owner,
            epoch,
            seq,
            [(clock(), TimerFired(cmd=0))],
            status="completed",
            output="x",
            wake_at=clock(),
            release=True,
            inbox_upto=msg_id,
            current_step="step",
        )
        outcome = await _write1(store, op)
        assert (outcome.ok, outcome.error) == (False, "conflict")
        assert await _state(store, "i1") == before

    @pytest.mark.parametrize("status", ["suspended", *TERMINAL_STATUSES])
    async def test_append_refused_unless_active(
        self, store: Store, clock: FakeClock, status: str
    ) -> None:
        """An instance that is suspended or ended accepts no AppendEvents (conflict)."""
        rec = await _running(store, clock, "i1")
        if status == "suspended":
            assert (await _write1(store, Suspend("i1", "w1", rec.epoch, {"type": "X"}))).ok
        else:
            await _end(store, rec, status)
        now = await _get(store, "i1")
        before = await _state(store, "i1")
        clock.advance(1.0)
        for owner, epoch in {("w1", rec.epoch), (now.owner or "w1", now.epoch)}:
            outcome = await _write1(
                store,
                AppendEvents("i1", owner, epoch, now.history_len, [(clock(), TimerFired(cmd=0))]),
            )
            assert (outcome.ok, outcome.error) == (False, "conflict")
        assert await _state(store, "i1") == before

    async def test_append_to_unknown_instance_is_refused(self, store: Store) -> None:
        """AppendEvents for an unknown id is refused and creates nothing."""
        outcome = await _write1(
            store, AppendEvents("ghost", "w1", 1, 1, [(store.now(), TimerFired(cmd=0))])
        )
        assert outcome.ok is False
        assert outcome.error in ("conflict", "not_found")
        assert await _state(store, "ghost") == (None, [], [])
        assert (await store.list_instances(ListFilter())).items == []

    @pytest.mark.parametrize("status", TERMINAL_STATUSES)
    async def test_terminal_status_records_result_and_releases(
        self, store: Store, clock: FakeClock, status: str
    ) -> None:
        """A terminal status sets output and error, clears owner and wake_at."""
        rec = await _running(store, clock, "i1")
        await _send(store, "i1")  # an unacknowledged message does not keep it due
        t = clock.advance(1.0)
        output = {"total": 12.5, "items": ["ü"]} if status == "completed" else None
        error = None if status == "completed" else {"type": "Boom", "message": "no ✗"}
        final = WorkflowCompleted(result=output) if status == "completed" else TimerFired(cmd=9)
        outcome = await _write1(
            store,
            AppendEvents(
                "i1",
                "w1",
                rec.epoch,
                rec.history_len,
                [(t, final)],
                status=status,
                output=output,
                error=error,
                wake_at=t + 10.0,
                current_step="last",
            ),
        )
        assert outcome.ok and outcome.error is None
        ended = await _get(store, "i1")
        assert ended.status == status
        assert ended.output == output
        assert ended.error == error
        assert (ended.owner, ended.wake_at) == (None, None)
        assert (ended.history_len, ended.updated_at) == (rec.history_len + 1, t)
        history = await store.load_history("i1", rec.run_id)
        assert history[-1] == HistoryEvent(rec.history_len, t, final)
        clock.advance(100.0)
        assert await store.claim("w1", [WF]) == []
        assert await store.claim("w2", [WF]) == []
        assert await store.next_wake([WF]) is None

    async def test_release_clears_owner_and_keeps_wake_at(
        self, store: Store, clock: FakeClock
    ) -> None:
        """release=True hands the instance back unowned, due at the op's wake_at."""
        rec = await _running(store, clock, "i1")
        t = clock()
        out = await _write1(
            store,
            AppendEvents("i1", "w1", rec.epoch, rec.history_len, wake_at=t + 30.0, release=True),
        )
        assert out.ok
        released = await _get(store, "i1")
        assert (released.status, released.owner) == ("running", None)
        assert (released.epoch, released.wake_at) == (rec.epoch, t + 30.0)
        assert await store.next_wake([WF]) == t + 30.0
        await _register(store, clock, "w2")
        assert await store.claim("w2", [WF]) == []
        clock.advance(30.0)
        (claim,) = await store.claim("w2", [WF])
        assert (claim.instance_id, claim.epoch, claim.newly_claimed) == ("i1", rec.epoch + 1, True)
        stale = await _write1(store, AppendEvents("i1", "w1", rec.epoch, rec.history_len))
        assert (stale.ok, stale.error) == (False, "conflict")

    async def test_released_instance_without_wake_at_is_never_due(
        self, store: Store, clock: FakeClock
    ) -> None:
        """An unowned instance with wake_at None waits for a message; nothing claims it."""
        rec = await _running(store, clock, "i1")
        out = await _write1(
            store, AppendEvents("i1", "w1", rec.epoch, rec.history_len, release=True)
        )
        assert out.ok
        released = await _get(store, "i1")
        assert (released.owner, released.wake_at) == (None, None)
        clock.advance(10 * LONG_TTL)
        await _register(store, clock, "w2")
        assert await store.claim("w2", [WF]) == []
        assert await store.next_wake([WF]) is None
        await _send(store, "i1")
        assert [c.instance_id for c in await store.claim("w2", [WF])] == ["i1"]

    async def test_inbox_upto_acknowledges_messages(self, store: Store, clock: FakeClock) -> None:
        """Messages up to inbox_upto are deleted; unacked ones keep the instance due now."""
        rec = await _running(store, clock, "i1")
        ids = [await _send(store, "i1", f"s{i}", i) for i in range(3)]
        t = clock.advance(1.0)
        out = await _write1(
            store,
            AppendEvents(
                "i1",
                "w1",
                rec.epoch,
                rec.history_len,
                [(t, SignalReceived("s0", 0)), (t, SignalReceived("s1", 1))],
                wake_at=t + 500.0,
                inbox_upto=ids[1],
            ),
        )
        assert out.ok
        assert [m.id for m in await store.fetch_inbox("i1")] == [ids[2]]
        mid = await _get(store, "i1")
        assert (mid.wake_at, mid.owner) == (t, "w1")
        t = clock.advance(1.0)
        out = await _write1(
            store,
            AppendEvents(
                "i1",
                "w1",
                rec.epoch,
                rec.history_len + 2,
                [(t, SignalReceived("s2", 2))],
                wake_at=t + 500.0,
                inbox_upto=ids[2],
            ),
        )
        assert out.ok
        assert await store.fetch_inbox("i1") == []
        assert (await _get(store, "i1")).wake_at == t + 500.0

    async def test_unacked_inbox_makes_released_instance_due_now(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A release with messages still unacknowledged leaves the instance due now."""
        rec = await _running(store, clock, "i1")
        await _send(store, "i1")
        t = clock.advance(2.0)
        out = await _write1(
            store,
            AppendEvents("i1", "w1", rec.epoch, rec.history_len, wake_at=t + 900.0, release=True),
        )
        assert out.ok
        released = await _get(store, "i1")
        assert (released.owner, released.wake_at) == (None, t)
        await _register(store, clock, "w2")
        (claim,) = await store.claim("w2", [WF])
        assert (claim.instance_id, claim.newly_claimed) == ("i1", True)
