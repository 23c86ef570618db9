"""The Stalwart side: the benchmark workflows and the measured runs (in child processes)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from typing import Any

import stalwart
from bench import side
from bench.common import (
    SYNC_NAMES,
    RunContext,
    Sizes,
    SqlCounter,
    Target,
    WarningCounter,
    WriteCounter,
    fanout_metrics,
    proc_status_kib,
    replay_events_to_steps,
    rss_after_gc_kib,
    seq_metrics,
    thread_count,
)
from stalwart import Engine, WorkerOptions, WorkflowContext, activity, workflow
from stalwart.runtime.replay_check import replay_history
from stalwart.store.sqlite import SQLiteStore


@activity
async def step(i: int) -> int:
    """The no-op activity."""
    return i


@workflow
async def chain(ctx: WorkflowContext, n: int) -> int:
    """``n`` sequential no-op activities."""
    total = 0
    for i in range(n):
        total += await step(i)
    return total


@workflow
async def sleeper(ctx: WorkflowContext, seconds: float) -> int:
    """One durable timer."""
    await ctx.sleep(seconds)
    return 1


@activity
async def slow_step(i: int, ms: float) -> int:
    """A short activity that records each execution in the side table."""
    side.record(i)
    await asyncio.sleep(ms / 1000.0)
    return i


@workflow
async def slow_chain(ctx: WorkflowContext, n: int, ms: float) -> int:
    """``n`` sequential short activities (the recovery scenario)."""
    total = 0
    for i in range(n):
        total += await slow_step(i, ms)
    return total


WORKFLOWS = [chain, sleeper, slow_chain]
ACTIVITIES = [step, slow_step]


def _instrument(counter: SqlCounter) -> None:
    """Count every statement on every connection the SQLite store opens."""
    original = SQLiteStore.connect

    def connect(self: SQLiteStore) -> Any:
        conn = original(self)
        conn.set_trace_callback(counter)
        return conn

    SQLiteStore.connect = connect  # type: ignore[method-assign]


def store_url(target: Target, ctx: RunContext) -> str:
    """The store URL for ``target`` (``FULL`` is Stalwart's default, so it is left out)."""
    if target.store == "memory":
        return "memory://"
    if target.store == "postgres":
        assert ctx.pg_url is not None
        return ctx.pg_url
    path = os.path.join(ctx.workdir, "bench.db")
    url = f"sqlite:///{path}"  # path is absolute: sqlite:////tmp/.../bench.db
    if target.synchronous is not None and target.synchronous != "FULL":
        url += f"?synchronous={target.synchronous}"
    return url


async def settings_of(engine: Engine) -> dict[str, str]:
    """The durability settings as the store's own connection reports them."""
    store = engine.store
    if isinstance(store, SQLiteStore):

        def query() -> tuple[str, int]:
            conn = store._w
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            sync = conn.execute("PRAGMA synchronous").fetchone()[0]
            return str(journal), int(sync)

        journal, sync = await store._in(store._writer, query)
        return {"journal_mode": journal, "synchronous": SYNC_NAMES.get(sync, str(sync))}
    fetchall = getattr(store, "_fetchall", None)
    if fetchall is not None:  # PostgresStore: a connection of its own pool
        out = {}
        for name in ("synchronous_commit", "fsync", "wal_sync_method"):
            rows = await fetchall(f"SHOW {name}")
            out[name] = str(rows[0][0])
        return out
    return {"journal_mode": "n/a (memory)", "synchronous": "n/a (memory)"}


# ------------------------------------------------------------------------------ seq/fanout
async def _seq(engine: Engine, n: int) -> float:
    t0 = time.perf_counter()
    result = await chain.run(engine, n)
    elapsed = time.perf_counter() - t0
    assert result == sum(range(n)), result
    return elapsed


async def _fanout(engine: Engine, workflows: int, steps: int) -> list[tuple[float, float]]:
    expected = sum(range(steps))

    async def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        handle = await chain.start(engine, steps)
        result = await handle.result()
        t1 = time.perf_counter()
        assert result == expected, result
        return t0, t1

    return list(await asyncio.gather(*(one() for _ in range(workflows))))


# -------------------------------------------------------------------------------- sleepers
async def _start_sleepers(engine: Engine, n: int, seconds: float, concurrency: int) -> None:
    """``concurrency`` lanes take start calls from one shared counter: only that many
    coroutines exist at a time, so the benchmark's own transient memory stays small
    (10,000 coroutines parked on a semaphore would inflate the RSS being measured)."""
    todo = iter(range(n))

    async def lane() -> None:
        for _ in todo:
            await sleeper.start(engine, seconds)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))


