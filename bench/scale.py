"""The scale scenario (PostgreSQL only): fan-out throughput with 1, 2, 4 worker processes.

The measurement's child process is the client: ``Engine(url, worker=False)`` starts the
workflows, and ``procs`` separate worker processes (``bench.proc stalwart_scale``, each
``engine.run_worker()``) run the workflows and their activities. The client waits until
every worker registered, runs a warm-up, then starts 1,000 ``chain(5)`` workflows at once
(ids ``m-0`` .. ``m-999``) and polls the store until all completed.

Throughput and latency come from the store's own timestamps, so neither the client's
polling nor its clock matters: ``created_at`` (start committed) and ``updated_at`` (the
completion committed) of each workflow, both taken from the database clock;
``workflows/s = 1000 / (last completion - first creation)``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from bench.common import (
    RunContext,
    Sizes,
    Target,
    busy_percent,
    cpu_times,
    database_name,
    percentile,
    postgres_cpu_seconds,
    process_cpu_seconds,
)
from bench.proc import log_tail, spawn


async def _wait_done(store: Any, prefix: str, n: int, timeout: float) -> None:
    query = f"SELECT count(*) FROM instances WHERE id LIKE '{prefix}%' AND status = 'completed'"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await store._fetchall(query)
        if int(rows[0][0]) >= n:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{prefix}: not all {n} workflows completed in {timeout:.0f} s")


async def run_stalwart(target: Target, sizes: Sizes, ctx: RunContext) -> dict[str, Any]:
    """Client here, ``target.procs`` worker processes."""
    from bench.stalwart_side import chain, settings_of, step
    from stalwart import Engine

    assert ctx.pg_url is not None
    url = ctx.pg_url
    workers = [
        spawn("stalwart_scale", {"url": url}, ctx.workdir, f"worker-{i}")
        for i in range(target.procs)
    ]
    try:
        async with Engine(url, worker=False, workflows=[chain], activities=[step]) as client:
            settings = await settings_of(client)
            deadline = time.monotonic() + 60
            while len(await client.live_workers()) < target.procs:
                for i, w in enumerate(workers):
                    if w.poll() is not None:
                        raise RuntimeError(
                            f"worker {i} exited ({w.returncode}):\n"
                            f"{log_tail(ctx.workdir, f'worker-{i}')}"
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError("workers did not register within 60 s")
                await asyncio.sleep(0.05)
            store = client.store
            n, steps = sizes.scale_workflows, sizes.scale_steps
            await asyncio.gather(
                *(chain.start(client, steps, id=f"w-{i}") for i in range(sizes.warmup_workflows))
            )
            await _wait_done(store, "w-", sizes.warmup_workflows, 120)
            cpu0 = cpu_times()
            proc0 = [process_cpu_seconds(w.pid) or 0.0 for w in workers]
            client0 = process_cpu_seconds(os.getpid()) or 0.0
            pg0 = postgres_cpu_seconds(database_name(ctx.pg_url))
            t0 = time.perf_counter()
            await asyncio.gather(*(chain.start(client, steps, id=f"m-{i}") for i in range(n)))
            started = time.perf_counter() - t0
            await _wait_done(store, "m-", n, 300)
            seen = time.perf_counter() - t0
            cpu1 = cpu_times()
            proc1 = [process_cpu_seconds(w.pid) or 0.0 for w in workers]
            client1 = process_cpu_seconds(os.getpid()) or 0.0
            pg1 = postgres_cpu_seconds(database_name(ctx.pg_url))
            rows = await store._fetchall(  # type: ignore[attr-defined]
                "SELECT created_at, updated_at FROM instances WHERE id LIKE 'm-%'"
            )
            owners = await store._fetchall(  # type: ignore[attr-defined]
                "SELECT count(DISTINCT owner) FROM instances WHERE id LIKE 'm-%'"
            )
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                await asyncio.to_thread(w.wait, 20)
            except Exception:
                w.kill()
    created = [float(r[0]) for r in rows]
    updated = [float(r[1]) for r in rows]
    elapsed = max(updated) - min(created)
    lat = [u - c for c, u in zip(created, updated, strict=True)]
    metrics = {
        "procs": target.procs,
        "workflows": len(rows),
        "store_wf_per_s": len(rows) / elapsed,
        "store_elapsed_s": elapsed,
        "store_p50_ms": percentile(lat, 50) * 1e3,
        "store_p99_ms": percentile(lat, 99) * 1e3,
        "client_start_s": started,
        "client_seen_done_s": seen,
        "cpu_busy_pct": busy_percent(cpu0, cpu1),
        "worker_cpu_s": [b - a for a, b in zip(proc0, proc1, strict=True)],
        "client_cpu_s": client1 - client0,
        "postgres_cpu_s": pg1 - pg0,
        "owners_left": int(owners[0][0]) if owners else None,
    }
    return {
        "metrics": metrics,
        "settings": settings,
        "url": url,
        "sql": None,
        "units": n,
        "threads": None,
        "warnings": {"count": 0, "samples": []},
    }
