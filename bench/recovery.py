"""The recovery scenario: kill a worker half-way through a workflow, time the restart.

Runs in the measurement's child process, which only orchestrates (it imports neither
engine):

1. A worker process (``bench.proc``, phase ``first``) starts ``slow_chain(200)``: 200
   sequential activities, each recording its execution in the side table
   (:mod:`bench.side`) and then sleeping 1 ms (so the kill lands half-way).
2. When the side table shows ``kill_after`` (100) steps executed, the worker gets
   SIGKILL. The steps the engine had recorded at that point are counted in its store.
3. A fresh worker process (phase ``restart``) is started at ``t0``. It opens the engine,
   which takes the workflow over (Stalwart: the dead owner is detected by its pid on the
   same host with SQLite, or by lease expiry on PostgreSQL, where each process gets its
   own host id and a 2 s lease; DBOS: recovery of its executor's pending workflows at
   launch), and waits for the result. ``restart-to-done`` is ``t_done - t0``.
4. Duplicates: executions in the side table beyond one per step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from typing import Any

from bench import side
from bench.common import RunContext, Sizes, Target
from bench.proc import log_tail, read_result, spawn

WF_ID = "recovery-1"


def _recorded_steps(target: Target, ctx: RunContext) -> int | None:
    """Steps the engine recorded as completed, read from its store after the kill."""
    if target.engine == "stalwart":
        query = "SELECT count(*) FROM events WHERE instance_id = {p} AND type = 'ActivityCompleted'"
        sqlite_path = os.path.join(ctx.workdir, "bench.db")
        pg_table_schema = "stalwart"
    else:
        query = "SELECT count(*) FROM operation_outputs WHERE workflow_uuid = {p}"
        sqlite_path = os.path.join(ctx.workdir, "dbos.sqlite")
        pg_table_schema = "dbos"
    try:
        if target.store == "sqlite":
            conn = sqlite3.connect(sqlite_path, timeout=30)
            try:
                return int(conn.execute(query.format(p="?"), (WF_ID,)).fetchone()[0])
            finally:
                conn.close()
        import psycopg

        assert ctx.pg_url is not None
        with psycopg.connect(ctx.pg_url, autocommit=True) as pconn:
            pconn.execute(f"SET search_path = {pg_table_schema}")
            row = pconn.execute(query.format(p="%s"), (WF_ID,)).fetchone()
            return int(row[0]) if row else None
    except Exception:
        return None


async def run(target: Target, sizes: Sizes, ctx: RunContext) -> dict[str, Any]:
    """One kill-and-restart measurement."""
    role = f"{target.engine}_recovery"
    side_path = os.path.join(ctx.workdir, "side.db")
    side.create(side_path)
    base = {
        "target": target.to_dict(),
        "sizes": sizes.to_dict(),
        "workdir": ctx.workdir,
        "pg_url": ctx.pg_url,
        "side_path": side_path,
        "wf_id": WF_ID,
    }
    first_out = os.path.join(ctx.workdir, "first.json")
    first = spawn(role, {**base, "phase": "first", "out": first_out}, ctx.workdir, "first")
    deadline = time.monotonic() + 120
    executed = 0
    while time.monotonic() < deadline:
        if first.poll() is not None:
            raise RuntimeError(
                f"first worker exited ({first.returncode}) before the kill:\n"
                f"{log_tail(ctx.workdir, 'first')}"
            )
        executed = side.distinct_steps(side_path)
        if executed >= sizes.recovery_kill_after:
            break
        await asyncio.sleep(0.002)
    else:
        first.kill()
        raise RuntimeError(f"only {executed} steps executed in 120 s")
    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.time()
    first.wait()
    executed_before = side.distinct_steps(side_path)
    recorded = _recorded_steps(target, ctx)
    t0 = time.time()
    restart_out = os.path.join(ctx.workdir, "restart.json")
    restart = spawn(role, {**base, "phase": "restart", "out": restart_out}, ctx.workdir, "restart")
    code = await asyncio.to_thread(restart.wait, 300)
    out = read_result(restart_out)
    if code != 0 or out is None:
        raise RuntimeError(f"restarted worker failed ({code}):\n{log_tail(ctx.workdir, 'restart')}")
    summary = side.summary(side_path, sizes.recovery_steps, out["pid"])
    first_exec = summary["first_restart_execution"]
    remaining = sizes.recovery_steps - (recorded or 0)
    metrics = {
        "steps": sizes.recovery_steps,
        "step_ms": sizes.recovery_step_ms,
        "lease_s": (
            sizes.recovery_lease_seconds
            if target.store == "postgres" and target.engine == "stalwart"
            else None
        ),
        "executed_before_kill": executed_before,
        "recorded_at_kill": recorded,
        "remaining_steps": remaining,
        "restart_to_done_s": out["t_done"] - t0,
        "interpreter_s": out["t_proc"] - t0,
        "imports_s": out["t_imported"] - out["t_proc"],
        "restart_to_open_s": out["t_open"] - t0,
        "restart_to_resume_s": (first_exec - t0) if first_exec else None,
        "resume_to_done_s": (out["t_done"] - first_exec) if first_exec else None,
        "floor_s": remaining * sizes.recovery_step_ms / 1000.0,
        "kill_to_restart_s": t0 - killed_at,
        "duplicates": summary["duplicates"],
        "duplicated_steps": summary["duplicated_steps"],
        "missing_steps": summary["missing_steps"],
        "result_ok": out.get("result_ok"),
    }
    return {
        "metrics": metrics,
        "settings": {},
        "url": ctx.pg_url or ctx.workdir,
        "sql": None,
        "units": 1,
        "threads": None,
        "warnings": {"count": 0, "samples": []},
    }
