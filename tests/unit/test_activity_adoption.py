"""The task that ran an activity and committed its result runs the next activity itself.

A sequential workflow used to create a task per step (and pay an event-loop turn to start
it). The driving activity task now adopts the next activity, and only one: parallel
activities still each get a task, an adopted activity the workflow abandons before it
starts is never run, and abandoning it must not cancel the task that is still driving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from stalwart import Engine, WorkflowContext, activity, workflow
from stalwart._engine.events import ActivityCompleted
from stalwart.store.base import WriteOp, WriteOutcome
from stalwart.testing import TestEngine
from tests.conftest import EngineFactory

RAN: list[str] = []
BARRIER: dict[str, asyncio.Barrier] = {}


@activity
async def ad_step(i: int) -> int:
    RAN.append(f"step {i}")
    return i


@activity
async def ad_meet(i: int) -> int:
    # Passes only when all three parallel activities run at the same time.
    await asyncio.wait_for(BARRIER["meet"].wait(), timeout=5)
    return i


@workflow(name="ad_chain")
async def ad_chain(ctx: WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ad_step(i)
    return total


@workflow(name="ad_parallel")
async def ad_parallel(ctx: WorkflowContext) -> list[int]:
    await ad_step(-1)
    return list(await asyncio.gather(ad_meet(0), ad_meet(1), ad_meet(2)))


GATES: dict[str, asyncio.Event] = {}


@activity
async def ad_first(i: int) -> int:
    return i


@activity
async def ad_second(i: int) -> int:
    await GATES["second"].wait()
    return i


@activity
async def ad_next(i: int) -> int:
    GATES["next started"].set()
    return i


@workflow(name="ad_overlap")
async def ad_overlap(ctx: WorkflowContext) -> list[int]:
    async def branch() -> int:
        return await ad_next(await ad_first(1))

    return list(await asyncio.gather(branch(), ad_second(2)))


@workflow(name="ad_abandon")
async def ad_abandon(ctx: WorkflowContext) -> list[Any]:
    await ad_step(0)
    # ad_step(1) is scheduled and set aside by the task driving; the timer is due by the
    # next step of the same drive (the test's clock jumps at each commit), wins, and
    # abandons it before it starts.
    index, _ = await ctx.first(ad_step(1), ctx.sleep(5))
    after = await ad_step(2)
    return [index, after]


def _count_spawns(engine: Engine) -> list[Any]:
    worker = engine.worker
    assert worker is not None
    spawned: list[Any] = []
    original = worker._spawn

    def counted(coro: Any) -> asyncio.Task[Any]:
        spawned.append(getattr(coro, "__qualname__", coro))
        return original(coro)

    worker._spawn = counted  # type: ignore[method-assign]
    return spawned


async def test_a_sequential_workflow_runs_its_activities_in_one_task(
    make_engine: EngineFactory,
) -> None:
    async with make_engine(workflows=[ad_chain], activities=[ad_step]) as engine:
        spawned = _count_spawns(engine)
        handle = await ad_chain.start(engine, 20)
        assert await handle.result(timeout=10) == sum(range(20))
        activity_tasks = [name for name in spawned if "run_activity" in str(name)]
        assert len(activity_tasks) <= 2, spawned  # was one per step


async def test_parallel_activities_still_run_side_by_side(make_engine: EngineFactory) -> None:
    BARRIER["meet"] = asyncio.Barrier(3)
    async with make_engine(workflows=[ad_parallel], activities=[ad_step, ad_meet]) as engine:
        handle = await ad_parallel.start(engine)
        assert await handle.result(timeout=10) == [0, 1, 2]


async def test_an_adopted_activity_is_not_held_back_while_the_drive_goes_on() -> None:
    """ad_first's task commits its result and sets ad_next aside; ad_second completes
    during that commit, so the drive goes on to commit it too. ad_next must start
    without waiting for that second commit (which here waits for ad_next to start)."""
    GATES.update({"second": asyncio.Event(), "next started": asyncio.Event()})
    engine = TestEngine(
        workflows=[ad_overlap], activities=[ad_first, ad_second, ad_next], auto_skip=False
    )
    async with engine:
        worker = engine.worker
        assert worker is not None
        original_write = engine.store.write

        async def write(ops: Sequence[WriteOp]) -> list[WriteOutcome]:
            events = [e for op in ops for _, e in getattr(op, "events", ())]
            if any(getattr(e, "name", None) == "ad_next" for e in events):
                GATES["second"].set()  # ad_second completes while this commit is on
                for _ in range(100):
                    if any(inst.incoming for inst in worker.live.values()):
                        break
                    await asyncio.sleep(0.001)
            if any(isinstance(e, ActivityCompleted) and e.result == 2 for e in events):
                await asyncio.wait_for(GATES["next started"].wait(), timeout=5)
            return await original_write(ops)

        engine.store.write = write  # type: ignore[method-assign]
        handle = await ad_overlap.start(engine)
        assert await handle.result(timeout=10) == [1, 2]


async def test_an_adopted_activity_abandoned_before_it_starts_never_runs() -> None:
    RAN.clear()
    abandoned: list[int] = []
    engine = TestEngine(workflows=[ad_abandon], activities=[ad_step], auto_skip=False)
    async with engine:
        worker = engine.worker
        assert worker is not None
        original_write = engine.store.write
        original_dispatch = worker._dispatch

        async def write_then_jump(ops: Sequence[WriteOp]) -> list[WriteOutcome]:
            outcomes = await original_write(ops)
            clock = engine.virtual_clock
            clock.advance_to(clock.now() + 10)
            return outcomes

        def dispatch(inst: Any) -> None:
            adopted = inst.adopted
            original_dispatch(inst)
            if adopted is not None and adopted not in inst.run.activities:
                abandoned.append(adopted)

        engine.store.write = write_then_jump  # type: ignore[method-assign]
        worker._dispatch = dispatch  # type: ignore[method-assign]
        handle = await ad_abandon.start(engine)
        assert await handle.result(timeout=10) == [1, 2]
    assert abandoned == [1]  # the case under test did happen
    assert RAN == ["step 0", "step 2"]
