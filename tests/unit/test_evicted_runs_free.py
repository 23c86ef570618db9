"""An instance leaving memory is freed by reference counting, with no cyclic garbage.

A released sleeper used to leave ~50 objects in reference cycles (the run, its loop, its
context, tasks and futures pointing at each other), kept until a garbage collection
reached them: the RSS per sleeping workflow grew with the collector's threshold.
"""

from __future__ import annotations

import asyncio
import gc

from stalwart import Engine, WorkerOptions, WorkflowContext, activity, workflow


@activity
async def ev_undo(i: int) -> None:
    return None


@activity(compensate=ev_undo)
async def ev_step(i: int) -> int:
    return i


@workflow(name="ev_sleeper")
async def ev_sleeper(ctx: WorkflowContext, seconds: float) -> int:
    ctx.log.info("going to sleep")
    await ev_step(1)
    async with ctx.saga():
        await ev_step(2)
        await ctx.sleep(seconds)
    return 1


@workflow(name="ev_chain")
async def ev_chain(ctx: WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ev_step(i)
    return total


def _engine_garbage() -> list[str]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        names = sorted(
            {type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("stalwart")}
        )
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return names


async def test_released_and_finished_runs_leave_no_cycles() -> None:
    options = WorkerOptions(sticky_seconds=1.0)
    async with Engine(
        "memory://",
        workflows=[ev_sleeper, ev_chain],
        activities=[ev_step, ev_undo],
        options=options,
    ) as engine:
        assert engine.worker is not None
        await (await ev_chain.start(engine, 2)).result(timeout=10)  # warm up
        gc.collect()
        gc.disable()
        try:
            handles = [await ev_sleeper.start(engine, 600.0) for _ in range(20)]
            finished = [await ev_chain.start(engine, 3) for _ in range(20)]
            for h in finished:
                assert await h.result(timeout=10) == 3
            for _ in range(200):
                if not any(h.id in engine.worker.live for h in handles):
                    break
                await asyncio.sleep(0.01)
            assert not any(h.id in engine.worker.live for h in handles)
            assert _engine_garbage() == []
        finally:
            gc.enable()
