"""Operator tools: fork from a step, check-compat before a deploy, bulk ops, search."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stalwart import (
    Engine,
    NonDeterminismError,
    WorkerOptions,
    WorkflowContext,
    activity,
    workflow,
)
from tests.conftest import EngineFactory

RUNS: list[str] = []


@activity
async def o_step(label: str) -> str:
    RUNS.append(label)
    return label.upper()


@workflow(name="o_pipeline")
async def o_pipeline(ctx: WorkflowContext, key: str) -> list[str]:
    ctx.upsert_search_attributes({"key": key, "stage": "extract"})
    out = [await o_step(f"{key}-extract")]
    ctx.upsert_search_attributes({"stage": "transform"})
    out.append(await o_step(f"{key}-transform"))
    await ctx.sleep(0.01)
    out.append(await o_step(f"{key}-load"))
    ctx.upsert_search_attributes({"stage": "done"})
    return out


async def test_fork_reuses_results_before_the_step(make_engine: EngineFactory) -> None:
    RUNS.clear()
    engine = make_engine(workflows=[o_pipeline], activities=[o_step])
    async with engine:
        h = await o_pipeline.start(engine, "a", id="pipe-a")
        assert await h.result(timeout=10) == ["A-EXTRACT", "A-TRANSFORM", "A-LOAD"]
        RUNS.clear()
        forked = await h.fork(from_step=1, id="pipe-a-again")
        assert await forked.result(timeout=10) == ["A-EXTRACT", "A-TRANSFORM", "A-LOAD"]
        assert RUNS == ["a-transform", "a-load"]  # step #0 was reused, not re-run
        with pytest.raises(Exception, match="already used"):
            await h.fork(from_step=1, id="pipe-a-again")


async def test_search_attributes_filter_listings(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[o_pipeline], activities=[o_step])
    async with engine:
        for key in ("x", "y"):
            await o_pipeline.run(engine, key, id=f"pipe-{key}", timeout=10)
        found = await engine.list(search={"key": "y"})
        assert [d.id for d in found.items] == ["pipe-y"]
        assert found.items[0].search_attributes == {"key": "y", "stage": "done"}
        assert len((await engine.list(search={"stage": "done"})).items) == 2
        assert (await engine.list(search={"stage": "extract"})).items == []


@activity
async def o_noop(n: int) -> int:
    return n


@workflow(name="o_waits")
async def o_waits(ctx: WorkflowContext) -> int:
    first = await o_noop(1)
    await ctx.wait_for_signal("go")
    return first + await o_noop(2)


@workflow(name="o_waits")
async def o_waits_changed(ctx: WorkflowContext) -> int:  # a deploy inserted a step
    await ctx.sleep(1)
    first = await o_noop(1)
    await ctx.wait_for_signal("go")
    return first + await o_noop(2)


async def test_check_compat_finds_instances_the_new_code_breaks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'compat.db'}"
    opts = WorkerOptions(max_cached=0, poll_interval=0.05, shutdown_grace=0.5)
    async with Engine(url, workflows=[o_waits], activities=[o_noop], options=opts) as old:
        for i in range(3):
            await o_waits.start(old, id=f"w{i}")
        for _ in range(300):
            owners = [(await old.get_handle(f"w{i}").describe()).owner for i in range(3)]
            if all(o is None for o in owners):
                break
            await asyncio.sleep(0.01)
        assert all(r.ok for r in await old.check_compat())
    async with Engine(url, workflows=[o_waits_changed], activities=[o_noop], options=opts) as new:
        reports = await new.check_compat(name="o_waits")
        assert sorted(r.instance_id for r in reports) == ["w0", "w1", "w2"]
        assert not any(r.ok for r in reports)
        assert all(r.event_index == 1 for r in reports)
        assert "TimerStarted(#0)" in (reports[0].problem or "")
        with pytest.raises(NonDeterminismError):
            await new.get_handle("w0").fork(from_step=1)


async def test_bulk_cancel_by_filter(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[o_waits], activities=[o_noop])
    async with engine:
        for i in range(4):
            await o_waits.start(engine, id=f"b{i}")
        cancelled = await engine.bulk("cancel", name="o_waits", reason="ops")
        assert sorted(cancelled) == [f"b{i}" for i in range(4)]
        for i in range(4):
            with pytest.raises(Exception, match="cancelled"):
                await engine.get_handle(f"b{i}").result(timeout=10)
        assert await engine.bulk("resume", status="suspended") == []
