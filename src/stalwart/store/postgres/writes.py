"""Write batches: every operation of one ``Store.write`` call, applied in one transaction.

Each operation mirrors :class:`stalwart.store.sqlite.SQLiteStore` statement for statement,
with one rule added for PostgreSQL's READ COMMITTED isolation: **an operation locks the
instance row before it reads anything that depends on it** (a ``SELECT ... FOR UPDATE``,
or an ``UPDATE`` whose ``WHERE`` holds the compare-and-set). Every writer of an instance's
inbox (SendMessage, child notifications, Reopen, acknowledgements, Terminate) holds that
row lock, and each statement of a READ COMMITTED transaction takes a fresh snapshot, so once
the lock is held the transaction sees every committed message of the instance. That keeps
two invariants under concurrency:

* an AppendEvents that leaves messages unacknowledged makes the instance due now (a
  message committed while the step waited for the lock is seen by the ``EXISTS`` check);
* message ids of one instance increase in commit order (the id is drawn after the row
  lock is taken), so a reader that saw message *n* never later finds one below *n*.

A refused operation changes nothing: each is refused by its first statement, before any
write. Deadlocks between batches (two steps signalling each other's instances) abort one
transaction as a whole; :class:`~stalwart.store.postgres.store.PostgresStore` retries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from stalwart._engine.events import TERMINAL_EVENTS, Event, WorkflowStarted
from stalwart.codec import Codec
from stalwart.errors import StoreError
from stalwart.store.base import (
    ACTIVE_STATUSES,
    CHILD_MESSAGE,
    TERMINAL_STATUSES,
    AppendEvents,
    CompleteTask,
    CreateInstance,
    EnqueueTask,
    InstanceRecord,
    Reopen,
    Resume,
    SendMessage,
    Suspend,
    Terminate,
    WriteOp,
    WriteOutcome,
    child_id_taken,
    child_outcome,
)
from stalwart.store.postgres import queues
from stalwart.store.postgres._common import ACTIVE, INSTANCE_COLS, TERMINAL, decode_instance
from stalwart.store.postgres.pipelined import (
    APPEND_BATCH_SQL,
    CREATE_SQL,
    INSERT_INSTANCE,
    append_batch_params,
    append_outcome,
    create_params,
    instance_params,
    lone_step_call,
    one_statement,
    one_statement_create,
)

Cursor = AsyncCursor[tuple[Any, ...]]


class Batch:
    """Applies the operations of one write batch inside an open transaction."""

    def __init__(
        self, cur: Cursor, codec: Codec, now: float, channel: str, queue_channel: str
    ) -> None:
        self._cur = cur
        self._codec = codec
        self._now = now
        self._channel = channel
        self._queue_channel = queue_channel
        self._wake: dict[str, None] = {}
        self._queues: dict[str, None] = {}

    async def apply_all(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Apply ``ops`` in order; a run of plain steps goes as one ``stalwart_append_batch``
        call and a run of starts as one pipelined ``executemany`` (one round trip instead of
        one or more per operation)."""
        outcomes: list[WriteOutcome] = []
        steps: list[AppendEvents] = []
        starts: list[CreateInstance] = []
        for op in ops:
            if one_statement(op):
                if starts:
                    outcomes += await self._flush((), starts)
                    starts = []
                steps.append(op)
            elif one_statement_create(op):
                if steps:
                    outcomes += await self._flush(steps, ())
                    steps = []
                starts.append(op)
            else:
                outcomes += await self._flush(steps, starts)
                steps, starts = [], []
                outcomes.append(await self.apply(op))
        outcomes += await self._flush(steps, starts)
        return outcomes

    async def _flush(
        self, steps: Sequence[AppendEvents], starts: Sequence[CreateInstance]
    ) -> list[WriteOutcome]:
        if len(steps) == 1:
            query, call = lone_step_call(
                steps[0], self._codec, self._now, self._channel, self._queue_channel
            )
            return [append_outcome(row) for row in await self._pipelined(query, [call])]
        if steps:
            batch = append_batch_params(
                steps, self._codec, self._now, self._channel, self._queue_channel
            )
            await self._cur.execute(APPEND_BATCH_SQL, batch)
            results = await self._cur.fetchall()
            assert len(results) == len(steps), (len(results), len(steps))
            return [append_outcome(row) for row in results]
        if starts:
            params = [create_params(op, self._codec, self._now) for op in starts]
            rows = await self._pipelined(CREATE_SQL, params)
            outcomes = []
            for op, row in zip(starts, rows, strict=True):
                if row is None:  # the id is taken: the full create sorts it out
                    outcomes.append(await self._create(op))
                    continue
                if not op.owner:
                    self._due_now(op.id)
                record = decode_instance(self._codec, row)
                outcomes.append(WriteOutcome(True, record=record, created=True))
            return outcomes
        return []

    async def _pipelined(
        self, query: str, params: Sequence[tuple[Any, ...] | dict[str, Any]]
    ) -> list[tuple[Any, ...] | None]:
        """One statement per parameter set, sent in one pipeline; each one's first row."""
        cur = self._cur
        await cur.executemany(query, params, returning=True)
        rows = [await cur.fetchone()]
        while cur.nextset():
            rows.append(await cur.fetchone())
        assert len(rows) == len(params), (len(rows), len(params))
        return rows

    async def apply(self, op: WriteOp) -> WriteOutcome:
        """Apply one operation (and, for AppendEvents, its effects)."""
        if isinstance(op, CreateInstance):
            return await self._create(op)
        if isinstance(op, EnqueueTask):
            outcome, ready = await queues.enqueue(self._cur.connection, self._codec, op, self._now)
            if ready:
                self._queue_has_work(op.queue)
            return outcome
        if isinstance(op, CompleteTask):
            outcome, woken, queue = await queues.complete(
                self._cur.connection, self._codec, op, self._now
            )
            if woken is not None:
                self._due_now(woken)
            if queue is not None:
                self._queue_has_work(queue)  # a slot is free
            return outcome
        if isinstance(op, AppendEvents):
            return await self._append(op)
        if isinstance(op, SendMessage):
            return await self._send(op)
        if isinstance(op, Terminate):
            return await self._terminate(op)
        if isinstance(op, Suspend):
            return await self._suspend(op)
        if isinstance(op, Reopen):
            return await self._reopen(op)
        return await self._resume(op)

    async def flush_notifications(self) -> None:
        """NOTIFY every instance that became due now, and every queue that may have work
        for a claimer (a ready task, a freed slot); delivered when the batch commits."""
        for channel, payloads in (
            (self._channel, self._wake),
            (self._queue_channel, self._queues),
        ):
            if payloads:
                await self._cur.execute(
                    "SELECT pg_notify(%s, w) FROM unnest(%s::text[]) AS w",
                    (channel, list(payloads)),
                )

    def _due_now(self, instance_id: str) -> None:
        self._wake[instance_id] = None

    def _queue_has_work(self, queue: str | None) -> None:
        if queue is not None:
            self._queues[queue] = None

    # -- operations --------------------------------------------------------------------
    async def _create(self, op: CreateInstance) -> WriteOutcome:
        now = self._now
        for _ in range(3):
            if op.dedup_key is not None:
                holder = await self._dedup_holder(op)
                if holder is not None:
                    return WriteOutcome(False, "duplicate", record=holder)
            # DO NOTHING on any unique index: the id, or the dedup key of an instance a
            # concurrent transaction created (the insert waits for it to commit).
            await self._cur.execute(INSERT_INSTANCE, instance_params(op, self._codec, now))
            row = await self._cur.fetchone()
            if row is not None:
                break
            existing = await self._get(op.id)
            if existing is not None:
                if op.parent_id is not None and (
                    existing.parent_id != op.parent_id or existing.input != op.input
                ):
                    await self._notify_parent(op.parent_id, op.id, child_id_taken(op.id))
                elif op.parent_id is not None and existing.status in TERMINAL_STATUSES:
                    # The same child, already ended: its outcome will not be sent again.
                    await self._notify_parent(op.parent_id, op.id, child_outcome(existing))
                return WriteOutcome(True, record=existing, created=False)
            # else: the key's holder ended between our insert and this read; try again
        else:
            raise StoreError(f"could not create {op.id!r}: its dedup key keeps changing hands")
        await self._insert_events(op.id, op.run_id, 0, [(now, op.started), *op.prefix])
        if not op.owner:
            self._due_now(op.id)
        return WriteOutcome(True, record=decode_instance(self._codec, row), created=True)

    async def _dedup_holder(self, op: CreateInstance) -> InstanceRecord | None:
        await self._cur.execute(
            f"SELECT {INSTANCE_COLS} FROM instances WHERE dedup_key = %s "
            f"AND status IN {ACTIVE} AND id <> %s",
            (op.dedup_key, op.id),
        )
        row = await self._cur.fetchone()
        return decode_instance(self._codec, row) if row is not None else None

    async def _append(self, op: AppendEvents) -> WriteOutcome:
        cur, now, dumps = self._cur, self._now, self._codec.dumps
        await cur.execute(
            "SELECT owner, epoch, history_len, status, run_id, parent_id, queue FROM instances "
            "WHERE id = %s FOR UPDATE",
            (op.instance_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return WriteOutcome(False, "not_found")
        owner, epoch, history_len, status, run_id, parent_id, queue = row
        if (
            owner != op.owner
            or epoch != op.epoch
            or history_len != op.expected_seq
            or status not in ACTIVE_STATUSES
        ):
            return WriteOutcome(False, "conflict")
        terminal = op.status is not None
        await cur.execute(
            "UPDATE instances SET status = %(status)s, needs_intervention = %(parked)s,"
            " output = CASE WHEN %(terminal)s THEN %(output)s ELSE output END,"
            " error = CASE WHEN %(terminal)s THEN %(error)s ELSE error END,"
            " updated_at = %(now)s,"
            " owner = CASE WHEN %(release)s OR %(terminal)s THEN NULL ELSE owner END,"
            " wake_at = CASE WHEN %(terminal)s THEN NULL"
            "   WHEN EXISTS (SELECT 1 FROM inbox WHERE instance_id = %(id)s AND id > %(upto)s)"
            "   THEN %(now)s ELSE %(wake_at)s::float8 END,"
            " history_len = %(history_len)s, current_step = %(step)s, recoveries = 0,"
            " search_attributes = COALESCE(%(attrs)s::jsonb, search_attributes) "
            "WHERE id = %(id)s RETURNING wake_at",
            {
                "status": op.status
                or op.active_status
                or ("running" if status == "pending" else status),
                "parked": op.needs_intervention and op.status == "failed",
                "terminal": terminal,
                "output": dumps(op.output) if terminal else None,
                "error": dumps(op.error) if op.error is not None else None,
                "now": now,
                "release": op.release,
                "id": op.instance_id,
                "upto": op.inbox_upto,
                "wake_at": op.wake_at,
                "history_len": op.expected_seq + len(op.events),
                "step": op.current_step,
                "attrs": Jsonb(op.search_attributes) if op.search_attributes is not None else None,
            },
        )
        updated = await cur.fetchone()
        assert updated is not None
        wake_at: float | None = updated[0]
        if op.events:
            await self._insert_events(op.instance_id, run_id, op.expected_seq, op.events)
        if op.inbox_upto:
            await cur.execute(
                "DELETE FROM inbox WHERE instance_id = %s AND id <= %s",
                (op.instance_id, op.inbox_upto),
            )
        if op.new_run is not None:
            wake_at = await self._continue_as_new(op.instance_id, op.new_run)
        for effect in op.effects:
            await self.apply(effect)
        if op.release and not terminal and wake_at is not None and wake_at <= now:
            self._due_now(op.instance_id)
        if terminal:
            self._queue_has_work(queue)  # it no longer counts against the queue's limit
        if terminal and parent_id is not None and not op.needs_intervention:
            rec = await self._get(op.instance_id)
            assert rec is not None
            await self._notify_parent(parent_id, op.instance_id, child_outcome(rec))
        return WriteOutcome(True)

    async def _continue_as_new(self, instance_id: str, started: Event) -> float | None:
        assert isinstance(started, WorkflowStarted)
        await self._cur.execute(
            "UPDATE instances SET run_id = %(run_id)s, input = %(input)s, history_len = 1, "
            "current_step = NULL, status = 'running', wake_at = CASE WHEN EXISTS "
            "(SELECT 1 FROM inbox WHERE instance_id = %(id)s) THEN %(now)s ELSE NULL END "
            "WHERE id = %(id)s RETURNING wake_at",
            {
                "run_id": started.run_id,
                "input": self._codec.dumps(started.input),
                "id": instance_id,
                "now": self._now,
            },
        )
        row = await self._cur.fetchone()
        assert row is not None
        await self._insert_events(instance_id, started.run_id, 0, [(self._now, started)])
        wake_at: float | None = row[0]
        return wake_at

    async def _notify_parent(self, parent_id: str, child_id: str, payload: dict[str, Any]) -> None:
        await self._cur.execute(
            f"UPDATE instances SET wake_at = %s, updated_at = %s WHERE id = %s "
            f"AND status NOT IN {TERMINAL}",
            (self._now, self._now, parent_id),
        )
        if self._cur.rowcount:
            await self._cur.execute(
                "INSERT INTO inbox (instance_id, kind, name, payload, time) "
                "VALUES (%s, %s, %s, %s, %s)",
                (parent_id, CHILD_MESSAGE, child_id, self._codec.dumps(payload), self._now),
            )
            self._due_now(parent_id)

    async def _send(self, op: SendMessage) -> WriteOutcome:
        cur, now = self._cur, self._now
        # The row lock comes first: the message id is drawn while it is held.
        await cur.execute(
            f"UPDATE instances SET wake_at = %s, updated_at = %s WHERE id = %s "
            f"AND status NOT IN {TERMINAL} RETURNING {INSTANCE_COLS}",
            (now, now, op.instance_id),
        )
        row = await cur.fetchone()
        if row is None:
            rec = await self._get(op.instance_id)
            if rec is None:
                return WriteOutcome(False, "not_found")
            return WriteOutcome(False, "closed", record=rec)
        await cur.execute(
            "INSERT INTO inbox (instance_id, kind, name, payload, time) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (op.instance_id, op.kind, op.name, self._codec.dumps(op.payload), now),
        )
        message = await cur.fetchone()
        assert message is not None
        self._due_now(op.instance_id)
        return WriteOutcome(
            True, record=decode_instance(self._codec, row), message_id=int(message[0])
        )

    async def _terminate(self, op: Terminate) -> WriteOutcome:
        cur, now = self._cur, self._now
        rec = await self._get(op.instance_id, lock=True)
        if rec is None:
            return WriteOutcome(False, "not_found")
        if rec.status in TERMINAL_STATUSES:
            return WriteOutcome(False, "closed", record=rec)
        status = TERMINAL_EVENTS[type(op.event)]
        error = {"type": op.event.kind, "message": getattr(op.event, "reason", "")}
        await cur.execute(
            "UPDATE instances SET status = %s, owner = NULL, epoch = epoch + 1, "
            "wake_at = NULL, history_len = history_len + 1, updated_at = %s, error = %s "
            f"WHERE id = %s RETURNING {INSTANCE_COLS}",
            (status, now, self._codec.dumps(error), op.instance_id),
        )
        row = await cur.fetchone()
        assert row is not None
        after = decode_instance(self._codec, row)
        await self._insert_events(rec.id, rec.run_id, rec.history_len, [(now, op.event)])
        await cur.execute("DELETE FROM inbox WHERE instance_id = %s", (op.instance_id,))
        self._queue_has_work(rec.queue)
        if rec.parent_id is not None:
            await self._notify_parent(rec.parent_id, rec.id, child_outcome(after))
        return WriteOutcome(True, record=after)

    async def _suspend(self, op: Suspend) -> WriteOutcome:
        await self._cur.execute(
            "UPDATE instances SET status = 'suspended', owner = NULL, wake_at = NULL, "
            "error = %s, updated_at = %s WHERE id = %s AND owner = %s AND epoch = %s "
            f"AND status IN {ACTIVE} RETURNING queue",
            (self._codec.dumps(op.error), self._now, op.instance_id, op.owner, op.epoch),
        )
        row = await self._cur.fetchone()
        if row is None:
            exists = await self._get(op.instance_id)
            return WriteOutcome(False, "conflict" if exists else "not_found")
        self._queue_has_work(row[0])
        return WriteOutcome(True)

    async def _resume(self, op: Resume) -> WriteOutcome:
        await self._cur.execute(
            "UPDATE instances SET status = 'running', owner = NULL, wake_at = %s, "
            "error = NULL, updated_at = %s, recoveries = 0 WHERE id = %s "
            "AND status = 'suspended' "
            f"RETURNING {INSTANCE_COLS}",
            (self._now, self._now, op.instance_id),
        )
        row = await self._cur.fetchone()
        if row is None:
            rec = await self._get(op.instance_id)
            return WriteOutcome(False, "not_found" if rec is None else "not_suspended", record=rec)
        self._due_now(op.instance_id)
        return WriteOutcome(True, record=decode_instance(self._codec, row))

    async def _reopen(self, op: Reopen) -> WriteOutcome:
        await self._cur.execute(
            "UPDATE instances SET status = 'compensating', needs_intervention = false, "
            "owner = NULL, wake_at = %s, updated_at = %s, error = NULL WHERE id = %s "
            f"AND status = 'failed' AND needs_intervention RETURNING {INSTANCE_COLS}",
            (self._now, self._now, op.instance_id),
        )
        row = await self._cur.fetchone()
        if row is None:
            rec = await self._get(op.instance_id)
            return WriteOutcome(False, "not_found" if rec is None else "not_parked", record=rec)
        await self._cur.execute(
            "INSERT INTO inbox (instance_id, kind, name, payload, time) "
            "VALUES (%s, 'intervention', '', %s, %s)",
            (op.instance_id, self._codec.dumps(None), self._now),
        )
        self._due_now(op.instance_id)
        return WriteOutcome(True, record=decode_instance(self._codec, row))

    # -- helpers -----------------------------------------------------------------------
    async def _get(self, instance_id: str, *, lock: bool = False) -> InstanceRecord | None:
        await self._cur.execute(
            f"SELECT {INSTANCE_COLS} FROM instances WHERE id = %s"
            + (" FOR UPDATE" if lock else ""),
            (instance_id,),
        )
        row = await self._cur.fetchone()
        return decode_instance(self._codec, row) if row is not None else None

    async def _insert_events(
        self,
        instance_id: str,
        run_id: str,
        seq: int,
        events: Sequence[tuple[float, Event]],
    ) -> None:
        dumps = self._codec.dumps
        await self._cur.execute(
            "INSERT INTO events (run_id, seq, instance_id, type, time, data) "
            "SELECT %s, s, %s, k, t, d "
            "FROM unnest(%b::int[], %b::text[], %b::float8[], %b::text[]) AS e(s, k, t, d)",
            (
                run_id,
                instance_id,
                list(range(seq, seq + len(events))),
                [e.kind for _, e in events],
                [float(t) for t, _ in events],
                [dumps(e.to_data()) for _, e in events],
            ),
        )
