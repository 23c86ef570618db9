"""The DBOS Transact side: the same workflows on DBOS's system database (SQLite or
PostgreSQL).

DBOS has process-global state (``DBOS(config=...)`` is a singleton and decorators
register into a global registry), so each measurement runs in its own child process.

Durability on SQLite: out of the box DBOS opens its SQLite system database with
SQLAlchemy and only sets ``busy_timeout`` and ``foreign_keys`` on each connection (see
``dbos/_sys_db_sqlite.py``), so the file keeps SQLite's defaults: a rollback journal
(``journal_mode=delete``) and ``synchronous=FULL``. To compare like with like, the
benchmark adds a SQLAlchemy ``connect`` listener that switches every connection to
``journal_mode=WAL`` and the requested ``synchronous``, exactly what Stalwart's store
does, and reads both pragmas back from a connection of DBOS's own pool. On PostgreSQL
neither engine changes the server's durability settings; both are read back.

Recovery (``recovery`` and ``replay``): on ``DBOS.launch()`` DBOS looks up the PENDING
workflows of its own executor id (``DBOS__VMID`` or ``"local"``) and application version
(``application_version`` in the config, here ``"bench"``) and re-enqueues them on its
internal queue (``dbos/_recovery.py``); the queue thread then dequeues and re-runs them,
every step already recorded returning its recorded output. The restarted process uses
the same executor id and application version as the killed one.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import statistics
import threading
import time
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SetWorkflowID
from sqlalchemy import event

from bench import side
from bench.common import (
    SYNC_NAMES,
    RunContext,
    Sizes,
    SqlCounter,
    Target,
    WarningCounter,
    WriteCounter,
    busy_percent,
    cpu_times,
    database_name,
    fanout_metrics,
    percentile,
    postgres_cpu_seconds,
    proc_status_kib,
    process_cpu_seconds,
    replay_events_to_steps,
    rss_after_gc_kib,
    seq_metrics,
    thread_count,
)

APP_VERSION = "bench"


@DBOS.step()
async def step(i: int) -> int:
    """The no-op step."""
    return i


@DBOS.workflow()
async def chain(n: int) -> int:
    """``n`` sequential no-op steps."""
    total = 0
    for i in range(n):
        total += await step(i)
    return total


@DBOS.workflow()
async def sleeper(seconds: float) -> int:
    """One durable sleep."""
    await DBOS.sleep_async(seconds)
    return 1


@DBOS.step()
async def slow_step(i: int, ms: float) -> int:
    """A short step that records each execution in the side table."""
    side.record(i)
    await asyncio.sleep(ms / 1000.0)
    return i


@DBOS.workflow()
async def slow_chain(n: int, ms: float) -> int:
    """``n`` sequential short steps (the recovery scenario)."""
    total = 0
    for i in range(n):
        total += await slow_step(i, ms)
    return total


MARKS: dict[str, float] = {}
REBUILT = threading.Event()


@DBOS.workflow()
async def chain_then_wait(n: int) -> int:
    """``n`` no-op steps, then a wait for a message that never comes (the replay
    scenario). Entry and the end of the loop are marked in this process's memory."""
    MARKS.setdefault("entered", time.perf_counter())
    total = 0
    for i in range(n):
        total += await step(i)
    MARKS["rebuilt"] = time.perf_counter()
    REBUILT.set()
    await DBOS.recv_async("never", timeout_seconds=3600)
    return total


