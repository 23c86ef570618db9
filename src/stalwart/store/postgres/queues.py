"""Task queues and queue flow control, mirroring ``stalwart.store.sqlite_queues``.

SQLite runs every claim under its single write lock, so counting a queue's running tasks
and then claiming up to its limit is atomic. PostgreSQL claimers run concurrently, so a
claim of a *limited* queue (one with a concurrency or rate limit) first takes a
transaction-scoped advisory lock on that queue: claims of one queue are serialised and
each counts what the previous one committed. Locks are taken in sorted queue order, and
task queues and instance queues use separate lock keys, so claims cannot deadlock. The
rows themselves are picked with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import hashlib
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
from stalwart.store.postgres._common import ACTIVE, TERMINAL, Conn

TASK_RETENTION = 3600.0
"""Seconds a finished task is kept (rate limits count recent starts)."""
TASK_COLS = (
    "id, queue, instance_id, run_id, cmd, attempt, name, input, options, priority, "
    "not_before, created_at, started_at, owner, status"
)
_UNLIMITED = 1 << 30


def queue_lock_key(schema: str, kind: str, queue: str) -> int:
    """The advisory lock key serialising claims of one queue (a signed int64)."""
    raw = f"stalwart.queue:{schema}:{kind}:{queue}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


def is_limited(rules: QueueLimits) -> bool:
    """Whether claims of the queue must count (and so be serialised)."""
    return rules.concurrency is not None or rules.rate_limit is not None


async def lock_queues(conn: Conn, schema: str, kind: str, queues: list[str]) -> None:
    """Take the advisory locks of ``queues`` (sorted) until the transaction ends."""
    for queue in sorted(queues):
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s)", (queue_lock_key(schema, kind, queue),)
        )


# -- write operations (inside a Batch transaction) ---------------------------------------
async def enqueue(
    conn: Conn, codec: Codec, op: EnqueueTask, now: float
) -> tuple[WriteOutcome, bool]:
    """Insert the task unless it exists; also tells whether a new task is ready now."""
    cur = await conn.execute(
        f"INSERT INTO tasks ({TASK_COLS}) VALUES "
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, 'ready') "
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
            float(op.not_before),
            now,
        ),
    )
    return WriteOutcome(True), bool(cur.rowcount) and op.not_before <= now


async def complete(
    conn: Conn, codec: Codec, op: CompleteTask, now: float
) -> tuple[WriteOutcome, str | None, str | None]:
    """Finish the owner's task and deliver its outcome to the instance's inbox.

    Also returns the id of the instance the outcome woke and the task's queue (``None``
    when refused).
    """
    cur = await conn.execute(
        "UPDATE tasks SET status = 'done', finished_at = %s WHERE id = %s AND owner = %s "
        "AND status = 'running' RETURNING instance_id, cmd, queue",
        (now, op.task_id, op.owner),
    )
    row = await cur.fetchone()
    if row is None:
        cur = await conn.execute("SELECT 1 FROM tasks WHERE id = %s", (op.task_id,))
        exists = await cur.fetchone() is not None
        return WriteOutcome(False, "conflict" if exists else "not_found"), None, None
    instance_id, cmd, queue = row
    # Row lock on the instance first: the message id is drawn while it is held.
    cur = await conn.execute(
        f"UPDATE instances SET wake_at = %s, updated_at = %s WHERE id = %s "
        f"AND status NOT IN {TERMINAL}",
        (now, now, instance_id),
    )
    if not cur.rowcount:
        return WriteOutcome(True), None, str(queue)
    await conn.execute(
        "INSERT INTO inbox (instance_id, kind, name, payload, time) VALUES (%s, %s, %s, %s, %s)",
        (instance_id, TASK_MESSAGE, str(cmd), codec.dumps(op.outcome), now),
    )
    return WriteOutcome(True), str(instance_id), str(queue)


# -- claims --------------------------------------------------------------------------------
async def claim_tasks(
    conn: Conn,
    codec: Codec,
    schema: str,
    worker_id: str,
    queues: Mapping[str, QueueLimits],
    limits: Mapping[str, int],
    now: float,
    *,
    held: Collection[str] | None = None,
) -> list[TaskRecord]:
    """Claim ready tasks within each queue's limits (inside a transaction); with ``held``,
    also the caller's orphaned claims (see ``Store.claim_tasks``)."""
    rules = {queue: queues.get(queue, QueueLimits()) for queue in limits}
    await lock_queues(conn, schema, "tasks", [q for q, r in rules.items() if is_limited(r)])
    claimed: list[TaskRecord] = []
    if held is not None:
        cur = await conn.execute(
            f"SELECT {TASK_COLS} FROM tasks WHERE queue = ANY(%s) AND status = 'running' "
            "AND owner = %s",
            (list(limits), worker_id),
        )
        claimed += [t for t in (_task(codec, r) for r in await cur.fetchall()) if t.id not in held]
    for queue, want in limits.items():
        room = min(want, await _task_room(conn, queue, rules[queue], now))
        if room <= 0:
            continue
        cur = await conn.execute(
            "WITH picked AS MATERIALIZED (SELECT id FROM tasks WHERE queue = %(queue)s AND ("
            " (status = 'ready' AND not_before <= %(now)s) OR (status = 'running' AND owner IN"
            "  (SELECT id FROM workers WHERE expires_at < %(now)s)))"
            " ORDER BY priority DESC, not_before, created_at, id LIMIT %(room)s"
            " FOR UPDATE SKIP LOCKED) "
            "UPDATE tasks SET status = 'running', owner = %(worker)s, started_at = %(now)s "
            "FROM picked WHERE tasks.id = picked.id RETURNING "
            + ", ".join(f"tasks.{c.strip()}" for c in TASK_COLS.split(",")),
            {"queue": queue, "now": now, "room": room, "worker": worker_id},
        )
        rows = await cur.fetchall()
        rows.sort(key=lambda r: (-r[9], r[10], r[11], r[0]))
        claimed += [_task(codec, r) for r in rows]
    await conn.execute(
        "DELETE FROM tasks WHERE status = 'done' AND finished_at < %s", (now - TASK_RETENTION,)
    )
    return claimed


