"""Several versions under one name, pinned replays, patched() and deprecation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stalwart import Engine, WorkerOptions, WorkflowContext, activity, workflow
from stalwart.testing import Replayer

OPTS = WorkerOptions(poll_interval=0.05, max_cached=0, shutdown_grace=0.5)


@activity
async def v_step(label: str) -> str:
    return label


@workflow(name="v_order", version=1)
async def v_order_v1(ctx: WorkflowContext, item: str) -> str:
    first = await v_step(f"v1-reserve-{item}")
    await ctx.wait_for_signal("go")
    return first + "|" + await v_step("v1-ship")


@workflow(name="v_order", version=2)
async def v_order_v2(ctx: WorkflowContext, item: str) -> str:
    checked = await v_step(f"v2-check-{item}")
    await ctx.wait_for_signal("go")
    return checked + "|" + await v_step("v2-ship")


async def wait_blocked(engine: Engine, instance_id: str) -> None:
    for _ in range(300):
        desc = await engine.get_handle(instance_id).describe()
        if desc.owner is None and desc.status == "running":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("instance did not block")


async def test_running_instances_finish_on_their_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    async with Engine(url, workflows=[v_order_v1], activities=[v_step], options=OPTS) as old:
        await v_order_v1.start(old, "a", id="old-1")
        await wait_blocked(old, "old-1")
    # Deploy: v2 is added; v1 stays registered for the instances still running on it.
    async with Engine(
        url, workflows=[v_order_v1, v_order_v2], activities=[v_step], options=OPTS
    ) as new:
        fresh = await new.start_by_name("v_order", ["b"], id="new-1")
        pinned = await new.start_by_name("v_order", ["c"], id="pinned-1", version=1)
        assert (await fresh.describe()).version == 2
        for h in (fresh, pinned, new.get_handle("old-1")):
            await h.signal("go")
        assert await new.get_handle("old-1").result(timeout=10) == "v1-reserve-a|v1-ship"
        assert await fresh.result(timeout=10) == "v2-check-b|v2-ship"
        assert await pinned.result(timeout=10) == "v1-reserve-c|v1-ship"
        assert (await new.get_handle("old-1").describe()).version == 1


async def test_unserved_version_is_left_alone_and_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    async with Engine(url, workflows=[v_order_v1], activities=[v_step], options=OPTS) as old:
        await v_order_v1.start(old, "a", id="stranded")
        await wait_blocked(old, "stranded")
    async with Engine(url, workflows=[v_order_v2], activities=[v_step], options=OPTS) as v2only:
        handle = v2only.get_handle("stranded")
        await handle.signal("go")
        await asyncio.sleep(0.3)
        desc = await handle.describe()
        assert desc.status == "running" and desc.owner is None  # not failed, not claimed
        assert desc.unserved is not None
        assert "'v_order' version 1" in desc.unserved and "v_order@2" in desc.unserved
        listed = (await v2only.list(status="running")).items
        assert [d.unserved is not None for d in listed] == [True]
    async with Engine(url, workflows=[v_order_v1], activities=[v_step], options=OPTS) as back:
        assert await back.get_handle("stranded").result(timeout=10) == "v1-reserve-a|v1-ship"


@workflow(name="v_patch", version=1)
async def v_patch_before(ctx: WorkflowContext) -> list[str]:
    out = [await v_step("a")]
    await ctx.sleep(0.01)
    out.append(await v_step("b"))
    return out


@workflow(name="v_patch", version=1)
async def v_patch_after(ctx: WorkflowContext) -> list[str]:
    out = [await v_step("a")]
    if ctx.patched("add-audit"):
        out.append(await v_step("audit"))
    await ctx.sleep(0.01)
    out.append(await v_step("b"))
    return out


async def test_patched_keeps_old_histories_replayable() -> None:
    async with Engine("memory://", workflows=[v_patch_before], activities=[v_step]) as eng:
        old_history = await (await v_patch_before.start(eng, id="p-old")).history()
        await eng.get_handle("p-old").result(timeout=10)
        old_history = await eng.get_handle("p-old").history()
    async with Engine("memory://", workflows=[v_patch_after], activities=[v_step]) as eng:
        h = await v_patch_after.start(eng, id="p-new")
        assert await h.result(timeout=10) == ["a", "audit", "b"]
        new_history = await h.history()
    assert any(e.kind == "MarkerRecorded" for e in new_history)

    patched_code = Replayer([v_patch_after])
    assert patched_code.replay(old_history).ok  # old run takes the old branch
    assert patched_code.replay(new_history).ok

    # Without patched(), the same change breaks the old history, naming the step:
    @workflow(name="v_patch", version=1)
    async def v_patch_unguarded(ctx: WorkflowContext) -> list[str]:
        out = [await v_step("a"), await v_step("audit")]
        await ctx.sleep(0.01)
        return [*out, await v_step("b")]

    result = Replayer([v_patch_unguarded]).replay(old_history)
    assert not result.ok and result.status == "diverged"
    assert "TimerStarted(#1)" in str(result.error) and "ActivityScheduled(#1" in str(result.error)


@workflow(name="v_old", version=1, deprecated=True)
async def v_old(ctx: WorkflowContext) -> None:
    return None


async def test_deprecated_version_warns_on_start() -> None:
    async with Engine("memory://", workflows=[v_old], activities=[]) as eng:
        with pytest.warns(DeprecationWarning, match="'v_old' version 1 is deprecated"):
            await v_old.start(eng, id="dep")
        await eng.get_handle("dep").result(timeout=10)
