"""Store contract: claims, wake times, workers and leases."""

from __future__ import annotations

import asyncio

import pytest

from stalwart.store.base import (
    TERMINAL_STATUSES,
    AppendEvents,
    Resume,
    SendMessage,
    Store,
    Suspend,
    WorkerRecord,
)
from stalwart.testing.contract._support import (
    LONG_TTL,
    OTHER,
    WF,
    FakeClock,
    _create,
    _end,
    _get,
    _register,
    _running,
    _send,
    _settle,
    _suspended,
    _write1,
)


class DistributionContract:
    """Claims, wake times, workers and leases."""

    # -- claim -------------------------------------------------------------------------
    async def test_claim_takes_unowned_due_instances(self, store: Store, clock: FakeClock) -> None:
        """Claiming sets the owner and bumps the epoch; the claim carries the new epoch."""
        await _register(store, clock, "w1")
        await _create(store, "i1", epoch=3)
        t = clock.advance(1.0)
        claims = await store.claim("w1", [WF])
        assert [(c.instance_id, c.run_id, c.epoch, c.newly_claimed) for c in claims] == [
            ("i1", "run-i1", 4, True)
        ]
        rec = await _get(store, "i1")
        assert (rec.owner, rec.epoch, rec.status, rec.updated_at) == ("w1", 4, "pending", t)
        assert await store.next_wake([WF]) is None
        out = await _write1(store, AppendEvents("i1", "w1", 4, 1))
        assert out.ok

    async def test_claim_waits_until_due(self, store: Store, clock: FakeClock) -> None:
        """An instance is claimable from its wake_at on (inclusive), not before."""
        rec = await _running(store, clock, "i1")
        t = clock()
        out = await _write1(
            store, AppendEvents("i1", "w1", 1, rec.history_len, wake_at=t + 10.0, release=True)
        )
        assert out.ok
        await _register(store, clock, "w2")
        clock.advance(9.5)
        assert await store.claim("w2", [WF]) == []
        clock.advance(0.5)  # now == wake_at
        assert [c.instance_id for c in await store.claim("w2", [WF])] == ["i1"]

    async def test_claim_only_serves_the_given_names(self, store: Store, clock: FakeClock) -> None:
        """Instances of names the worker does not serve are left alone."""
        await _register(store, clock, "w1")
        await _create(store, "mine")
        await _create(store, "theirs", name=OTHER)
        await _register(store, clock, "w2")
        assert await store.claim("w1", []) == []
        assert [c.instance_id for c in await store.claim("w1", [WF, "unknown"])] == ["mine"]
        assert (await _get(store, "theirs")).owner is None
        assert [c.instance_id for c in await store.claim("w2", [OTHER])] == ["theirs"]

    async def test_claim_skips_suspended_and_ended(self, store: Store, clock: FakeClock) -> None:
        """Only pending and running instances are claimable."""
        await _suspended(store, clock, "s")
        for i, status in enumerate(TERMINAL_STATUSES):
            await _end(store, await _running(store, clock, f"t{i}"), status)
        await _register(store, clock, "w2")
        clock.advance(10.0)
        assert await store.claim("w2", [WF]) == []
        await store.expire_worker("w1")
        assert await store.claim("w2", [WF]) == []

    async def test_claim_reports_own_due_instances_without_reclaiming(
        self, store: Store, clock: FakeClock
    ) -> None:
        """An owner's due instances come back with newly_claimed=False at the same epoch."""
        rec = await _running(store, clock, "due")
        t = clock()
        out = await _write1(store, AppendEvents("due", "w1", 1, rec.history_len, wake_at=t))
        assert out.ok
        await _running(store, clock, "later")  # wake_at is 600 s away
        before = await _get(store, "due")
        claims = await store.claim("w1", [WF])
        assert [(c.instance_id, c.epoch, c.newly_claimed) for c in claims] == [("due", 1, False)]
        assert await store.get_instance("due") == before

    async def test_claim_takes_over_instances_of_expired_workers(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Once the owner's lease expired (expires_at < now), others claim its instances."""
        await _running(store, clock, "i1")  # w1 registered with LONG_TTL
        await _register(store, clock, "w1", ttl=10.0)
        await _register(store, clock, "w2")
        clock.advance(10.0)  # expires_at == now: the lease still holds
        assert await store.claim("w2", [WF]) == []
        clock.advance(0.5)
        claims = await store.claim("w2", [WF])  # not due (wake_at in 600 s), still taken
        assert [(c.instance_id, c.epoch, c.newly_claimed) for c in claims] == [("i1", 2, True)]
        rec = await _get(store, "i1")
        assert (rec.owner, rec.epoch) == ("w2", 2)
        stale = await _write1(store, AppendEvents("i1", "w1", 1, rec.history_len))
        assert (stale.ok, stale.error) == (False, "conflict")
        assert await store.claim("w1", [WF]) == []

    async def test_claim_leaves_instances_of_live_workers(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A live worker's instances are never claimed by others, even when due."""
        await _running(store, clock, "i1")
        await _send(store, "i1")  # due now
        await _register(store, clock, "w2")
        clock.advance(LONG_TTL / 2)
        assert await store.claim("w2", [WF]) == []
        assert (await _get(store, "i1")).owner == "w1"

    @pytest.mark.parametrize("case", ["own_due", "unowned_due"])
    async def test_claim_by_an_expired_worker_reports_each_instance_once(
        self, store: Store, clock: FakeClock, case: str
    ) -> None:
        """Every claim names each instance once, at the epoch the store now holds.

        The claiming worker's own lease has expired (it missed heartbeats but is alive):
        the instance it owns, or an unowned one it claims, must appear once.
        """
        if case == "own_due":
            await _running(store, clock, "i1")
            await _send(store, "i1")  # due for its owner
        else:
            await _register(store, clock, "w1")
            await _create(store, "i1")
        await store.expire_worker("w1")
        clock.advance(1.0)
        claims = await store.claim("w1", [WF])
        assert len(claims) == len({c.instance_id for c in claims}) == 1
        rec = await _get(store, "i1")
        assert (claims[0].epoch, rec.owner) == (rec.epoch, "w1")

    async def test_claim_respects_limit(self, store: Store, clock: FakeClock) -> None:
        """At most ``limit`` claims per call; repeated calls eventually take all."""
        for i in range(7):
            await _create(store, f"i{i}")
        await _register(store, clock, "w1")
        clock.advance(1.0)
        seen: list[str] = []
        for _ in range(4):
            batch = await store.claim("w1", [WF], limit=2)
            assert len(batch) == min(2, 7 - len(seen))
            assert all(c.newly_claimed for c in batch)
            seen += [c.instance_id for c in batch]
            await _settle(store, batch, "w1")
        assert sorted(seen) == [f"i{i}" for i in range(7)]
        assert await store.claim("w1", [WF], limit=1) == []  # none due any more
        for i in range(3):
            await _send(store, f"i{i}")
        owned_due = await store.claim("w1", [WF], limit=2)
        assert len(owned_due) == 2
        assert not any(c.newly_claimed for c in owned_due)
        await _create(store, "fresh")
        assert len(await store.claim("w1", [WF], limit=3)) == 3

    async def test_concurrent_claims_never_share_an_instance(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Workers claiming at the same time each get disjoint sets of instances."""
        workers = [f"w{i}" for i in range(4)]
        for w in workers:
            await _register(store, clock, w)
        for i in range(40):
            await _create(store, f"i{i:02d}")
        clock.advance(1.0)
        taken: dict[str, str] = {}
        for _ in range(20):
            rounds = await asyncio.gather(*(store.claim(w, [WF], limit=3) for w in workers))
            for w, claims in zip(workers, rounds, strict=True):
                for c in claims:
                    assert c.newly_claimed
                    assert c.instance_id not in taken, f"{c.instance_id} claimed twice"
                    taken[c.instance_id] = w
                await _settle(store, claims, w)
            if len(taken) == 40:
                break
        assert len(taken) == 40
        for instance_id, worker in taken.items():
            assert (await _get(store, instance_id)).owner == worker

    # -- next_wake ---------------------------------------------------------------------
    async def test_next_wake(self, store: Store, clock: FakeClock) -> None:
        """The earliest wake_at of unowned active instances of the served names."""
        assert await store.next_wake([WF]) is None
        t = clock()
        for instance_id, delay in (("a", 30.0), ("b", 20.0), ("c", 45.0)):
            rec = await _running(store, clock, instance_id)
            out = await _write1(
                store,
                AppendEvents(
                    instance_id, "w1", 1, rec.history_len, wake_at=t + delay, release=True
                ),
            )
            assert out.ok
        await _running(store, clock, "owned")
        await _write1(store, SendMessage("owned", "signal", "x"))  # owned: ignored
        await _suspended(store, clock, "parked")
        await _end(store, await _running(store, clock, "done"), "completed")
        assert await store.next_wake([WF]) == t + 20.0
        assert await store.next_wake([OTHER]) is None
        assert await store.next_wake([]) is None
        await _create(store, "other", name=OTHER)
        assert await store.next_wake([OTHER]) == t
        assert await store.next_wake([WF, OTHER]) == t
        clock.advance(100.0)  # overdue times still count
        assert await store.next_wake([WF]) == t + 20.0
        await _register(store, clock, "w2")
        await store.claim("w2", [WF], limit=1)
        assert await store.next_wake([WF]) == t + 30.0

    # -- workers and leases ------------------------------------------------------------
    async def test_register_and_list_workers(self, store: Store, clock: FakeClock) -> None:
        """Workers round-trip; registering an id again replaces the record."""
        assert await store.list_workers() == []
        t = clock()
        w1 = WorkerRecord("w1", "billing ü", "host-1", 101, t, t + 30.0)
        w2 = WorkerRecord("w2", "shipping", "host-2", 202, t - 5.0, t + 15.5)
        await store.register_worker(w1)
        await store.register_worker(w2)
        assert sorted(await store.list_workers(), key=lambda w: w.id) == [w1, w2]
        w1b = WorkerRecord("w1", "billing 2", "host-3", 303, t + 1.0, t + 60.0)
        await store.register_worker(w1b)
        assert sorted(await store.list_workers(), key=lambda w: w.id) == [w1b, w2]

    async def test_heartbeat_renews_lease_from_another_thread(
        self, store: Store, clock: FakeClock
    ) -> None:
        """renew() sets expires_at = now + ttl and is usable from a separate thread."""
        await _register(store, clock, "w1", ttl=10.0)
        session = store.heartbeat_session()
        try:
            t = clock.advance(8.0)
            assert await asyncio.to_thread(session.renew, "w1", 10.0) is True
            (worker,) = await store.list_workers()
            assert worker.expires_at == t + 10.0
            t = clock.advance(10.0)  # expires_at == now: still renewable
            assert await asyncio.to_thread(session.renew, "w1", 5.0) is True
            (worker,) = await store.list_workers()
            assert worker.expires_at == t + 5.0
        finally:
            await asyncio.to_thread(session.close)

    async def test_renew_fails_for_unknown_or_expired_workers(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A lease that lapsed, was expired or never existed cannot be renewed."""
        await _register(store, clock, "lapsed", ttl=10.0)
        await _register(store, clock, "expired")
        await _register(store, clock, "gone")
        await store.expire_worker("expired")
        await store.deregister_worker("gone")
        session = store.heartbeat_session()
        try:
            assert session.renew("never-registered", 10.0) is False
            assert session.renew("expired", 10.0) is False
            assert session.renew("gone", 10.0) is False
            clock.advance(10.5)
            assert session.renew("lapsed", 10.0) is False
            workers = {w.id: w for w in await store.list_workers()}
            assert set(workers) == {"lapsed", "expired"}
            assert workers["lapsed"].expires_at < clock()
        finally:
            session.close()

    async def test_expire_worker_releases_its_claims(self, store: Store, clock: FakeClock) -> None:
        """expire_worker marks the lease expired now, so others can claim at once."""
        await _running(store, clock, "i1")
        await _register(store, clock, "w2")
        await store.expire_worker("w1")
        await store.expire_worker("never-registered")  # no error
        (w1,) = [w for w in await store.list_workers() if w.id == "w1"]
        assert w1.expires_at < store.now()
        assert [(c.instance_id, c.epoch) for c in await store.claim("w2", [WF])] == [("i1", 2)]

    async def test_deregister_hands_instances_back(self, store: Store, clock: FakeClock) -> None:
        """Deregistering removes the worker; its instances become unowned and due now."""
        a = await _running(store, clock, "a", worker="w1")
        await _running(store, clock, "b", worker="w1")
        await _create(store, "fresh", owner="w1")
        c = await _running(store, clock, "c", worker="w2")
        t = clock.advance(3.0)
        await store.deregister_worker("w1")
        await store.deregister_worker("never-registered")  # no error
        assert [w.id for w in await store.list_workers()] == ["w2"]
        for instance_id, status in (("a", "running"), ("b", "running"), ("fresh", "pending")):
            rec = await _get(store, instance_id)
            assert (rec.owner, rec.wake_at, rec.status, rec.epoch) == (None, t, status, 1)
        assert await store.get_instance("c") == c
        assert await store.next_wake([WF]) == t
        stale = await _write1(store, AppendEvents("a", "w1", a.epoch, a.history_len))
        assert (stale.ok, stale.error) == (False, "conflict")
        claims = await store.claim("w2", [WF])
        assert sorted((cl.instance_id, cl.epoch, cl.newly_claimed) for cl in claims) == [
            ("a", 2, True),
            ("b", 2, True),
            ("fresh", 2, True),
        ]

    async def test_takeovers_from_dead_workers_are_counted(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Each claim from an expired owner counts a recovery; Resume starts over."""
        await _running(store, clock, "i1")
        assert (await _get(store, "i1")).recoveries == 0
        for n, (dead, taker) in enumerate((("w1", "w2"), ("w2", "w3")), start=1):
            await _register(store, clock, taker)
            await store.expire_worker(dead)
            clock.advance(1.0)
            assert [c.instance_id for c in await store.claim(taker, [WF])] == ["i1"]
            assert (await _get(store, "i1")).recoveries == n
        rec = await _get(store, "i1")
        assert (await _write1(store, Suspend("i1", "w3", rec.epoch, {"type": "X"}))).ok
        assert (await _write1(store, Resume("i1"))).ok
        assert (await _get(store, "i1")).recoveries == 0

    async def test_a_worker_whose_own_lease_lapsed_takes_nothing_over(
        self, store: Store, clock: FakeClock
    ) -> None:
        """After an outage both workers' leases have lapsed: neither may take the other's
        instances until it has renewed its own lease (no ping-pong between live workers)."""
        await _running(store, clock, "i1", worker="w1")
        await _register(store, clock, "w2", ttl=5.0)
        await _register(store, clock, "w1", ttl=5.0)
        clock.advance(10.0)  # both leases lapsed
        assert await store.claim("w2", [WF]) == []
        await _register(store, clock, "w2", ttl=5.0)  # w2 renews first
        assert [c.instance_id for c in await store.claim("w2", [WF])] == ["i1"]

    async def test_a_committed_step_clears_the_recovery_count(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Recoveries count takeovers without progress: a step (even an empty one) by the
        new owner resets the count, and an expired worker stays known (not forgotten)."""
        await _running(store, clock, "i1")
        await _register(store, clock, "w2")
        await store.expire_worker("w1")
        assert "w1" in {w.id for w in await store.list_workers()}
        clock.advance(1.0)
        (claim,) = await store.claim("w2", [WF])
        rec = await _get(store, "i1")
        assert rec.recoveries == 1
        step = AppendEvents("i1", "w2", claim.epoch, rec.history_len, wake_at=clock() + 600.0)
        assert (await _write1(store, step)).ok
        assert (await _get(store, "i1")).recoveries == 0

    async def test_suspects_are_claimed_one_at_a_time(self, store: Store, clock: FakeClock) -> None:
        """With ``suspects``, instances taken over before without progress are claimed at
        most that many at a time (flagged) and counted only when actually taken over."""
        for i in range(4):
            await _running(store, clock, f"i{i}")
        await _register(store, clock, "w2")
        await store.expire_worker("w1")
        clock.advance(1.0)
        first = await store.claim("w2", [WF], suspects=1)  # none suspected yet
        assert sorted(c.instance_id for c in first) == ["i0", "i1", "i2", "i3"]
        assert not any(c.suspect for c in first)
        await _register(store, clock, "w3")
        await store.expire_worker("w2")
        clock.advance(1.0)
        (one,) = await store.claim("w3", [WF], suspects=1)
        assert one.suspect and one.newly_claimed
        assert (await _get(store, one.instance_id)).recoveries == 2
        waiting = [f"i{i}" for i in range(4) if f"i{i}" != one.instance_id]
        for instance_id in waiting:  # still the dead worker's, and not blamed again
            rec = await _get(store, instance_id)
            assert (rec.owner, rec.recoveries) == ("w2", 1)
        assert await store.claim("w3", [WF], suspects=0) == []
        rest = await store.claim("w3", [WF])  # without the option: no distinction
        assert sorted(c.instance_id for c in rest) == waiting
        assert not any(c.suspect for c in rest)