async def _count(conn: Conn, query: str, params: tuple[Any, ...]) -> int:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def _task_room(conn: Conn, queue: str, rules: QueueLimits, now: float) -> int:
    room = _UNLIMITED
    if rules.concurrency is not None:
        running = await _count(
            conn,
            "SELECT COUNT(*) FROM tasks WHERE queue = %s AND status = 'running' AND owner NOT IN "
            "(SELECT id FROM workers WHERE expires_at < %s)",
            (queue, now),
        )
        room = min(room, rules.concurrency - running)
    if rules.rate_limit is not None:
        recent = await _count(
            conn,
            "SELECT COUNT(*) FROM tasks WHERE queue = %s AND started_at > %s",
            (queue, now - rules.rate_period),
        )
        room = min(room, rules.rate_limit - recent)
    return room


async def instance_room(
    conn: Conn, schema: str, queues: Mapping[str, QueueLimits], now: float
) -> dict[str, int]:
    """How many more instances each queue may start now (locks the limited ones)."""
    await lock_queues(conn, schema, "instances", [q for q, r in queues.items() if is_limited(r)])
    room: dict[str, int] = {}
    for name, rules in queues.items():
        free = _UNLIMITED
        if rules.concurrency is not None:
            running = await _count(
                conn,
                "SELECT COUNT(*) FROM instances WHERE queue = %s AND started_at IS NOT NULL "
                f"AND status IN {ACTIVE}",
                (name,),
            )
            free = min(free, rules.concurrency - running)
        if rules.rate_limit is not None:
            recent = await _count(
                conn,
                "SELECT COUNT(*) FROM instances WHERE queue = %s AND started_at > %s",
                (name, now - rules.rate_period),
            )
            free = min(free, rules.rate_limit - recent)
        room[name] = max(0, free)
    return room


async def stats(conn: Conn, queue: str) -> dict[str, int]:
    """Counts of the queue's tasks by status."""
    counts = {"ready": 0, "running": 0, "done": 0}
    cur = await conn.execute(
        "SELECT status, COUNT(*) FROM tasks WHERE queue = %s GROUP BY status", (queue,)
    )
    for status, count in await cur.fetchall():
        counts[status] = int(count)
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
