"""Store contract: inbox messages, termination, suspension and batches."""

from __future__ import annotations

from typing import Any

import pytest

from stalwart._engine.events import (
    HistoryEvent,
    SignalReceived,
    TimerFired,
    WorkflowTerminated,
)
from stalwart.store.base import (
    TERMINAL_STATUSES,
    AppendEvents,
    CreateInstance,
    Reopen,
    Resume,
    SendMessage,
    Store,
    Suspend,
    Terminate,
    WriteOp,
)
from stalwart.testing.contract._support import (
    LONG_TTL,
    WF,
    FakeClock,
    _create,
    _create_op,
    _end,
    _get,
    _register,
    _running,
    _send,
    _state,
    _suspended,
    _write1,
)


class MessagesContract:
    """Inbox messages, termination, suspension and batches."""

    # -- SendMessage and the inbox -----------------------------------------------------
    async def test_send_to_unknown_instance_is_not_found(self, store: Store) -> None:
        """SendMessage to an unknown id: ok=False, "not_found", nothing created."""
        outcome = await _write1(store, SendMessage("ghost", "signal", "go", 1))
        assert (outcome.ok, outcome.error, outcome.message_id) == (False, "not_found", None)
        assert await _state(store, "ghost") == (None, [], [])

    @pytest.mark.parametrize("status", TERMINAL_STATUSES)
    async def test_send_to_ended_instance_is_closed(
        self, store: Store, clock: FakeClock, status: str
    ) -> None:
        """SendMessage to an ended instance: ok=False, "closed", nothing written."""
        await _end(store, await _running(store, clock, "i1"), status)
        before = await _state(store, "i1")
        clock.advance(1.0)
        for kind in ("signal", "cancel"):
            outcome = await _write1(store, SendMessage("i1", kind, "go", {"x": 1}))
            assert (outcome.ok, outcome.error, outcome.message_id) == (False, "closed", None)
            if outcome.record is not None:
                assert outcome.record.status == status
        assert await _state(store, "i1") == before

    async def test_send_appends_to_inbox_in_order_and_wakes(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Messages are stored as sent, with increasing ids; the instance becomes due now."""
        rec = await _running(store, clock, "i1")
        await _create(store, "i2")
        history = await store.load_history("i1", rec.run_id)
        sent: list[tuple[int, str, str, Any, float]] = []
        for i, (kind, name, payload) in enumerate(
            [
                ("signal", "approve", {"by": "Zoë", "n": [1, {"x": None}]}),
                ("cancel", "", "stop ✋"),
                ("signal", "approve", None),
                ("signal", "größe", [1.5, True, "ü"]),
            ]
        ):
            t = clock.advance(1.0)
            if i == 1:  # interleave a message to another instance
                await _send(store, "i2", "elsewhere")
            outcome = await _write1(store, SendMessage("i1", kind, name, payload))
            assert outcome.ok and outcome.error is None
            assert isinstance(outcome.message_id, int)
            sent.append((outcome.message_id, kind, name, payload, t))
            now = await _get(store, "i1")
            assert (now.wake_at, now.owner, now.epoch, now.status) == (t, "w1", 1, "running")
        inbox = await store.fetch_inbox("i1")
        assert [(m.id, m.kind, m.name, m.payload, m.time) for m in inbox] == sent
        assert [m.id for m in inbox] == sorted({m.id for m in inbox})
        assert await store.load_history("i1", rec.run_id) == history
        assert [m.name for m in await store.fetch_inbox("i2")] == ["elsewhere"]

    async def test_send_outcome_record_is_the_record_after_the_send(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A SendMessage outcome's record (if any) shows the instance after the send."""
        await _create(store, "i1")
        clock.advance(4.0)
        outcome = await _write1(store, SendMessage("i1", "signal", "go"))
        assert outcome.ok
        if outcome.record is not None:
            assert outcome.record == await store.get_instance("i1")
            assert outcome.record.wake_at == clock()

    async def test_fetch_inbox_after_id(self, store: Store, clock: FakeClock) -> None:
        """fetch_inbox returns messages with id > after_id, oldest first."""
        await _create(store, "i1")
        ids = [await _send(store, "i1", f"s{i}") for i in range(5)]
        for k, after in enumerate([0, *ids]):
            assert [m.id for m in await store.fetch_inbox("i1", after)] == ids[k:]
        assert [m.name for m in await store.fetch_inbox("i1", ids[2])] == ["s3", "s4"]

    async def test_message_ids_are_never_reused(self, store: Store, clock: FakeClock) -> None:
        """A message sent after an acknowledgement gets an id above the acknowledged ones."""
        rec = await _running(store, clock, "i1")
        first = await _send(store, "i1", "a")
        out = await _write1(
            store, AppendEvents("i1", "w1", rec.epoch, rec.history_len, inbox_upto=first)
        )
        assert out.ok
        assert await store.fetch_inbox("i1") == []
        second = await _send(store, "i1", "b")
        assert second > first
        assert [m.id for m in await store.fetch_inbox("i1", first)] == [second]

    async def test_send_to_suspended_instance_is_kept(self, store: Store, clock: FakeClock) -> None:
        """A suspended instance has not ended: messages are accepted and kept for later."""
        await _suspended(store, clock, "i1")
        msg = await _send(store, "i1", "later", {"k": 1})
        assert [m.id for m in await store.fetch_inbox("i1")] == [msg]
        assert (await _get(store, "i1")).status == "suspended"
        assert await store.claim("w1", [WF]) == []

    async def test_send_makes_owned_instance_due_for_its_owner(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A message wakes an owned instance; its owner's claim reports it, not re-claimed."""
        rec = await _running(store, clock, "i1")
        assert await store.claim("w1", [WF]) == []
        await _send(store, "i1")
        claims = await store.claim("w1", [WF])
        assert [(c.instance_id, c.epoch, c.newly_claimed) for c in claims] == [
            ("i1", rec.epoch, False)
        ]
        await _register(store, clock, "w2")
        assert await store.claim("w2", [WF]) == []

    # -- Terminate ---------------------------------------------------------------------
    async def test_terminate_ends_instance_and_fences_owner(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Terminate appends WorkflowTerminated, bumps the epoch and clears the inbox."""
        rec = await _running(store, clock, "i1")
        await _send(store, "i1")
        await _send(store, "i1")
        t = clock.advance(1.0)
        event = WorkflowTerminated(reason="by operator ✂")
        outcome = await _write1(store, Terminate("i1", event))
        assert outcome.ok and outcome.error is None
        ended = await _get(store, "i1")
        assert ended.status == "terminated"
        assert (ended.owner, ended.wake_at, ended.epoch) == (None, None, rec.epoch + 1)
        assert (ended.history_len, ended.updated_at) == (rec.history_len + 1, t)
        # clients report the termination reason from the record's error
        assert ended.error == {"type": "WorkflowTerminated", "message": "by operator ✂"}
        history = await store.load_history("i1", rec.run_id)
        assert history[-1] == HistoryEvent(rec.history_len, t, event)
        assert len(history) == rec.history_len + 1
        assert await store.fetch_inbox("i1") == []
        before = await _state(store, "i1")
        for op in (
            AppendEvents("i1", "w1", rec.epoch, rec.history_len, [(t, TimerFired(cmd=0))]),
            AppendEvents("i1", "w1", rec.epoch, rec.history_len + 1, [(t, TimerFired(cmd=0))]),
            Suspend("i1", "w1", rec.epoch, {"type": "X"}),
        ):
            fenced = await _write1(store, op)
            assert (fenced.ok, fenced.error) == (False, "conflict")
        assert await _state(store, "i1") == before
        assert await store.claim("w1", [WF]) == []

    @pytest.mark.parametrize("status", TERMINAL_STATUSES)
    async def test_terminate_of_ended_instance_is_closed(
        self, store: Store, clock: FakeClock, status: str
    ) -> None:
        """Terminating an instance that already ended: ok=False, "closed", nothing written."""
        await _end(store, await _running(store, clock, "i1"), status)
        before = await _state(store, "i1")
        clock.advance(1.0)
        outcome = await _write1(store, Terminate("i1", WorkflowTerminated(reason="again")))
        assert (outcome.ok, outcome.error) == (False, "closed")
        assert await _state(store, "i1") == before

    async def test_terminate_unknown_instance_is_not_found(self, store: Store) -> None:
        """Terminate of an unknown id: ok=False, "not_found", nothing created."""
        outcome = await _write1(store, Terminate("ghost", WorkflowTerminated(reason="x")))
        assert (outcome.ok, outcome.error) == (False, "not_found")
        assert await store.get_instance("ghost") is None

    @pytest.mark.parametrize("start", ["pending", "suspended"])
    async def test_terminate_unowned_instance(
        self, store: Store, clock: FakeClock, start: str
    ) -> None:
        """Pending and suspended instances can be terminated too."""
        if start == "pending":
            rec = await _create(store, "i1")
        else:
            rec = await _suspended(store, clock, "i1")
        outcome = await _write1(store, Terminate("i1", WorkflowTerminated(reason="r")))
        assert outcome.ok
        ended = await _get(store, "i1")
        assert (ended.status, ended.owner, ended.wake_at) == ("terminated", None, None)
        assert (ended.epoch, ended.history_len) == (rec.epoch + 1, rec.history_len + 1)
        assert await store.claim("w1", [WF]) == []

    # -- Suspend / Resume --------------------------------------------------------------
    async def test_suspend_parks_owned_instance(self, store: Store, clock: FakeClock) -> None:
        """Suspend: status suspended, unowned, not due, error recorded, history untouched."""
        rec = await _running(store, clock, "i1")
        history = await store.load_history("i1", rec.run_id)
        t = clock.advance(1.0)
        error = {
            "type": "NonDeterminismError",
            "message": "expected \u2018a\u2019 got \u2018b\u2019",
        }
        outcome = await _write1(store, Suspend("i1", "w1", rec.epoch, error))
        assert outcome.ok and outcome.error is None
        parked = await _get(store, "i1")
        assert (parked.status, parked.owner, parked.wake_at) == ("suspended", None, None)
        assert (parked.error, parked.updated_at) == (error, t)
        assert parked.history_len == rec.history_len
        assert await store.load_history("i1", rec.run_id) == history
        clock.advance(10 * LONG_TTL)
        assert await store.claim("w1", [WF]) == []
        assert await store.next_wake([WF]) is None
        stale = await _write1(store, AppendEvents("i1", "w1", rec.epoch, rec.history_len))
        assert (stale.ok, stale.error) == (False, "conflict")

    @pytest.mark.parametrize(
        "case", ["other_owner", "old_epoch", "unowned", "suspended", *TERMINAL_STATUSES]
    )
    async def test_suspend_refused_without_ownership(
        self, store: Store, clock: FakeClock, case: str
    ) -> None:
        """Suspend is a compare-and-set on (owner, epoch, active status): else "conflict"."""
        owner, epoch = "w1", 1
        if case == "unowned":
            await _create(store, "i1")
        elif case == "suspended":
            await _suspended(store, clock, "i1")
        else:
            rec = await _running(store, clock, "i1")
            if case == "other_owner":
                owner = "w2"
            elif case == "old_epoch":
                epoch = 0
            else:
                await _end(store, rec, case)
        before = await _state(store, "i1")
        clock.advance(1.0)
        outcome = await _write1(store, Suspend("i1", owner, epoch, {"type": "X"}))
        assert (outcome.ok, outcome.error) == (False, "conflict")
        assert await _state(store, "i1") == before

    async def test_suspend_unknown_instance_is_refused(self, store: Store) -> None:
        """Suspend of an unknown id is refused and creates nothing."""
        outcome = await _write1(store, Suspend("ghost", "w1", 1, {"type": "X"}))
        assert outcome.ok is False
        assert outcome.error in ("conflict", "not_found")
        assert await store.get_instance("ghost") is None

    async def test_resume_makes_suspended_instance_runnable_now(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Resume: suspended -> running, unowned, error cleared, due now."""
        parked = await _suspended(store, clock, "i1")
        t = clock.advance(60.0)
        outcome = await _write1(store, Resume("i1"))
        assert outcome.ok and outcome.error is None
        resumed = await _get(store, "i1")
        assert (resumed.status, resumed.owner, resumed.error) == ("running", None, None)
        assert (resumed.wake_at, resumed.updated_at) == (t, t)
        assert resumed.history_len == parked.history_len
        assert await store.next_wake([WF]) == t
        await _register(store, clock, "w2")
        (claim,) = await store.claim("w2", [WF])
        assert (claim.instance_id, claim.epoch, claim.newly_claimed) == (
            "i1",
            parked.epoch + 1,
            True,
        )

    @pytest.mark.parametrize("case", ["pending", "running", *TERMINAL_STATUSES])
    async def test_resume_refused_unless_suspended(
        self, store: Store, clock: FakeClock, case: str
    ) -> None:
        """Resume of an instance that is not suspended: "not_suspended", nothing written."""
        if case == "pending":
            await _create(store, "i1")
        else:
            rec = await _running(store, clock, "i1")
            if case != "running":
                await _end(store, rec, case)
        before = await _state(store, "i1")
        clock.advance(1.0)
        outcome = await _write1(store, Resume("i1"))
        assert (outcome.ok, outcome.error) == (False, "not_suspended")
        assert await _state(store, "i1") == before

    async def test_resume_unknown_instance_is_not_found(self, store: Store) -> None:
        """Resume of an unknown id: ok=False, "not_found"."""
        outcome = await _write1(store, Resume("ghost"))
        assert (outcome.ok, outcome.error) == (False, "not_found")
        assert await store.get_instance("ghost") is None

    # -- batches -----------------------------------------------------------------------
    async def test_batch_ops_are_isolated_with_outcomes_in_order(
        self, store: Store, clock: FakeClock
    ) -> None:
        """One refused op in a batch does not affect the others; outcomes follow op order."""
        a = await _running(store, clock, "a")
        b = await _running(store, clock, "b")
        await _create(store, "c")
        d = await _running(store, clock, "d")
        await _end(store, d, "completed")
        d_before = await _state(store, "d")
        t = clock.advance(1.0)
        ops: list[WriteOp] = [
            AppendEvents("a", "w1", a.epoch, a.history_len, [(t, TimerFired(cmd=0))]),
            AppendEvents("b", "w1", b.epoch + 1, b.history_len, [(t, TimerFired(cmd=0))]),
            SendMessage("ghost", "signal", "x"),
            SendMessage("c", "signal", "hello"),
            Terminate("d", WorkflowTerminated(reason="late")),
            _create_op("e"),
            AppendEvents("b", "w1", b.epoch, b.history_len - 1),
            Resume("c"),
            Suspend("b", "w1", b.epoch, {"type": "X"}),
        ]
        b_before = await _state(store, "b")
        outcomes = await store.write(ops)
        assert [(o.ok, o.error) for o in outcomes] == [
            (True, None),
            (False, "conflict"),
            (False, "not_found"),
            (True, None),
            (False, "closed"),
            (True, None),
            (False, "conflict"),
            (False, "not_suspended"),
            (True, None),
        ]
        assert outcomes[5].created
        assert isinstance(outcomes[3].message_id, int)
        assert (await _get(store, "a")).history_len == a.history_len + 1
        b_rec, b_history, b_inbox = await _state(store, "b")
        assert b_rec is not None and b_rec.status == "suspended"
        assert (b_history, b_inbox) == (b_before[1], b_before[2])
        assert [m.name for m in await store.fetch_inbox("c")] == ["hello"]
        assert await _state(store, "d") == d_before
        assert (await _get(store, "e")).status == "pending"
        assert await store.get_instance("ghost") is None

    async def test_batch_ops_see_the_effects_of_earlier_ops(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Ops apply in order: an op sees what earlier ops of the same batch wrote."""
        await _register(store, clock, "w1")
        t = clock()
        outcomes = await store.write(
            [
                _create_op("i1", owner="w1"),
                SendMessage("i1", "signal", "go"),
                AppendEvents("i1", "w1", 1, 1, [(t, TimerFired(cmd=0))], wake_at=t + 9.0),
            ]
        )
        assert [o.ok for o in outcomes] == [True, True, True]
        msg_id = outcomes[1].message_id
        assert msg_id is not None
        outcomes = await store.write(
            [
                AppendEvents(
                    "i1", "w1", 1, 2, [(t, SignalReceived("go", None))], inbox_upto=msg_id
                ),
                AppendEvents("i1", "w1", 1, 2),  # stale now: the first op moved history on
                AppendEvents("i1", "w1", 1, 3, wake_at=t + 9.0),
            ]
        )
        assert [(o.ok, o.error) for o in outcomes] == [
            (True, None),
            (False, "conflict"),
            (True, None),
        ]
        rec = await _get(store, "i1")
        assert (rec.history_len, rec.wake_at, rec.status) == (3, t + 9.0, "running")
        assert await store.fetch_inbox("i1") == []

    async def test_outcome_records_show_the_instance_after_the_op(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Where an outcome carries a record, it is the instance as the op left it."""
        rec = await _running(store, clock, "i1")
        await _create(store, "i2")
        t = clock.advance(1.0)
        ops: list[WriteOp] = [
            _create_op("i3"),
            _create_op("i3"),
            AppendEvents("i1", "w1", rec.epoch, rec.history_len, [(t, TimerFired(cmd=0))]),
            AppendEvents("i1", "w1", rec.epoch, rec.history_len),
            Suspend("i1", "w1", rec.epoch, {"type": "X"}),
            Resume("i1"),
            Resume("i2"),
            Terminate("i2", WorkflowTerminated(reason="r")),
            Terminate("i2", WorkflowTerminated(reason="r")),
            SendMessage("i2", "signal", "late"),
        ]
        for op in ops:
            clock.advance(0.5)
            outcome = await _write1(store, op)
            target = op.id if isinstance(op, CreateInstance) else getattr(op, "instance_id", "")
            if isinstance(op, CreateInstance):
                assert outcome.record is not None, "CreateInstance must return the record"
            if outcome.record is not None:
                assert outcome.record == await store.get_instance(target), op

    # -- sagas: compensating status, parking for intervention, reopening ---------------
    async def test_active_status_compensating_stays_claimable(
        self, store: Store, clock: FakeClock
    ) -> None:
        """AppendEvents(active_status="compensating") shows it; the instance stays active."""
        rec = await _running(store, clock, "i1")
        out = await _write1(
            store,
            AppendEvents(
                "i1",
                "w1",
                rec.epoch,
                rec.history_len,
                active_status="compensating",
                wake_at=clock(),
                release=True,
            ),
        )
        assert out.ok
        assert (await _get(store, "i1")).status == "compensating"
        await _register(store, clock, "w2")
        assert [c.instance_id for c in await store.claim("w2", [WF])] == ["i1"]

    async def test_parked_failure_and_reopen(self, store: Store, clock: FakeClock) -> None:
        """A failed step with needs_intervention can be reopened once; others cannot."""
        rec = await _running(store, clock, "i1")
        error = {"type": "CompensationFailed", "needs_intervention": True}
        out = await _write1(
            store,
            AppendEvents(
                "i1",
                "w1",
                rec.epoch,
                rec.history_len,
                status="failed",
                error=error,
                needs_intervention=True,
            ),
        )
        assert out.ok
        parked = await _get(store, "i1")
        assert (parked.status, parked.needs_intervention, parked.owner) == ("failed", True, None)
        assert (await _write1(store, SendMessage("i1", "signal", "x"))).error == "closed"
        t = clock.advance(1.0)
        reopened = await _write1(store, Reopen("i1"))
        assert reopened.ok
        after = await _get(store, "i1")
        assert (after.status, after.needs_intervention, after.wake_at) == ("compensating", False, t)
        assert after.error is None
        assert [m.kind for m in await store.fetch_inbox("i1")] == ["intervention"]
        assert (await _write1(store, Reopen("i1"))).error == "not_parked"
        assert (await _write1(store, Reopen("ghost"))).error == "not_found"
        other = await _running(store, clock, "i2")
        await _end(store, other, "failed")
        assert (await _write1(store, Reopen("i2"))).error == "not_parked"