def _install_connect_hook(counter: SqlCounter | None, synchronous: str | None) -> None:
    """On every new SQLite connection: count statements and (unless using DBOS's
    defaults) set WAL and the requested ``synchronous``."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if not hasattr(dbapi_conn, "set_trace_callback"):
            return  # not SQLite
        if synchronous is not None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")
        if counter is not None:
            dbapi_conn.set_trace_callback(counter)

    event.listen(sa.engine.Engine, "connect", on_connect)


def system_database_url(target: Target, ctx: RunContext) -> str:
    """DBOS's system database: a SQLite file in the work directory, or the fresh
    PostgreSQL database of this measurement."""
    if target.store == "postgres":
        assert ctx.pg_url is not None
        return ctx.pg_url
    return f"sqlite:///{os.path.join(ctx.workdir, 'dbos.sqlite')}"


def launch(target: Target, ctx: RunContext, counter: SqlCounter | None = None) -> DBOS:
    """Configure and launch DBOS for ``target`` (recovering this executor's pending
    workflows, as every launch does)."""
    if target.store == "sqlite":
        _install_connect_hook(counter, target.synchronous)
    config: DBOSConfig = {
        "name": "stalwart_bench",
        "system_database_url": system_database_url(target, ctx),
        "log_level": "WARNING",
        "application_version": APP_VERSION,
    }
    logging.getLogger("dbos").setLevel(logging.WARNING)
    dbos = DBOS(config=config)
    DBOS.launch()
    return dbos


def _table(dbos: DBOS, name: str) -> str:
    return name if dbos._sys_db.engine.dialect.name == "sqlite" else f"dbos.{name}"


def settings_of(dbos: DBOS) -> dict[str, str]:
    """The durability settings on a connection of DBOS's own pool."""
    engine = dbos._sys_db.engine
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
            return {
                "journal_mode": str(journal),
                "synchronous": SYNC_NAMES.get(int(sync), str(sync)),
            }
        return {
            name: str(conn.exec_driver_sql(f"SHOW {name}").scalar())
            for name in ("synchronous_commit", "fsync", "wal_sync_method")
        }


def _count(dbos: DBOS, sql: str, params: dict[str, Any] | None = None) -> int:
    with dbos._sys_db.engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params or {}).scalar() or 0)


# ------------------------------------------------------------------------------ seq/fanout
async def _seq(n: int) -> float:
    t0 = time.perf_counter()
    handle = await DBOS.start_workflow_async(chain, n)
    result = await handle.get_result()
    elapsed = time.perf_counter() - t0
    assert result == sum(range(n)), result
    return elapsed


async def _fanout(
    workflows: int, steps: int, prefix: str | None = None
) -> list[tuple[float, float]]:
    expected = sum(range(steps))

    async def one(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        if prefix is None:
            handle = await DBOS.start_workflow_async(chain, steps)
        else:
            with SetWorkflowID(f"{prefix}{i}"):
                handle = await DBOS.start_workflow_async(chain, steps)
        result = await handle.get_result()
        t1 = time.perf_counter()
        assert result == expected, result
        return t0, t1

    return list(await asyncio.gather(*(one(i) for i in range(workflows))))


# -------------------------------------------------------------------------------- sleepers
async def _start_sleepers(n: int, seconds: float, concurrency: int) -> None:
    """``concurrency`` lanes take start calls from one shared counter (as on the
    Stalwart side: only that many starting coroutines exist at a time)."""
    todo = iter(range(n))

    async def lane() -> None:
        for _ in todo:
            await DBOS.start_workflow_async(sleeper, seconds)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))


async def _wait_sleeping(dbos: DBOS, count: int, timeout: float) -> None:
    """Until ``count`` sleeps are recorded (DBOS writes the wake-up time as a step
    before it starts waiting)."""
    table = _table(dbos, "operation_outputs")
    sql = f"SELECT count(*) FROM {table} WHERE function_name = 'DBOS.sleep'"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_count, dbos, sql) >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {count} sleeps recorded after {timeout:.0f} s")


