"""Store contract: listings, histories and capability-dependent checks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from stalwart._engine.events import (
    EVENT_TYPES,
    HistoryEvent,
    TimerFired,
    TimerStarted,
    WorkflowStarted,
)
from stalwart.errors import ConfigurationError
from stalwart.store.base import (
    AppendEvents,
    CreateInstance,
    InstanceRecord,
    ListFilter,
    Store,
    WriteOp,
)
from stalwart.testing.contract._support import (
    OTHER,
    WF,
    FakeClock,
    PeerOpener,
    _create,
    _cursor,
    _end,
    _get,
    _register,
    _require,
    _running,
    _sample_events,
    _send,
    _settle,
    _state,
    _suspended,
    _write1,
)


class ReadsContract:
    """Listings, histories and capability-dependent checks."""

    # -- listing -----------------------------------------------------------------------
    async def test_list_instances_newest_first(self, store: Store, clock: FakeClock) -> None:
        """Listings are ordered by creation time, newest first, with full records."""
        for instance_id in ("old", "mid", "new"):
            await _create(store, instance_id)
            clock.advance(1.0)
        page = await store.list_instances(ListFilter())
        assert [r.id for r in page.items] == ["new", "mid", "old"]
        assert page.next_cursor is None
        for rec in page.items:
            assert rec == await store.get_instance(rec.id)

    async def test_list_instances_filters(self, store: Store, clock: FakeClock) -> None:
        """Filters on name and status combine; None matches anything."""
        await _create(store, "p1")
        await _create(store, "p2", name=OTHER)
        await _running(store, clock, "r1")
        await _running(store, clock, "r2", name=OTHER)
        await _suspended(store, clock, "s1")
        await _end(store, await _running(store, clock, "c1"), "completed")

        async def ids(flt: ListFilter) -> set[str]:
            return {r.id for r in (await store.list_instances(flt)).items}

        assert await ids(ListFilter()) == {"p1", "p2", "r1", "r2", "s1", "c1"}
        assert await ids(ListFilter(name=WF)) == {"p1", "r1", "s1", "c1"}
        assert await ids(ListFilter(name=OTHER)) == {"p2", "r2"}
        assert await ids(ListFilter(status="pending")) == {"p1", "p2"}
        assert await ids(ListFilter(status="running")) == {"r1", "r2"}
        assert await ids(ListFilter(status="suspended")) == {"s1"}
        assert await ids(ListFilter(status="completed")) == {"c1"}
        assert await ids(ListFilter(name=OTHER, status="running")) == {"r2"}
        assert await ids(ListFilter(name=OTHER, status="completed")) == set()
        assert await ids(ListFilter(name="unknown")) == set()

    @pytest.mark.parametrize("limit", [1, 2, 3, 5, 12, 13, 100])
    async def test_list_paging_covers_every_item_once(
        self, store: Store, clock: FakeClock, limit: int
    ) -> None:
        """Following next_cursor visits each match exactly once, newest first (ties too)."""
        expected_groups: list[set[str]] = []
        for group in range(4):  # instances created at the same time form a group
            ids = {f"g{group}-{k}" for k in range(3)}
            for instance_id in sorted(ids):
                await _create(store, instance_id, name=WF if group != 2 else OTHER)
            expected_groups.insert(0, ids)
            clock.advance(1.0)
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(100):
            page = await store.list_instances(ListFilter(), limit=limit, cursor=cursor)
            assert len(page.items) <= limit
            if page.next_cursor is not None:
                assert len(page.items) == limit
            seen += [r.id for r in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert cursor is None, "paging did not end"
        assert len(seen) == len(set(seen)) == 12
        flat = [i for group in expected_groups for i in sorted(group)]
        assert [set(seen[k : k + 3]) for k in range(0, 12, 3)] == expected_groups
        assert sorted(seen) == sorted(flat)
        # the same holds with a filter
        seen_wf: list[str] = []
        cursor = None
        while True:
            page = await store.list_instances(ListFilter(name=WF), limit=limit, cursor=cursor)
            seen_wf += [r.id for r in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen_wf) == sorted(i for i in flat if not i.startswith("g2-"))
        assert len(seen_wf) == len(set(seen_wf))

    async def test_list_paging_ignores_instances_created_meanwhile(
        self, store: Store, clock: FakeClock
    ) -> None:
        """A cursor continues after its last item: newer instances do not shift pages."""
        for i in range(5):
            await _create(store, f"i{i}")
            clock.advance(1.0)
        first = await store.list_instances(ListFilter(), limit=2)
        assert [r.id for r in first.items] == ["i4", "i3"]
        for i in range(5, 8):
            await _create(store, f"i{i}")
            clock.advance(1.0)
        second = await store.list_instances(ListFilter(), limit=2, cursor=first.next_cursor)
        assert [r.id for r in second.items] == ["i2", "i1"]
        third = await store.list_instances(ListFilter(), limit=2, cursor=second.next_cursor)
        assert ([r.id for r in third.items], third.next_cursor) == (["i0"], None)

    async def test_list_empty(self, store: Store) -> None:
        """An empty listing has no items and no next cursor."""
        page = await store.list_instances(ListFilter())
        assert (page.items, page.next_cursor) == ([], None)
        page = await store.list_instances(ListFilter(name=WF, status="running"), limit=1)
        assert (page.items, page.next_cursor) == ([], None)

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "not a cursor",
            "!!!!",
            "é",
            _cursor(b"[1]"),
            _cursor(b'{"a": 1}'),
            _cursor(b'[null, "x"]'),
            _cursor(b'["x", "y"]'),
            _cursor(b"\xff\xfe"),
        ],
    )
    async def test_list_malformed_cursor_is_a_configuration_error(
        self, store: Store, clock: FakeClock, cursor: str
    ) -> None:
        """A cursor the store did not issue is a ConfigurationError, not a wrong page."""
        await _create(store, "i1")
        with pytest.raises(ConfigurationError):
            await store.list_instances(ListFilter(), cursor=cursor)

    # -- history -----------------------------------------------------------------------
    async def test_load_history_round_trips_every_event_type(
        self, store: Store, clock: FakeClock
    ) -> None:
        """Every event type comes back equal, with the same field types, seq and time."""
        t = clock()
        samples = _sample_events(t)
        assert {type(e) for e in samples} == set(EVENT_TYPES.values()), (
            "add a sample for every event type in stalwart._engine.events"
        )
        started = samples[0]
        assert isinstance(started, WorkflowStarted)
        await _register(store, clock, "w1")
        create = CreateInstance(
            "i1", started.name, started.version, started.run_id, started.input, started, "w1"
        )
        assert (await _write1(store, create)).ok
        timed = [(t + 0.125 * k, e) for k, e in enumerate(samples[1:], start=1)]
        out = await _write1(store, AppendEvents("i1", "w1", 1, 1, timed))
        assert out.ok
        history = await store.load_history("i1", started.run_id)
        assert history == [HistoryEvent(0, t, started)] + [
            HistoryEvent(k, when, e) for k, (when, e) in enumerate(timed, start=1)
        ]
        # repr tells 1 from 1.0 and True from 1, which == does not
        assert [repr(h.event) for h in history] == [repr(e) for e in samples]
        assert [h.kind for h in history] == [e.kind for e in samples]
        assert (await _get(store, "i1")).history_len == len(samples)

    async def test_load_history_is_per_run(self, store: Store, clock: FakeClock) -> None:
        """History is keyed by run: another run id has no events."""
        await _create(store, "i1")
        await _create(store, "i2")
        assert await store.load_history("i1", "run-unknown") == []
        (h1,) = await store.load_history("i1", "run-i1")
        (h2,) = await store.load_history("i2", "run-i2")
        assert h1.event != h2.event

    # -- capabilities ------------------------------------------------------------------
    async def test_durable_store_is_readable_from_a_new_connection(
        self, store: Store, clock: FakeClock, open_peer: PeerOpener | None
    ) -> None:
        """Data committed by one store object is there for a store opened afterwards."""
        _require(store, "durable")
        assert open_peer is not None, "a durable store's test class must provide open_peer"
        rec = await _running(store, clock, "i1")
        msg = await _send(store, "i1", "x", {"ü": [1]})
        peer = await open_peer()
        assert await _state(peer, "i1") == await _state(store, "i1")
        assert (await _get(peer, "i1")) == await _get(store, "i1")
        assert [m.id for m in await peer.fetch_inbox("i1")] == [msg]
        assert await peer.list_workers() == await store.list_workers()
        out = await _write1(peer, AppendEvents("i1", "w1", rec.epoch, rec.history_len))
        assert out.ok
        assert (await _get(store, "i1")).updated_at == clock()

    async def test_claims_across_processes_never_share_an_instance(
        self, store: Store, clock: FakeClock, open_peer: PeerOpener | None
    ) -> None:
        """Workers on separate connections claiming at once get disjoint instances."""
        _require(store, "multi_process")
        assert open_peer is not None, "a multi_process store's test class must provide open_peer"
        stores = [store, *[await open_peer() for _ in range(3)]]
        workers = [f"w{i}" for i in range(len(stores))]
        for w in workers:
            await _register(store, clock, w)
        for i in range(60):
            await _create(store, f"i{i:02d}")
        clock.advance(1.0)
        taken: dict[str, str] = {}
        for _ in range(30):
            rounds = await asyncio.gather(
                *(s.claim(w, [WF], limit=4) for s, w in zip(stores, workers, strict=True))
            )
            for w, claims in zip(workers, rounds, strict=True):
                for c in claims:
                    assert c.newly_claimed
                    assert c.instance_id not in taken, f"{c.instance_id} claimed twice"
                    taken[c.instance_id] = w
                await _settle(store, claims, w)
            if len(taken) == 60:
                break
        assert len(taken) == 60
        for instance_id, worker in taken.items():
            assert (await _get(store, instance_id)).owner == worker

    async def test_appends_across_processes_are_compare_and_set(
        self, store: Store, clock: FakeClock, open_peer: PeerOpener | None
    ) -> None:
        """Two connections racing the same AppendEvents: exactly one wins."""
        _require(store, "multi_process")
        assert open_peer is not None, "a multi_process store's test class must provide open_peer"
        peer = await open_peer()
        for i in range(10):
            instance_id = f"i{i}"
            rec = await _running(store, clock, instance_id)
            t = clock()

            def op(tag: int, rec: InstanceRecord = rec, t: float = t) -> Sequence[WriteOp]:
                return [
                    AppendEvents(
                        rec.id, "w1", rec.epoch, rec.history_len, [(t, TimerFired(cmd=tag))]
                    )
                ]

            outcomes = await asyncio.gather(store.write(op(1)), peer.write(op(2)))
            results = [o for (o,) in outcomes]
            assert sorted(o.ok for o in results) == [False, True]
            loser = next(o for o in results if not o.ok)
            assert loser.error == "conflict"
            history = await store.load_history(instance_id, rec.run_id)
            assert len(history) == rec.history_len + 1
            winner_tag = 1 if results[0].ok else 2
            assert history[-1].event == TimerFired(cmd=winner_tag)

    # -- search attributes and forks ---------------------------------------------------
    async def test_search_attributes_are_stored_and_filtered(
        self, store: Store, clock: FakeClock
    ) -> None:
        """AppendEvents(search_attributes=...) replaces them; listings match on equality."""
        for instance_id, attrs in (
            ("a", {"customer": "acme", "tier": 2}),
            ("b", {"customer": "acme", "tier": 3}),
            ("c", {"customer": "o'hara; DROP", "tier": 2}),
        ):
            rec = await _running(store, clock, instance_id)
            out = await _write1(
                store,
                AppendEvents(
                    instance_id, "w1", rec.epoch, rec.history_len, search_attributes=attrs
                ),
            )
            assert out.ok
        assert (await _get(store, "a")).search_attributes == {"customer": "acme", "tier": 2}

        async def ids(search: dict[str, object]) -> list[str]:
            page = await store.list_instances(ListFilter(search=search))
            return sorted(r.id for r in page.items)

        assert await ids({"customer": "acme"}) == ["a", "b"]
        assert await ids({"customer": "acme", "tier": 2}) == ["a"]
        assert await ids({"tier": 2}) == ["a", "c"]
        assert await ids({"customer": "o'hara; DROP"}) == ["c"]
        assert await ids({"missing": 1}) == []
        # An AppendEvents without search_attributes keeps them.
        rec = await _get(store, "a")
        assert (await _write1(store, AppendEvents("a", "w1", rec.epoch, rec.history_len))).ok
        assert (await _get(store, "a")).search_attributes == {"customer": "acme", "tier": 2}

    async def test_create_with_history_prefix(self, store: Store, clock: FakeClock) -> None:
        """CreateInstance(prefix=...) records the events after WorkflowStarted, in order."""
        t = clock()
        prefix = [(t - 5.0, TimerStarted(cmd=0, fire_at=t)), (t - 1.0, TimerFired(cmd=0))]
        op = CreateInstance(
            "forked",
            WF,
            1,
            "run-forked",
            [1],
            WorkflowStarted(name=WF, version=1, input=[1], run_id="run-forked"),
            prefix=prefix,
        )
        assert (await _write1(store, op)).created
        history = await store.load_history("forked", "run-forked")
        assert [(h.seq, h.time, h.event) for h in history[1:]] == [
            (1, t - 5.0, prefix[0][1]),
            (2, t - 1.0, prefix[1][1]),
        ]
        assert (await _get(store, "forked")).history_len == 3
