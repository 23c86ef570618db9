"""Deterministic concurrency, timers, signals, cancellation and replay after eviction."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

import stalwart
from stalwart import Cancelled, WorkflowContext, WorkflowFailedError, activity, workflow
from stalwart._engine.events import HistoryEvent
from stalwart.runtime.instance import build_instance
from tests.conftest import EngineFactory

EXECUTED: list[str] = []


@activity
async def d_echo(tag: str, delay: float) -> str:
    EXECUTED.append(tag)
    await asyncio.sleep(delay)
    return tag


def jitter() -> float:
    return random.uniform(0, 0.03)


@workflow(name="d_fan")
async def d_fan(ctx: WorkflowContext, n: int) -> dict[str, list[str]]:
    gathered = await asyncio.gather(*(d_echo(f"g{i}", jitter()) for i in range(n)))
    tasks = [asyncio.create_task(d_echo(f"t{i}", jitter())) for i in range(n)]
    created = [await t for t in tasks]
    order = []
    for fut in asyncio.as_completed([d_echo(f"a{i}", jitter()) for i in range(n)]):
        order.append(await fut)
    race = [asyncio.ensure_future(d_echo(f"w{i}", jitter())) for i in range(n)]
    done, pending = await asyncio.wait(race, return_when=asyncio.FIRST_COMPLETED)
    winner = [t.result() for t in done]
    for p in pending:
        p.cancel()
    await ctx.sleep(0.01)
    return {"gathered": gathered, "created": created, "order": order, "winner": winner}


async def replay_matches(engine: stalwart.Engine, instance_id: str) -> list[HistoryEvent]:
    """Replay the recorded history from scratch against the current code; it must not
    diverge, and it must issue no command beyond the history."""
    handle = engine.get_handle(instance_id)
    history = await handle.history()
    desc = await handle.describe()
    defn = engine.registry.workflow(desc.name)
    assert defn is not None
    started = history[0].event
    inst = build_instance(
        instance_id=instance_id,
        run_id=desc.run_id,
        epoch=1,
        defn=defn,
        started=started,  # type: ignore[arg-type]
        start_time=history[0].time,
        converter=engine.converter,
    )
    assert inst.run.replay(history) == []
    assert inst.run.outcome is not None and inst.run.outcome.status == desc.status
    inst.run.close()
    return history


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_asyncio_combinators_are_deterministic(
    make_engine: EngineFactory, max_cached: int
) -> None:
    engine = make_engine(workflows=[d_fan], activities=[d_echo], max_cached=max_cached)
    async with engine:
        h = await d_fan.start(engine, 4, id=f"fan-{max_cached}")
        result = await h.result(timeout=20)
        assert result["gathered"] == ["g0", "g1", "g2", "g3"]
        assert result["created"] == ["t0", "t1", "t2", "t3"]
        assert sorted(result["order"]) == ["a0", "a1", "a2", "a3"]
        assert len(result["winner"]) == 1
        history = await replay_matches(engine, h.id)
    # Completion order is recorded: as_completed yielded in the order results were stored.
    names = {e.event.cmd: e.event.name for e in history if e.kind == "ActivityScheduled"}
    del names
    completed = [e.event.result for e in history if e.kind == "ActivityCompleted"]
    a_order = [r for r in completed if isinstance(r, str) and r.startswith("a")]
    assert a_order == result["order"]


@workflow(name="d_signals")
async def d_signals(ctx: WorkflowContext) -> list[object]:
    got: list[object] = []
    await ctx.sleep(0.05)  # signals sent meanwhile are buffered, in order
    got.append(await ctx.wait_for_signal("item"))
    got.append(await ctx.wait_for_signal("item"))
    try:
        await ctx.wait_for_signal("never", timeout=timedelta(milliseconds=30))
    except TimeoutError as exc:
        got.append(str(exc))
    got.append(await ctx.wait_for_signal("item", timeout=10))
    got.append(await ctx.wait_for_signal("typed", type=int))
    return got


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_signals_buffered_in_order_and_timeouts(
    make_engine: EngineFactory, max_cached: int
) -> None:
    engine = make_engine(workflows=[d_signals], activities=[], max_cached=max_cached)
    async with engine:
        h = await d_signals.start(engine, id=f"sig-{max_cached}")
        await h.signal("item", {"n": 1})
        await h.signal("item", [2])
        await asyncio.sleep(0.2)
        await h.signal("item", "three")
        await h.signal("typed", "42")
        result = await h.result(timeout=10)
        await replay_matches(engine, h.id)
        with pytest.raises(stalwart.WorkflowClosedError):
            await h.signal("item", 4)
        with pytest.raises(stalwart.WorkflowNotFoundError):
            await engine.get_handle("ghost").signal("item", 1)
    assert result == [{"n": 1}, [2], "no signal 'never' arrived within 0.03 seconds", "three", 42]


CLEANUP: list[str] = []


@workflow(name="d_cancellable")
async def d_cancellable(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(3600)
    except Cancelled as exc:
        CLEANUP.append(f"cleanup:{exc.reason}")
        await d_echo("compensate", 0)
        raise
    return "slept"


@workflow(name="d_gather_cancel")
async def d_gather_cancel(ctx: WorkflowContext) -> str:
    try:
        await asyncio.gather(d_echo("slow1", 10), ctx.wait_for_signal("x"))
    except Cancelled as exc:
        return f"handled:{exc.reason}"
    return "done"


@pytest.mark.parametrize("max_cached", [10_000, 0])
async def test_cancel_raises_cancelled_at_await(
    make_engine: EngineFactory, max_cached: int
) -> None:
    CLEANUP.clear()
    EXECUTED.clear()
    engine = make_engine(
        workflows=[d_cancellable, d_gather_cancel], activities=[d_echo], max_cached=max_cached
    )
    async with engine:
        h = await d_cancellable.start(engine, id=f"cancel-{max_cached}")
        await asyncio.sleep(0.05)
        await h.cancel("customer asked")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "cancelled"
        assert await h.status() == "cancelled"
        await h.cancel("again")  # idempotent on a finished instance
        kinds = [e.kind for e in await h.history()]
        assert kinds[-3:] == ["ActivityScheduled", "ActivityCompleted", "WorkflowCancelled"]
        await replay_matches(engine, h.id)

        g = await d_gather_cancel.start(engine, id=f"gcancel-{max_cached}")
        await asyncio.sleep(0.1)
        await g.cancel("stop")
        assert await g.result(timeout=10) == "handled:stop"
    # Replays re-run the handler's plain Python code, always with the recorded reason, but
    # the compensating activity it calls ran exactly once.
    assert set(CLEANUP) == {"cleanup:customer asked"}
    assert EXECUTED.count("compensate") == 1


async def test_terminate_is_immediate(make_engine: EngineFactory) -> None:
    CLEANUP.clear()
    engine = make_engine(workflows=[d_cancellable], activities=[d_echo])
    async with engine:
        h = await d_cancellable.start(engine, id="term")
        await asyncio.sleep(0.05)
        await h.terminate("ops")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=5)
        assert info.value.status == "terminated"
        await h.terminate("twice")  # no-op
        assert (await h.history())[-1].kind == "WorkflowTerminated"
    assert CLEANUP == []


SIDE: list[int] = []


@workflow(name="d_context")
async def d_context(ctx: WorkflowContext) -> dict[str, object]:
    first = ctx.now()
    ids = [str(ctx.uuid()), str(ctx.uuid())]
    rnd = ctx.random().random()

    def compute() -> int:
        SIDE.append(1)
        return len(SIDE) * 100

    value = ctx.side_effect(compute)
    ctx.log.info("logged once")
    await ctx.sleep(0.02)
    later = ctx.now()
    return {
        "ids": ids,
        "rnd": rnd,
        "value": value,
        "advanced": later > first,
        "replaying": ctx.is_replaying,
        "instance": ctx.instance_id,
    }


async def test_context_values_are_stable_across_replay(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    SIDE.clear()
    engine = make_engine(workflows=[d_context], activities=[], max_cached=0)
    with caplog.at_level("INFO", logger="stalwart.workflow"):
        async with engine:
            result = await d_context.run(engine, id="ctx-1", timeout=10)
            await replay_matches(engine, "ctx-1")
    assert result["value"] == 100 and SIDE == [1]  # side effect ran once despite replays
    assert result["advanced"] is True and result["replaying"] is False
    assert result["instance"] == "ctx-1"
    assert len(set(result["ids"])) == 2  # type: ignore[arg-type]
    assert [r.message for r in caplog.records].count("[ctx-1] logged once") == 1


@workflow(name="d_no_io")
async def d_no_io(ctx: WorkflowContext) -> str:
    try:
        await asyncio.to_thread(print, "x")  # stalwart: ignore[SW006]
    except RuntimeError as exc:
        return str(exc)
    return "allowed"


async def test_threads_inside_workflows_are_refused(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[d_no_io], activities=[])
    async with engine:
        message = await d_no_io.run(engine, id="no-io", timeout=10)
    assert "not allowed inside a workflow" in message
