"""A batch's plain steps go to the server as one ``stalwart_append_batch`` call.

Each step keeps its own compare-and-set and its own events, whatever its neighbours do:
a refused step in the middle, steps without events, steps with several, terminal ones.
"""

from __future__ import annotations

from stalwart._engine.events import ActivityScheduled, TimerStarted, WorkflowCompleted
from stalwart.store.base import AppendEvents
from tests.postgres._helpers import running
from tests.postgres.conftest import StoreFactory


async def test_each_step_of_a_batch_is_its_own_compare_and_set(open_pg: StoreFactory) -> None:
    store = await open_pg()
    for name in ("a", "b", "c", "d"):
        await running(store, name)  # history_len 2, owned by w1 at epoch 1
    t = store.now()
    two = [
        (t, ActivityScheduled(cmd=1, name="pay", input=["x"], options={})),
        (t, TimerStarted(cmd=2, fire_at=t + 60)),
    ]
    outcomes = await store.write(
        [
            AppendEvents("a", "w1", 1, 2, two, wake_at=t + 60),
            AppendEvents("b", "w1", 1, 5, two),  # stale: b has 2 events, not 5
            AppendEvents("c", "w1", 1, 2, []),  # nothing to add, still a checked step
            AppendEvents("missing", "w1", 1, 2, two),
            AppendEvents(
                "d", "w1", 1, 2, [(t, WorkflowCompleted(result=7))], status="completed", output=7
            ),
        ]
    )
    assert [(o.ok, o.error) for o in outcomes] == [
        (True, None),
        (False, "conflict"),
        (True, None),
        (False, "not_found"),
        (True, None),
    ]
    kinds = {
        name: [e.event.kind for e in await store.load_history(name, f"run-{name}")]
        for name in ("a", "b", "c", "d")
    }
    assert kinds["a"][2:] == ["ActivityScheduled", "TimerStarted"]
    assert len(kinds["b"]) == 2 and len(kinds["c"]) == 2
    assert kinds["d"][2:] == ["WorkflowCompleted"]
    a, b, d = [await store.get_instance(n) for n in ("a", "b", "d")]
    assert a is not None and (a.history_len, a.wake_at) == (4, t + 60)
    assert b is not None and b.history_len == 2
    assert d is not None and (d.status, d.output, d.owner) == ("completed", 7, None)


async def test_a_batch_mixes_search_attributes_errors_and_plain_steps(
    open_pg: StoreFactory,
) -> None:
    store = await open_pg()
    for name in ("s1", "s2", "s3"):
        await running(store, name)
    t = store.now()
    outcomes = await store.write(
        [
            AppendEvents("s1", "w1", 1, 2, [], search_attributes={"customer": "c-1", "n": 3}),
            AppendEvents("s2", "w1", 1, 2, []),
            AppendEvents(
                "s3",
                "w1",
                1,
                2,
                [(t, WorkflowCompleted(result=None))],
                status="failed",
                error={"type": "Boom", "message": 'it\'s "quoted"'},
            ),
        ]
    )
    assert [o.ok for o in outcomes] == [True, True, True]
    s1, s2, s3 = [await store.get_instance(n) for n in ("s1", "s2", "s3")]
    assert s1 is not None and s1.search_attributes == {"customer": "c-1", "n": 3}
    assert s2 is not None and not s2.search_attributes
    assert s3 is not None and s3.status == "failed"
    assert s3.error == {"type": "Boom", "message": 'it\'s "quoted"'}
