"""Task queues and queue flow control for the SQLite store (called inside its transactions)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from typing import Any

from stalwart.codec import Codec
from stalwart.store.base import (
    TASK_MESSAGE,
    CompleteTask,
    EnqueueTask,
    QueueLimits,
    TaskRecord,
    WriteOutcome,
)

TASK_RETENTION = 3600.0
"""Seconds a finished task is kept (rate limits count recent starts)."""
_TASK_COLS = (
    "id, queue, instance_id, run_id, cmd, attempt, name, input, options, priority, "
    "not_before, created_at, started_at, owner, status"
)
_TERMINAL = "('completed', 'failed', 'cancelled', 'terminated', 'timed_out', 'compensated')"


def enqueue(conn: sqlite3.Connection, codec: Codec, op: EnqueueTask, now: float) -> WriteOutcome:
    """Insert the task unless it exists."""
    conn.execute(
        f"INSERT INTO tasks ({_TASK_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL,NULL,'ready') "
        "ON CONFLICT (id) DO NOTHING",
        (
            op.id,
            op.queue,
            op.instance_id,
            op.run_id,
            op.cmd,
            op.attempt,
            op.name,
            codec.dumps(op.input),
            codec.dumps(op.options),
            op.priority,
            op.not_before,
            now,
        ),
    )
    return WriteOutcome(True)


def complete(conn: sqlite3.Connection, codec: Codec, op: CompleteTask, now: float) -> WriteOutcome:
    """Finish the owner's task and deliver its outcome to the instance's inbox."""
    row = conn.execute(
        "UPDATE tasks SET status = 'done', finished_at = ? WHERE id = ? AND owner = ? "
        "AND status = 'running' RETURNING instance_id, cmd",
        (now, op.task_id, op.owner),
    ).fetchone()
    if row is None:
        exists = conn.execute("SELECT 1 FROM tasks WHERE id = ?", (op.task_id,)).fetchone()
        return WriteOutcome(False, "conflict" if exists else "not_found")
    instance_id, cmd = row
    cur = conn.execute(
        f"UPDATE instances SET wake_at = ?, updated_at = ? WHERE id = ? "
        f"AND status NOT IN {_TERMINAL}",
        (now, now, instance_id),
    )
    if cur.rowcount:
        conn.execute(
            "INSERT INTO inbox (instance_id, kind, name, payload, time) VALUES (?, ?, ?, ?, ?)",
            (instance_id, TASK_MESSAGE, str(cmd), codec.dumps(op.outcome), now),
        )
    return WriteOutcome(True)


def claim_tasks(
    conn: sqlite3.Connection,
    codec: Codec,
    worker_id: str,
    queues: Mapping[str, QueueLimits],
    limits: Mapping[str, int],
    now: float,
    *,
    held: Collection[str] | None = None,
) -> list[TaskRecord]:
    """Claim ready tasks within each queue's limits (inside a write transaction); with
    ``held``, also the caller's orphaned claims (see ``Store.claim_tasks``)."""
    claimed: list[TaskRecord] = []
    if held is not None:
        for queue in limits:
            rows = conn.execute(
                f"SELECT {_TASK_COLS} FROM tasks WHERE queue = ? AND status = 'running' "
                "AND owner = ?",
                (queue, worker_id),
            ).fetchall()
            claimed += [t for t in (_task(codec, r) for r in rows) if t.id not in held]
    for queue, want in limits.items():
        room = min(want, _room(conn, queue, queues.get(queue, QueueLimits()), now))
        if room <= 0:
            continue
        rows = conn.execute(
            f"UPDATE tasks SET status = 'running', owner = ?, started_at = ? WHERE id IN ("
            f" SELECT id FROM tasks WHERE queue = ? AND ("
            f"  (status = 'ready' AND not_before <= ?) OR (status = 'running' AND owner IN "
            f"   (SELECT id FROM workers WHERE expires_at < ?)))"
            f" ORDER BY priority DESC, not_before, created_at, id LIMIT ?) "
            f"RETURNING {_TASK_COLS}",
            (worker_id, now, queue, now, now, room),
        ).fetchall()
        claimed += [_task(codec, r) for r in rows]
    conn.execute(
        "DELETE FROM tasks WHERE status = 'done' AND finished_at < ?", (now - TASK_RETENTION,)
    )
    return claimed


def _room(conn: sqlite3.Connection, queue: str, rules: QueueLimits, now: float) -> int:
    room = 1 << 30
    if rules.concurrency is not None:
        (running,) = conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE queue = ? AND status = 'running' AND owner NOT IN "
            "(SELECT id FROM workers WHERE expires_at < ?)",
            (queue, now),
        ).fetchone()
        room = min(room, rules.concurrency - running)
    if rules.rate_limit is not None:
        (recent,) = conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE queue = ? AND started_at > ?",
            (queue, now - rules.rate_period),
        ).fetchone()
        room = min(room, rules.rate_limit - recent)
    return room


def instance_room(
    conn: sqlite3.Connection, queues: Mapping[str, QueueLimits], now: float
) -> dict[str, int]:
    """How many more instances each limited queue may start now."""
    room: dict[str, int] = {}
    for name, rules in queues.items():
        free = 1 << 30
        if rules.concurrency is not None:
            (running,) = conn.execute(
                "SELECT COUNT(*) FROM instances WHERE queue = ? AND started_at IS NOT NULL "
                "AND status IN ('pending', 'running', 'compensating')",
                (name,),
            ).fetchone()
            free = min(free, rules.concurrency - running)
        if rules.rate_limit is not None:
            (recent,) = conn.execute(
                "SELECT COUNT(*) FROM instances WHERE queue = ? AND started_at > ?",
                (name, now - rules.rate_period),
            ).fetchone()
            free = min(free, rules.rate_limit - recent)
        room[name] = max(0, free)
    return room


def stats(conn: sqlite3.Connection, queue: str) -> dict[str, int]:
    """Counts of the queue's tasks by status."""
    counts = {"ready": 0, "running": 0, "done": 0}
    for status, count in conn.execute(
        "SELECT status, COUNT(*) FROM tasks WHERE queue = ? GROUP BY status", (queue,)
    ):
        counts[status] = count
    return counts


def _task(codec: Codec, row: Any) -> TaskRecord:
    return TaskRecord(
        id=row[0],
        queue=row[1],
        instance_id=row[2],
        run_id=row[3],
        cmd=row[4],
        attempt=row[5],
        name=row[6],
        input=codec.loads(row[7]),
        options=codec.loads(row[8]),
        priority=row[9],
        not_before=row[10],
        created_at=row[11],
        started_at=row[12],
        owner=row[13],
        status=row[14],
    )