async def _wait_blocked(engine: Engine, ops_target: int, timeout: float) -> None:
    """Until every started sleeper recorded its timer (two writes each: the start and the
    TimerStarted commit) and nothing is left in memory or being loaded."""
    worker = engine.worker
    assert worker is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            engine.committer.ops >= ops_target
            and not engine.committer.pending
            and not worker.live
            and not worker._loading
        ):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(
        f"sleepers not all blocked after {timeout:.0f} s: {engine.committer.ops}/{ops_target} "
        f"writes, {len(worker.live)} in memory"
    )


async def _count_sleeping(engine: Engine) -> dict[str, int]:
    """From the store: instances whose timer is recorded, and how many are unowned
    (released from memory)."""
    query = (
        "SELECT count(*), sum(CASE WHEN owner IS NULL THEN 1 ELSE 0 END) FROM instances "
        "WHERE name = 'sleeper' AND status = 'running' AND history_len >= 2"
    )
    store = engine.store
    if isinstance(store, SQLiteStore):
        import sqlite3

        def read() -> tuple[int, int]:
            conn = sqlite3.connect(store.path)
            try:
                row = conn.execute(query).fetchone()
            finally:
                conn.close()
            return int(row[0] or 0), int(row[1] or 0)

        sleeping, released = await asyncio.to_thread(read)
    else:
        rows = await store._fetchall(query)  # type: ignore[attr-defined]
        sleeping, released = int(rows[0][0] or 0), int(rows[0][1] or 0)
    return {"sleeping": sleeping, "released": released}


async def _sleepers(engine: Engine, n: int, seconds: float, sizes: Sizes) -> dict[str, Any]:
    assert engine.worker is not None
    writes_per = 2
    ops0 = engine.committer.ops
    await _start_sleepers(engine, sizes.warmup_sleepers, seconds, sizes.start_concurrency)
    await _wait_blocked(engine, ops0 + writes_per * sizes.warmup_sleepers, 120)
    await asyncio.sleep(0.2)
    rss0 = rss_after_gc_kib()
    ops1 = engine.committer.ops
    t0 = time.perf_counter()
    await _start_sleepers(engine, n, seconds, sizes.start_concurrency)
    started = time.perf_counter() - t0
    await _wait_blocked(engine, ops1 + writes_per * n, max(120.0, seconds))
    blocked = time.perf_counter() - t0
    await asyncio.sleep(0.2)
    rss1 = rss_after_gc_kib()
    live = len(engine.worker.live)
    counts = await _count_sleeping(engine)
    return {
        "workflows": n,
        "sleep_s": seconds,
        "start_s": started,
        "start_per_s": n / started,
        "blocked_s": blocked,
        "rss_before_mib": rss0 / 1024,
        "rss_after_mib": rss1 / 1024,
        "rss_growth_mib": (rss1 - rss0) / 1024,
        "bytes_per_wf": (rss1 - rss0) * 1024 / n,
        "hwm_mib": proc_status_kib("VmHWM") / 1024,
        "in_memory": live,
        "sleeping_in_store": counts["sleeping"] - sizes.warmup_sleepers,
        "released_in_store": counts["released"] - sizes.warmup_sleepers,
        "asleep_ok": blocked < seconds,
    }