async def _sleepers(dbos: DBOS, sizes: Sizes) -> dict[str, Any]:
    n, seconds = sizes.sleepers_dbos, sizes.sleep_seconds
    await _start_sleepers(sizes.warmup_sleepers, seconds, sizes.start_concurrency)
    await _wait_sleeping(dbos, sizes.warmup_sleepers, 120)
    await asyncio.sleep(0.2)
    rss0 = rss_after_gc_kib()
    t0 = time.perf_counter()
    await _start_sleepers(n, seconds, sizes.start_concurrency)
    started = time.perf_counter() - t0
    await _wait_sleeping(dbos, sizes.warmup_sleepers + n, max(120.0, seconds))
    blocked = time.perf_counter() - t0
    await asyncio.sleep(0.2)
    rss1 = rss_after_gc_kib()
    tasks = len(asyncio.all_tasks())
    done_sql = (
        f"SELECT count(*) FROM {_table(dbos, 'workflow_status')} WHERE status = 'SUCCESS' "
        "AND name LIKE '%sleeper%'"
    )
    finished = await asyncio.to_thread(_count, dbos, done_sql)
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
        "in_memory": tasks,
        "sleeping_in_store": n - finished,
        "released_in_store": 0,
        "asleep_ok": blocked < seconds and finished == 0,
    }


# ------------------------------------------------------------------------------------ run
async def run(scenario: str, target: Target, sizes: Sizes, ctx: RunContext) -> dict[str, Any]:
    """Run one measurement; return its metrics and the database's settings."""
    if scenario == "replay":
        return await replay_orchestrate(target, sizes, ctx)
    counter = SqlCounter()
    warnings = WarningCounter()
    writes = WriteCounter(target, ctx, counter)
    dbos = launch(target, ctx, counter)
    sql: dict[str, Any] | None = None
    units = 1
    try:
        settings = settings_of(dbos)
        if scenario == "seq":
            await _seq(sizes.warmup_steps)
            warnings.install("dbos")
            await writes.start()
            metrics = seq_metrics(await _seq(sizes.seq_steps), sizes.seq_steps)
            units = sizes.seq_steps
            sql = await writes.stop()
        elif scenario == "fanout":
            await _fanout(sizes.warmup_workflows, sizes.fanout_steps)
            warnings.install("dbos")
            await writes.start()
            spans = await _fanout(sizes.fanout_workflows, sizes.fanout_steps)
            metrics = fanout_metrics(spans, sizes.fanout_steps)
            units = sizes.fanout_workflows
            sql = await writes.stop()
        elif scenario == "scale":
            await _fanout(sizes.warmup_workflows, sizes.scale_steps)
            warnings.install("dbos")
            cpu0 = cpu_times()
            proc0 = process_cpu_seconds(os.getpid()) or 0.0
            pg0 = postgres_cpu_seconds(database_name(ctx.pg_url))
            spans = await _fanout(sizes.scale_workflows, sizes.scale_steps, prefix="m-")
            metrics = fanout_metrics(spans, sizes.scale_steps)
            metrics["cpu_busy_pct"] = busy_percent(cpu0, cpu_times())
            metrics["worker_cpu_s"] = [(process_cpu_seconds(os.getpid()) or 0.0) - proc0]
            metrics["postgres_cpu_s"] = postgres_cpu_seconds(database_name(ctx.pg_url)) - pg0
            metrics["procs"] = 1
            metrics.update(_store_timing(dbos, sizes.scale_workflows, sizes.scale_steps))
            units = sizes.scale_workflows
        elif scenario == "sleepers":
            warnings.install("dbos")
            metrics = await _sleepers(dbos, sizes)
            units = sizes.sleepers_dbos
        else:
            raise ValueError(f"unknown in-process scenario {scenario!r}")
        threads = thread_count()
        warnings.uninstall()
    finally:
        logging.getLogger("dbos").setLevel(logging.ERROR)  # teardown cancels the sleepers
        DBOS.destroy()
    return {
        "metrics": metrics,
        "settings": settings,
        "url": system_database_url(target, ctx),
        "version": importlib.metadata.version("dbos"),
        "sql": sql,
        "units": units,
        "threads": threads,
        "warnings": warnings.to_dict(),
    }


