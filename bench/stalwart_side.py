"""The Stalwart side: the benchmark workflows and one measured run (in a child process)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import stalwart
from bench.common import (
    SYNC_NAMES,
    Sizes,
    SqlCounter,
    Target,
    WarningCounter,
    fanout_metrics,
    seq_metrics,
    thread_count,
)
from stalwart import Engine, WorkflowContext, activity, workflow
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


def _instrument(counter: SqlCounter) -> None:
    """Count every statement on every connection the SQLite store opens."""
    original = SQLiteStore.connect

    def connect(self: SQLiteStore) -> Any:
        conn = original(self)
        conn.set_trace_callback(counter)
        return conn

    SQLiteStore.connect = connect  # type: ignore[method-assign]


def store_url(target: Target, workdir: str) -> str:
    """The store URL for ``target`` (``FULL`` is Stalwart's default, so it is left out)."""
    if target.store == "memory":
        return "memory://"
    path = os.path.join(workdir, "bench.db")
    url = f"sqlite:///{path}"  # path is absolute: sqlite:////tmp/.../bench.db
    if target.synchronous is not None and target.synchronous != "FULL":
        url += f"?synchronous={target.synchronous}"
    return url


async def _settings(engine: Engine) -> dict[str, str]:
    """journal_mode and synchronous as the store's own writer connection reports them."""
    store = engine.store
    if not isinstance(store, SQLiteStore):
        return {"journal_mode": "n/a (memory)", "synchronous": "n/a (memory)"}

    def query() -> tuple[str, int]:
        conn = store._w
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        return str(journal), int(sync)

    journal, sync = await store._in(store._writer, query)
    return {"journal_mode": journal, "synchronous": SYNC_NAMES.get(sync, str(sync))}


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


async def run(scenario: str, target: Target, sizes: Sizes, workdir: str) -> dict[str, Any]:
    """Run one measurement; return its metrics and the store's settings."""
    counter = SqlCounter()
    warnings = WarningCounter()
    _instrument(counter)
    url = store_url(target, workdir)
    async with Engine(url, workflows=[chain], activities=[step]) as engine:
        settings = await _settings(engine)
        if scenario == "seq":
            await _seq(engine, sizes.warmup_steps)
            warnings.install("stalwart")
            before = counter.snapshot()
            batches0, ops0 = engine.committer.batches, engine.committer.ops
            metrics = seq_metrics(await _seq(engine, sizes.seq_steps), sizes.seq_steps)
            units = sizes.seq_steps
        else:
            await _fanout(engine, sizes.warmup_workflows, sizes.fanout_steps)
            warnings.install("stalwart")
            before = counter.snapshot()
            batches0, ops0 = engine.committer.batches, engine.committer.ops
            spans = await _fanout(engine, sizes.fanout_workflows, sizes.fanout_steps)
            metrics = fanout_metrics(spans, sizes.fanout_steps)
            units = sizes.fanout_workflows
        sql = SqlCounter.delta(before, counter.snapshot())
        threads = thread_count()
        batches = engine.committer.batches - batches0
        ops = engine.committer.ops - ops0
    return {
        "metrics": metrics,
        "settings": settings,
        "url": url,
        "version": stalwart.__version__,
        "sql": sql if target.store == "sqlite" else None,
        "units": units,
        "threads": threads,
        "warnings": warnings.to_dict(),
        "group_commit": {"batches": batches, "ops": ops},
    }