# ---------------------------------------------------------------------------------- replay
async def _replay(engine: Engine, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for events in sizes.replay_events:
        steps = replay_events_to_steps(events)
        t0 = time.perf_counter()
        handle = await chain.start(engine, steps)
        await handle.result()
        build_s = time.perf_counter() - t0
        rec = await engine.store.get_instance(handle.id)
        assert rec is not None
        loads, replays, totals = [], [], []
        length = 0
        for _ in range(sizes.replay_repeats):
            t0 = time.perf_counter()
            history = await engine.store.load_history(rec.id, rec.run_id)
            t1 = time.perf_counter()
            result = replay_history(engine.registry, engine.converter, history)
            t2 = time.perf_counter()
            assert result.ok and result.status == "completed", result
            length = len(history)
            loads.append(t1 - t0)
            replays.append(t2 - t1)
            totals.append(t2 - t0)
        out[str(events)] = {
            "events": length,
            "steps": steps,
            "build_s": build_s,
            "load_ms": statistics.median(loads) * 1e3,
            "replay_ms": statistics.median(replays) * 1e3,
            "total_ms": statistics.median(totals) * 1e3,
            "total_min_ms": min(totals) * 1e3,
            "total_max_ms": max(totals) * 1e3,
            "us_per_event": statistics.median(totals) / max(1, length) * 1e6,
        }
    return out


# ------------------------------------------------------------------------------------ run
async def run(scenario: str, target: Target, sizes: Sizes, ctx: RunContext) -> dict[str, Any]:
    """Run one measurement in this process; return its metrics and the store's settings."""
    counter = SqlCounter()
    warnings = WarningCounter()
    if target.store == "sqlite":
        _instrument(counter)
    url = store_url(target, ctx)
    big = bool(ctx.extra.get("big"))
    writes = WriteCounter(target, ctx, counter)
    group: dict[str, int] = {}
    sql: dict[str, Any] | None = None
    units = 1
    async with Engine(url, workflows=WORKFLOWS, activities=ACTIVITIES) as engine:
        settings = await settings_of(engine)
        batches0, ops0 = engine.committer.batches, engine.committer.ops
        if scenario == "seq":
            await _seq(engine, sizes.warmup_steps)
            warnings.install("stalwart")
            await writes.start()
            batches0, ops0 = engine.committer.batches, engine.committer.ops
            metrics = seq_metrics(await _seq(engine, sizes.seq_steps), sizes.seq_steps)
            units = sizes.seq_steps
            sql = await writes.stop()
        elif scenario == "fanout":
            await _fanout(engine, sizes.warmup_workflows, sizes.fanout_steps)
            warnings.install("stalwart")
            await writes.start()
            batches0, ops0 = engine.committer.batches, engine.committer.ops
            spans = await _fanout(engine, sizes.fanout_workflows, sizes.fanout_steps)
            metrics = fanout_metrics(spans, sizes.fanout_steps)
            units = sizes.fanout_workflows
            sql = await writes.stop()
        elif scenario == "sleepers":
            warnings.install("stalwart")
            n = sizes.sleepers_big if big else sizes.sleepers
            seconds = sizes.sleep_seconds_big if big else sizes.sleep_seconds
            metrics = await _sleepers(engine, n, seconds, sizes)
            units = n
        elif scenario == "replay":
            warnings.install("stalwart")
            metrics = await _replay(engine, sizes)
        else:
            raise ValueError(f"unknown in-process scenario {scenario!r}")
        threads = thread_count()
        group = {
            "batches": engine.committer.batches - batches0,
            "ops": engine.committer.ops - ops0,
        }
        warnings.uninstall()
    return {
        "metrics": metrics,
        "settings": settings,
        "url": url,
        "version": stalwart.__version__,
        "sql": sql,
        "units": units,
        "threads": threads,
        "warnings": warnings.to_dict(),
        "group_commit": group,
    }


# ----------------------------------------------------------------- worker processes (proc.py)
def worker_options(target: Target, sizes: Sizes, phase: str) -> WorkerOptions:
    """Recovery workers: on PostgreSQL, a 2 s lease and a distinct host id per process,
    so the takeover is bounded by the lease (as between hosts), not by the same-host pid
    check; on SQLite the engine defaults (the pid check detects the dead worker)."""
    if target.store == "postgres":
        return WorkerOptions(
            lease_seconds=sizes.recovery_lease_seconds, host_id=f"bench-recovery-{phase}"
        )
    return WorkerOptions()


async def recovery_worker(spec: dict[str, Any], t_proc: float) -> None:
    """One worker process of the recovery scenario (killed in phase ``first``)."""
    t_imported = time.time()
    target = Target(**spec["target"])
    sizes = Sizes.from_dict(spec["sizes"])
    ctx = RunContext(spec["workdir"], pg_url=spec.get("pg_url"))
    side.configure(spec["side_path"])
    phase = spec["phase"]
    url = store_url(target, ctx)
    out: dict[str, Any] = {"pid": os.getpid(), "t_proc": t_proc, "t_imported": t_imported}
    engine = Engine(
        url,
        workflows=[slow_chain],
        activities=[slow_step],
        options=worker_options(target, sizes, phase),
    )
    async with engine:
        out["t_open"] = time.time()
        if phase == "first":
            handle = await slow_chain.start(
                engine, sizes.recovery_steps, sizes.recovery_step_ms, id=spec["wf_id"]
            )
            _write(spec["out"], out)
            await handle.result()
            out["finished_before_kill"] = True
        else:
            result = await engine.get_handle(spec["wf_id"]).result()
            out["t_done"] = time.time()
            out["result_ok"] = result == sum(range(sizes.recovery_steps))
        _write(spec["out"], out)


async def scale_worker(spec: dict[str, Any], t_proc: float) -> None:
    """One worker process of the scale scenario: runs until SIGTERM."""
    engine = Engine(spec["url"], workflows=[chain], activities=[step])
    try:
        await engine.run_worker()
    finally:
        await engine.close()


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