def _store_timing(dbos: DBOS, workflows: int, steps: int) -> dict[str, float]:
    """Throughput and latency from the system database's own timestamps (creation to
    last update) of the measured workflows, as the Stalwart scale rows are measured."""
    with dbos._sys_db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT created_at, updated_at FROM {_table(dbos, 'workflow_status')} "
                "WHERE workflow_uuid LIKE 'm-%'"
            )
        ).fetchall()
    created = [float(r[0]) / 1000 for r in rows]
    updated = [float(r[1]) / 1000 for r in rows]
    elapsed = max(updated) - min(created)
    lat = [u - c for c, u in zip(created, updated, strict=True)]
    return {
        "store_wf_per_s": len(rows) / elapsed,
        "store_elapsed_s": elapsed,
        "store_p50_ms": percentile(lat, 50) * 1e3,
        "store_p99_ms": percentile(lat, 99) * 1e3,
    }


# ---------------------------------------------------------------------------- recovery
async def recovery_worker(spec: dict[str, Any], t_proc: float) -> None:
    """One worker process of the recovery scenario (killed in phase ``first``)."""
    t_imported = time.time()
    target = Target(**spec["target"])
    sizes = Sizes.from_dict(spec["sizes"])
    ctx = RunContext(spec["workdir"], pg_url=spec.get("pg_url"))
    side.configure(spec["side_path"])
    out: dict[str, Any] = {"pid": os.getpid(), "t_proc": t_proc, "t_imported": t_imported}
    launch(target, ctx)  # the restart recovers the pending workflow here
    out["t_open"] = time.time()
    try:
        if spec["phase"] == "first":
            with SetWorkflowID(spec["wf_id"]):
                handle = await DBOS.start_workflow_async(
                    slow_chain, sizes.recovery_steps, sizes.recovery_step_ms
                )
            _write(spec["out"], out)
            await handle.get_result()
            out["finished_before_kill"] = True
        else:
            polling = await DBOS.retrieve_workflow_async(spec["wf_id"])
            result = await polling.get_result(polling_interval_sec=0.005)
            out["t_done"] = time.time()
            out["result_ok"] = result == sum(range(sizes.recovery_steps))
        _write(spec["out"], out)
    finally:
        DBOS.destroy()


# ------------------------------------------------------------------------------ replay
async def replay_orchestrate(target: Target, sizes: Sizes, ctx: RunContext) -> dict[str, Any]:
    """DBOS does not replay a history: recovery re-runs the workflow function, and each
    step already recorded returns its recorded output (one system-database read per
    step). For each size this builds a PENDING workflow with that many recorded steps in
    one process (which then exits without cleanup), and measures its recovery in fresh
    processes: from the recovered function's entry to passing its last recorded step."""
    from bench.proc import log_tail, read_result, spawn

    out: dict[str, Any] = {}
    settings: dict[str, str] = {}
    for events in sizes.replay_events:
        steps = replay_events_to_steps(events)
        wf_id = f"replay-{events}"
        spec = {
            "target": target.to_dict(),
            "sizes": sizes.to_dict(),
            "workdir": ctx.workdir,
            "pg_url": ctx.pg_url,
            "wf_id": wf_id,
            "steps": steps,
            "out": os.path.join(ctx.workdir, f"build-{events}.json"),
        }
        t0 = time.perf_counter()
        proc = spawn("dbos_replay_build", spec, ctx.workdir, f"build-{events}")
        code = await asyncio.to_thread(proc.wait, 900)
        built = read_result(spec["out"])
        if code != 0 or built is None:
            raise RuntimeError(
                f"replay build failed ({code}):\n{log_tail(ctx.workdir, f'build-{events}')}"
            )
        build_s = time.perf_counter() - t0
        settings = built["settings"]
        runs = []
        for r in range(sizes.dbos_recover_repeats):
            rspec = {**spec, "out": os.path.join(ctx.workdir, f"recover-{events}-{r}.json")}
            proc = spawn("dbos_replay_recover", rspec, ctx.workdir, f"recover-{events}-{r}")
            code = await asyncio.to_thread(proc.wait, 900)
            recovered = read_result(rspec["out"])
            if code != 0 or recovered is None:
                raise RuntimeError(
                    f"replay recovery failed ({code}):\n"
                    f"{log_tail(ctx.workdir, f'recover-{events}-{r}')}"
                )
            runs.append(recovered)
        _retire(target, ctx, wf_id)  # so the next size's processes do not recover it too
        rebuild = [r["rebuild_ms"] for r in runs]
        out[str(events)] = {
            "events": None,
            "steps": steps,
            "recorded_steps": runs[0]["recorded_steps"],
            "build_s": build_s,
            "load_ms": None,
            "replay_ms": statistics.median(rebuild),
            "total_ms": statistics.median(rebuild),
            "total_min_ms": min(rebuild),
            "total_max_ms": max(rebuild),
            "launch_to_rebuilt_ms": statistics.median(r["launch_to_rebuilt_ms"] for r in runs),
            "us_per_event": None,
            "us_per_step": statistics.median(rebuild) * 1e3 / steps,
        }
    return {
        "metrics": out,
        "settings": settings,
        "url": system_database_url(target, ctx),
        "version": importlib.metadata.version("dbos"),
        "sql": None,
        "units": 1,
        "threads": None,
        "warnings": {"count": 0, "samples": []},
    }


