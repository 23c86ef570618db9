"""Durability across engine restarts and fencing between workers sharing one SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stalwart import (
    ActivityError,
    Engine,
    RetryPolicy,
    WorkerOptions,
    WorkflowContext,
    activity,
    workflow,
)

ATTEMPTS: list[int] = []


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.4, backoff=1.0))
async def u_always_fails() -> None:
    ATTEMPTS.append(1)
    raise RuntimeError(f"attempt {len(ATTEMPTS)}")


@workflow(name="u_backoff")
async def u_backoff(ctx: WorkflowContext) -> int:
    try:
        await u_always_fails()
    except ActivityError as exc:
        return exc.attempts
    return 0


def engine_on(db: Path, **options: object) -> Engine:
    opts = WorkerOptions(**{"poll_interval": 0.05, "shutdown_grace": 0.5, **options})  # type: ignore[arg-type]
    return Engine(
        f"sqlite:///{db}",
        workflows=[u_backoff, u_hold],
        activities=[u_always_fails, u_gate],
        options=opts,
    )


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_restart_during_backoff_keeps_attempt_count(tmp_path: Path) -> None:
    ATTEMPTS.clear()
    db = tmp_path / "app.db"
    async with engine_on(db) as first:
        h = await u_backoff.start(first, id="backoff")

        async def failed_once() -> bool:
            return any(e.kind == "ActivityAttemptFailed" for e in await h.history())

        await wait_for(failed_once)
    assert len(ATTEMPTS) == 1
    async with engine_on(db) as second:
        assert await second.get_handle("backoff").result(timeout=10) == 3
        kinds = [e.kind for e in await second.get_handle("backoff").history()]
    assert len(ATTEMPTS) == 3
    assert kinds.count("ActivityAttemptFailed") == 2 and kinds.count("ActivityFailed") == 1


GATE = asyncio.Event()
GATE_RUNS: list[str] = []


@activity
async def u_gate(tag: str) -> str:
    GATE_RUNS.append(tag)
    await GATE.wait()
    return tag


@workflow(name="u_hold")
async def u_hold(ctx: WorkflowContext) -> str:
    return await u_gate("x")


async def test_stale_owner_is_fenced_after_takeover(tmp_path: Path) -> None:
    """A worker whose lease was taken over can no longer write; the new owner finishes."""
    GATE.clear()
    GATE_RUNS.clear()
    db = tmp_path / "app.db"
    async with engine_on(db, lease_seconds=30) as a, engine_on(db, lease_seconds=30) as b:
        h = await u_hold.start(a, id="fence")

        async def running_on_a() -> bool:
            return GATE_RUNS == ["x"]

        await wait_for(running_on_a)
        assert a.worker is not None and b.worker is not None
        # A's lease is declared expired (as if it had stalled): B takes the instance over.
        await a.store.expire_worker(a.worker.id)
        b.worker.kick()

        async def owned_by_b() -> bool:
            return (await h.describe()).owner == b.worker.id  # type: ignore[union-attr]

        await wait_for(owned_by_b)
        await wait_for(lambda: _true_if(len(GATE_RUNS) == 2))  # type: ignore[arg-type]
        GATE.set()  # both attempts finish; only the current owner's result is recorded
        assert await h.result(timeout=10) == "x"
        history = await h.history()
    completions = [e for e in history if e.kind == "ActivityCompleted"]
    assert len(completions) == 1
    assert "fence" not in (a.worker.live if a.worker else {})


async def _true_if(value: bool) -> bool:
    return value


HANG = asyncio.Event()


@activity
async def u_hang() -> None:
    await HANG.wait()


@workflow(name="u_poison")
async def u_poison(ctx: WorkflowContext) -> None:
    await u_hang()


async def _play_dead(engine: Engine) -> None:
    """Make an in-process worker behave like a killed one: no claims, no lease renewal,
    its instances abandoned in memory, its lease expired (nothing is handed back)."""
    worker = engine.worker
    assert worker is not None
    worker._stopping = True
    worker._scan_kick.set()
    if worker._heartbeat is not None:
        await asyncio.to_thread(worker._heartbeat.stop)
        worker._heartbeat = None
    for inst in list(worker.live.values()):
        worker._drop(inst)
    await engine.store.expire_worker(worker.id)


async def test_workflow_that_keeps_losing_its_workers_is_parked(tmp_path: Path) -> None:
    """After more takeovers from dead workers than max_recoveries, it is suspended."""
    HANG.clear()
    db = tmp_path / "poison.db"
    opts = WorkerOptions(poll_interval=0.05, shutdown_grace=0.2, max_recoveries=1)
    engines = [
        Engine(f"sqlite:///{db}", workflows=[u_poison], activities=[u_hang], options=opts)
        for _ in range(3)
    ]
    for engine in engines:
        await engine.open()
    try:
        handle = await u_poison.start(engines[0], id="poison")
        by_id = {e.worker.id: e for e in engines if e.worker is not None}
        for _ in range(2):

            async def owned() -> bool:
                return (await handle.describe()).owner in by_id

            await wait_for(owned)
            owner_id = (await handle.describe()).owner
            assert owner_id is not None
            await _play_dead(by_id[owner_id])
            for engine in engines:
                if engine.worker is not None:
                    engine.worker.kick()

            async def moved(previous: str = owner_id) -> bool:
                desc = await handle.describe()
                return desc.owner not in (None, previous) or desc.status == "suspended"

            await wait_for(moved)

        async def parked() -> bool:
            return await handle.status() == "suspended"

        await wait_for(parked)
        desc = await handle.describe()
        assert desc.error is not None and desc.error["type"] == "PoisonWorkflow"
        HANG.set()
        assert await handle.resume() is True
        assert await handle.result(timeout=10) is None
    finally:
        HANG.set()
        for engine in engines:
            await engine.close()