def _retire(target: Target, ctx: RunContext, wf_id: str) -> None:
    """Mark a replay workflow CANCELLED directly in the system database (no DBOS launch,
    which would recover it once more)."""
    sql = "UPDATE {t} SET status = 'CANCELLED' WHERE workflow_uuid = {p}"
    if target.store == "postgres":
        import psycopg

        assert ctx.pg_url is not None
        with psycopg.connect(ctx.pg_url, autocommit=True) as conn:
            conn.execute(sql.format(t="dbos.workflow_status", p="%s"), (wf_id,))
        return
    import sqlite3

    conn = sqlite3.connect(os.path.join(ctx.workdir, "dbos.sqlite"), isolation_level=None)
    try:
        conn.execute(sql.format(t="workflow_status", p="?"), (wf_id,))
    finally:
        conn.close()


async def replay_build(spec: dict[str, Any]) -> None:
    """Record ``steps`` steps of ``chain_then_wait`` and exit without any cleanup while
    it waits (the workflow stays PENDING, owned by this executor id)."""
    target = Target(**spec["target"])
    ctx = RunContext(spec["workdir"], pg_url=spec.get("pg_url"))
    dbos = launch(target, ctx)
    with SetWorkflowID(spec["wf_id"]):
        await DBOS.start_workflow_async(chain_then_wait, spec["steps"])
    while not REBUILT.is_set():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # let the recv record its timeout step
    _write(spec["out"], {"settings": settings_of(dbos)})
    os._exit(0)


async def replay_recover(spec: dict[str, Any]) -> None:
    """Launch DBOS (which recovers the pending workflow) and time its re-execution
    through the recorded steps; exit without cleanup so it stays pending."""
    target = Target(**spec["target"])
    ctx = RunContext(spec["workdir"], pg_url=spec.get("pg_url"))
    t0 = time.perf_counter()
    dbos = launch(target, ctx)
    deadline = time.monotonic() + 600
    while not REBUILT.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    if not REBUILT.is_set():
        os._exit(3)
    recorded = _count(
        dbos,
        f"SELECT count(*) FROM {_table(dbos, 'operation_outputs')} WHERE workflow_uuid = :w",
        {"w": spec["wf_id"]},
    )
    _write(
        spec["out"],
        {
            "rebuild_ms": (MARKS["rebuilt"] - MARKS["entered"]) * 1e3,
            "launch_to_rebuilt_ms": (MARKS["rebuilt"] - t0) * 1e3,
            "recorded_steps": recorded,
        },
    )
    os._exit(0)


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
