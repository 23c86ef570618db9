"""SQLite store (``sqlite:///path.db``): the embedded default.

* WAL journal; ``synchronous`` is explicit (default ``FULL``: a commit is on disk when
  it returns; ``NORMAL`` may lose the last commits on power loss but not on a process
  crash). Pass it in the URL: ``sqlite:///app.db?synchronous=NORMAL``.
* One writer thread with its own connection executes write batches (group commit: one
  transaction, each operation a compare-and-set); a reader thread serves reads from the
  WAL snapshot without waiting for the writer.
* Write transactions start with ``BEGIN IMMEDIATE`` and wait for another process's
  write lock in SQLite's busy handler (on the writer thread only; an inline commit on
  the event loop hands over to it instead), so several processes share one file safely.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stalwart._engine.events import (
    TERMINAL_EVENTS,
    Event,
    HistoryEvent,
    WorkflowStarted,
    event_from_data,
)
from stalwart.codec import Codec, JsonCodec
from stalwart.errors import ConfigurationError, StoreError
from stalwart.store import sqlite_queues
from stalwart.store.base import (
    CHILD_MESSAGE,
    TERMINAL_STATUSES,
    AppendEvents,
    Claim,
    CompleteTask,
    CreateInstance,
    EnqueueTask,
    InboxMessage,
    InstanceRecord,
    ListFilter,
    Page,
    QueueLimits,
    Reopen,
    Resume,
    SendMessage,
    StoreCapabilities,
    Suspend,
    TaskRecord,
    Terminate,
    WorkerRecord,
    WriteOp,
    WriteOutcome,
    child_id_taken,
    child_outcome,
    new_instance_record,
)
from stalwart.store.cursor import decode_cursor, encode_cursor
from stalwart.store.migrations import load_migrations
from stalwart.store.sqlite_heartbeat import SQLiteHeartbeat

T = TypeVar("T")
_ACTIVE = "('pending', 'running', 'compensating')"
_TERMINAL = "('completed', 'failed', 'cancelled', 'terminated', 'timed_out', 'compensated')"
_INSTANCE_COLS = (
    "id, name, version, status, run_id, input, output, error, created_at, updated_at, "
    "owner, epoch, wake_at, history_len, current_step, parent_id, search_attributes, "
    "needs_intervention, queue, priority, dedup_key, started_at, recoveries"
)
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
READER_CACHE_KIB = 256
"""Page cache of the read connection (KiB); see ``_connect_reader``."""
INLINE_BUDGET = 0.002
"""Lone commits run on the event loop while they take less than this on average (with
FULL/EXTRA they wait for the disk: a slow disk sends them back to the writer thread)."""
INLINE_REPROBE = 64
"""Once over budget, every this-many-th lone commit is tried on the loop again."""
WAKE_POLL = 0.05
"""Seconds between checks for other processes' commits (see wait_for_wake)."""


class SQLiteStore:
    """A store in one SQLite file, shareable by several processes on one host."""

    capabilities = StoreCapabilities(durable=True, multi_process=True)

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
    ) -> None:
        if path in ("", ":memory:"):
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared between connections; "
                "use 'memory://' for a store in memory"
            )
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.path = path
        self.synchronous = synchronous
        self._codec = codec or JsonCodec()
        self._clock = clock
        self._busy_ms = int(busy_timeout * 1000)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="stalwart-sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="stalwart-sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._seen_version: int | None = None
        self._wlock = threading.Lock()
        # Committing on the event loop is only worth it while a commit is quick. With
        # OFF/NORMAL it always is; with FULL/EXTRA it waits for the disk, so the average
        # duration decides (a fast disk's fsync costs less than two thread hand-offs).
        self._always_inline = synchronous in ("OFF", "NORMAL")
        self._inline_cost = 0.0
        self._inline_skips = 0
        self._rconn: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        """A new connection configured for this store (WAL, busy timeout, synchronous)."""
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        _enable_wal(conn, self._busy_ms / 1000)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        return conn

    async def open(self) -> None:
        """Open the connections and apply migrations (serialised by the write lock)."""
        self._wconn = await self._in(self._writer, self.connect)
        await self._in(self._writer, self._migrate)
        self._rconn = await self._in(self._reader, self._connect_reader)

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self.connect()
        # The reader's page cache is emptied whenever another connection commits (every
        # step here), so SQLite's default 2 MiB would hold little but memory.
        conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
        return conn

    async def close(self) -> None:
        """Close connections and stop the threads."""
        if self._wconn is not None:
            await self._in(self._writer, self._close_writer)
        if self._rconn is not None:
            await self._in(self._reader, self._rconn.close)
            self._rconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    def _close_writer(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            conn.close()

    def _migrate(self) -> None:
        conn = self._w
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS stalwart_schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            row = conn.execute("SELECT MAX(version) FROM stalwart_schema_version").fetchone()
            current = row[0] or 0
            for migration in load_migrations("sqlite"):
                if migration.version <= current:
                    continue
                for statement in _split_sql(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO stalwart_schema_version VALUES (?, ?, ?)",
                    (migration.version, migration.name, self._clock()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def now(self) -> float:
        """The store's clock (this host's)."""
        return self._clock()

    @property
    def _w(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StoreError("the SQLite store is not open")
        return self._wconn

    @property
    def _r(self) -> sqlite3.Connection:
        if self._rconn is None:
            raise StoreError("the SQLite store is not open")
        return self._rconn

    async def _in(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if executor is self._writer:
            fn = functools.partial(self._locked, fn)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._wlock:
            conn = self._wconn
            if conn is None:
                return fn()
            # Only the writer thread may wait in SQLite's busy handler for another
            # process's write lock: outside it, the writer connection's timeout is zero,
            # so an inline commit on the event loop gives up at once instead (and needs
            # no statement to switch the timeout off and on around each step).
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                return fn()
            finally:
                if self._wconn is conn:  # not closed by fn
                    conn.execute("PRAGMA busy_timeout = 0")

    # -- writes ------------------------------------------------------------------------
    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Apply ``ops`` in one transaction (each op a compare-and-set).

        A lone operation with the writer connection idle is committed right here: two
        thread hand-offs cost more than the commit itself. Larger batches (a busy engine)
        go to the writer thread so the event loop keeps preparing the next batch.
        """
        if len(ops) == 1 and self._inline_wanted() and self._wlock.acquire(blocking=False):
            started = time.perf_counter()
            try:
                outcomes = self._write_batch(ops, wait=False)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error: {exc}") from exc
            finally:
                self._wlock.release()
                cost = time.perf_counter() - started
                self._inline_cost = 0.8 * self._inline_cost + 0.2 * cost
            if outcomes is not None:
                return outcomes
            # another process holds the write lock: wait for it off the loop
        return await self._in(self._writer, lambda: self._write_all(ops))

    def _inline_wanted(self) -> bool:
        if self._always_inline or self._inline_cost < INLINE_BUDGET:
            return True
        self._inline_skips += 1
        return self._inline_skips % INLINE_REPROBE == 0

    def _write_all(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        outcomes = self._write_batch(ops, wait=True)
        assert outcomes is not None
        return outcomes

    def _write_batch(self, ops: Sequence[WriteOp], *, wait: bool) -> list[WriteOutcome] | None:
        """Commit ``ops``; ``None`` when ``wait`` is false and another process holds the
        write lock (the event loop must not sleep in SQLite's busy handler)."""
        conn = self._w
        if wait:
            conn.execute("BEGIN IMMEDIATE")  # on the writer thread: see _locked
        else:
            try:
                conn.execute("BEGIN IMMEDIATE")  # busy timeout zero here: see _locked
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                return None
        try:
            now = self._clock()
            outcomes = [self._apply(conn, op, now) for op in ops]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def _apply(self, conn: sqlite3.Connection, op: WriteOp, now: float) -> WriteOutcome:
        if isinstance(op, CreateInstance):
            return self._create(conn, op, now)
        if isinstance(op, EnqueueTask):
            return sqlite_queues.enqueue(conn, self._codec, op, now)
        if isinstance(op, CompleteTask):
            return sqlite_queues.complete(conn, self._codec, op, now)
        if isinstance(op, AppendEvents):
            return self._append(conn, op, now)
        if isinstance(op, SendMessage):
            return self._send(conn, op, now)
        if isinstance(op, Terminate):
            return self._terminate(conn, op, now)
        if isinstance(op, Suspend):
            return self._suspend(conn, op, now)
        if isinstance(op, Reopen):
            return self._reopen(conn, op, now)
        return self._resume(conn, op, now)

    def _reopen(self, conn: sqlite3.Connection, op: Reopen, now: float) -> WriteOutcome:
        cur = conn.execute(
            "UPDATE instances SET status = 'compensating', needs_intervention = 0, owner = NULL, "
            "wake_at = ?, updated_at = ?, error = NULL WHERE id = ? AND status = 'failed' "
            "AND needs_intervention = 1",
            (now, now, op.instance_id),
        )
        if cur.rowcount == 0:
            rec = self._get(conn, op.instance_id)
            return WriteOutcome(False, "not_found" if rec is None else "not_parked", record=rec)
        conn.execute(
            "INSERT INTO inbox (instance_id, kind, name, payload, time) "
            "VALUES (?, 'intervention', '', ?, ?)",
            (op.instance_id, self._codec.dumps(None), now),
        )
        return WriteOutcome(True, record=self._get(conn, op.instance_id))

    def _create(self, conn: sqlite3.Connection, op: CreateInstance, now: float) -> WriteOutcome:
        dumps = self._codec.dumps
        if op.dedup_key is not None:
            holder = conn.execute(
                f"SELECT {_INSTANCE_COLS} FROM instances WHERE dedup_key = ? AND status IN "
                f"{_ACTIVE} AND id <> ?",
                (op.dedup_key, op.id),
            ).fetchone()
            if holder is not None:
                return WriteOutcome(False, "duplicate", record=self._record(holder))
        cur = conn.execute(
            f"INSERT INTO instances ({_INSTANCE_COLS}) "
            "VALUES (?, ?, ?, 'pending', ?, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, NULL, ?, NULL, 0, "
            "?, ?, ?, NULL, 0) "
            "ON CONFLICT (id) DO NOTHING",
            (
                op.id,
                op.name,
                op.version,
                op.run_id,
                dumps(op.input),
                now,
                now,
                op.owner,
                op.epoch,
                None if op.owner else now,
                1 + len(op.prefix),
                op.parent_id,
                op.queue,
                op.priority,
                op.dedup_key,
            ),
        )
        if cur.rowcount == 0:
            existing = self._get(conn, op.id)
            assert existing is not None
            if op.parent_id is not None and (
                existing.parent_id != op.parent_id or existing.input != op.input
            ):
                self._notify_parent(conn, op.parent_id, op.id, now, child_id_taken(op.id))
            elif op.parent_id is not None and existing.status in TERMINAL_STATUSES:
                # The same child, already ended: its outcome will not be sent again.
                self._notify_parent(conn, op.parent_id, op.id, now, child_outcome(existing))
            return WriteOutcome(True, record=existing, created=False)
        self._insert_events(conn, op.id, op.run_id, 0, [(now, op.started), *op.prefix])
        # The row just inserted, built from the operation rather than read back.
        return WriteOutcome(True, record=new_instance_record(op, now), created=True)

    def _insert_events(
        self,
        conn: sqlite3.Connection,
        instance_id: str,
        run_id: str,
        seq: int,
        events: Sequence[tuple[float, Any]],
    ) -> None:
        dumps = self._codec.dumps
        conn.executemany(
            "INSERT INTO events (run_id, seq, instance_id, type, time, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, seq + i, instance_id, e.kind, t, dumps(e.to_data()))
                for i, (t, e) in enumerate(events)
            ],
        )

    def _append(self, conn: sqlite3.Connection, op: AppendEvents, now: float) -> WriteOutcome:
        terminal = op.status is not None
        new_len = op.expected_seq + len(op.events)
        row = None
        # The first step (position 1: only WorkflowStarted recorded) moves the instance
        # from pending to running, so it goes straight to the full form.
        if not terminal and not op.release and op.expected_seq > 1:
            # Most steps change neither status nor owner. Naming those columns in SET makes
            # SQLite rewrite their index entries even when the value stays, and every page
            # so touched is one more WAL frame to fsync (5.3 frames per step instead of 2.3).
            # A status change (the first step, entering compensation) or a refusal falls
            # through to the full form.
            row = conn.execute(
                "UPDATE instances SET updated_at = ?1, needs_intervention = 0,"
                " wake_at = CASE"
                "   WHEN EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?2 AND id > ?3) THEN ?1"
                "   ELSE ?4 END,"
                " history_len = ?5, current_step = ?6, recoveries = 0 "
                "WHERE id = ?2 AND owner = ?7 AND epoch = ?8 AND history_len = ?9 "
                "AND status IN (coalesce(?10, 'running'), coalesce(?10, 'compensating')) "
                "RETURNING run_id, parent_id",
                (
                    now,
                    op.instance_id,
                    op.inbox_upto,
                    op.wake_at,
                    new_len,
                    op.current_step,
                    op.owner,
                    op.epoch,
                    op.expected_seq,
                    op.active_status,
                ),
            ).fetchone()
        if row is None:
            row = self._append_full(conn, op, now, new_len)
        if row is None:
            return WriteOutcome(False, self._refusal(conn, op.instance_id))
        run_id, parent_id = row
        if op.events:
            self._insert_events(conn, op.instance_id, run_id, op.expected_seq, op.events)
        if op.inbox_upto:
            conn.execute(
                "DELETE FROM inbox WHERE instance_id = ? AND id <= ?",
                (op.instance_id, op.inbox_upto),
            )
        if op.search_attributes is not None:
            conn.execute(
                "UPDATE instances SET search_attributes = ? WHERE id = ?",
                (json.dumps(op.search_attributes), op.instance_id),
            )
        if op.new_run is not None:
            self._continue_as_new(conn, op.instance_id, op.new_run, now)
        for effect in op.effects:
            self._apply(conn, effect, now)
        if terminal and parent_id is not None and not op.needs_intervention:
            rec = self._get(conn, op.instance_id)
            assert rec is not None
            self._notify_parent(conn, parent_id, op.instance_id, now, child_outcome(rec))
        return WriteOutcome(True)

    def _append_full(
        self, conn: sqlite3.Connection, op: AppendEvents, now: float, new_len: int
    ) -> tuple[str, str | None] | None:
        """The step's compare-and-set in its general form: status, owner and outcome too."""
        terminal = op.status is not None
        row: tuple[str, str | None] | None = conn.execute(
            "UPDATE instances SET "
            " status = CASE WHEN ?1 IS NOT NULL THEN ?1 WHEN ?14 IS NOT NULL THEN ?14 "
            "   WHEN status = 'pending' THEN 'running' ELSE status END,"
            " needs_intervention = ?15,"
            " output = CASE WHEN ?1 IS NOT NULL THEN ?2 ELSE output END,"
            " error = CASE WHEN ?1 IS NOT NULL THEN ?3 ELSE error END,"
            " updated_at = ?4,"
            " owner = CASE WHEN ?5 OR ?1 IS NOT NULL THEN NULL ELSE owner END,"
            " wake_at = CASE WHEN ?1 IS NOT NULL THEN NULL"
            "   WHEN EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?6 AND id > ?7) THEN ?4"
            "   ELSE ?8 END,"
            " history_len = ?9, current_step = ?10, recoveries = 0 "
            f"WHERE id = ?6 AND owner = ?11 AND epoch = ?12 AND history_len = ?13 "
            f"AND status IN {_ACTIVE} RETURNING run_id, parent_id",
            (
                op.status if terminal else None,
                self._codec.dumps(op.output) if terminal else None,
                self._codec.dumps(op.error) if op.error is not None else None,
                now,
                op.release,
                op.instance_id,
                op.inbox_upto,
                op.wake_at,
                new_len,
                op.current_step,
                op.owner,
                op.epoch,
                op.expected_seq,
                op.active_status,
                int(op.needs_intervention and op.status == "failed"),
            ),
        ).fetchone()
        return row

    def _continue_as_new(
        self, conn: sqlite3.Connection, instance_id: str, started: Event, now: float
    ) -> None:
        assert isinstance(started, WorkflowStarted)
        conn.execute(
            "UPDATE instances SET run_id = ?1, input = ?2, history_len = 1, current_step = NULL, "
            "status = 'running', wake_at = CASE WHEN EXISTS "
            "(SELECT 1 FROM inbox WHERE instance_id = ?3) THEN ?4 ELSE NULL END "
            "WHERE id = ?3",
            (started.run_id, self._codec.dumps(started.input), instance_id, now),
        )
        self._insert_events(conn, instance_id, started.run_id, 0, [(now, started)])

    def _notify_parent(
        self,
        conn: sqlite3.Connection,
        parent_id: str,
        child_id: str,
        now: float,
        payload: dict[str, Any],
    ) -> None:
        cur = conn.execute(
            f"UPDATE instances SET wake_at = ?, updated_at = ? WHERE id = ? "
            f"AND status NOT IN {_TERMINAL}",
            (now, now, parent_id),
        )
        if cur.rowcount:
            conn.execute(
                "INSERT INTO inbox (instance_id, kind, name, payload, time) VALUES (?, ?, ?, ?, ?)",
                (parent_id, CHILD_MESSAGE, child_id, self._codec.dumps(payload), now),
            )

    def _send(self, conn: sqlite3.Connection, op: SendMessage, now: float) -> WriteOutcome:
        rec = self._get(conn, op.instance_id)
        if rec is None:
            return WriteOutcome(False, "not_found")
        if rec.status in TERMINAL_STATUSES:
            return WriteOutcome(False, "closed", record=rec)
        cur = conn.execute(
            "INSERT INTO inbox (instance_id, kind, name, payload, time) VALUES (?, ?, ?, ?, ?)",
            (op.instance_id, op.kind, op.name, self._codec.dumps(op.payload), now),
        )
        conn.execute(
            "UPDATE instances SET wake_at = ?, updated_at = ? WHERE id = ?",
            (now, now, op.instance_id),
        )
        return WriteOutcome(True, record=self._get(conn, op.instance_id), message_id=cur.lastrowid)

    def _terminate(self, conn: sqlite3.Connection, op: Terminate, now: float) -> WriteOutcome:
        rec = self._get(conn, op.instance_id)
        if rec is None:
            return WriteOutcome(False, "not_found")
        if rec.status in TERMINAL_STATUSES:
            return WriteOutcome(False, "closed", record=rec)
        status = TERMINAL_EVENTS[type(op.event)]
        error = {"type": op.event.kind, "message": getattr(op.event, "reason", "")}
        conn.execute(
            "UPDATE instances SET status = ?, owner = NULL, epoch = epoch + 1, wake_at = NULL, "
            "history_len = history_len + 1, updated_at = ?, error = ? WHERE id = ?",
            (status, now, self._codec.dumps(error), op.instance_id),
        )
        self._insert_events(conn, rec.id, rec.run_id, rec.history_len, [(now, op.event)])
        conn.execute("DELETE FROM inbox WHERE instance_id = ?", (op.instance_id,))
        after = self._get(conn, op.instance_id)
        assert after is not None
        if rec.parent_id is not None:
            self._notify_parent(conn, rec.parent_id, rec.id, now, child_outcome(after))
        return WriteOutcome(True, record=after)

    def _suspend(self, conn: sqlite3.Connection, op: Suspend, now: float) -> WriteOutcome:
        cur = conn.execute(
            "UPDATE instances SET status = 'suspended', owner = NULL, wake_at = NULL, "
            f"error = ?, updated_at = ? WHERE id = ? AND owner = ? AND epoch = ? "
            f"AND status IN {_ACTIVE}",
            (self._codec.dumps(op.error), now, op.instance_id, op.owner, op.epoch),
        )
        if cur.rowcount == 0:
            return WriteOutcome(False, self._refusal(conn, op.instance_id))
        return WriteOutcome(True)

    def _refusal(self, conn: sqlite3.Connection, instance_id: str) -> str:
        exists = conn.execute("SELECT 1 FROM instances WHERE id = ?", (instance_id,)).fetchone()
        return "conflict" if exists else "not_found"

    def _resume(self, conn: sqlite3.Connection, op: Resume, now: float) -> WriteOutcome:
        cur = conn.execute(
            "UPDATE instances SET status = 'running', owner = NULL, wake_at = ?, error = NULL, "
            "updated_at = ?, recoveries = 0 WHERE id = ? AND status = 'suspended'",
            (now, now, op.instance_id),
        )
        if cur.rowcount == 0:
            rec = self._get(conn, op.instance_id)
            return WriteOutcome(False, "not_found" if rec is None else "not_suspended", record=rec)
        return WriteOutcome(True, record=self._get(conn, op.instance_id))

    # -- reads -------------------------------------------------------------------------
    def _get(self, conn: sqlite3.Connection, instance_id: str) -> InstanceRecord | None:
        row = conn.execute(
            f"SELECT {_INSTANCE_COLS} FROM instances WHERE id = ?", (instance_id,)
        ).fetchone()
        return self._record(row) if row else None

    def _record(self, row: Sequence[Any]) -> InstanceRecord:
        loads = self._codec.loads
        return InstanceRecord(
            id=row[0],
            name=row[1],
            version=row[2],
            status=row[3],
            run_id=row[4],
            input=loads(row[5]),
            output=loads(row[6]) if row[6] is not None else None,
            error=loads(row[7]) if row[7] is not None else None,
            created_at=row[8],
            updated_at=row[9],
            owner=row[10],
            epoch=row[11],
            wake_at=row[12],
            history_len=row[13],
            current_step=row[14],
            parent_id=row[15],
            search_attributes=json.loads(row[16]) if row[16] is not None else None,
            needs_intervention=bool(row[17]),
            queue=row[18],
            priority=row[19],
            dedup_key=row[20],
            started_at=row[21],
            recoveries=row[22],
        )

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance, or ``None``."""
        return await self._in(self._reader, lambda: self._get(self._r, instance_id))

    async def load_history(self, instance_id: str, run_id: str) -> list[HistoryEvent]:
        """Every event of the run, in order."""

        def read() -> list[HistoryEvent]:
            loads = self._codec.loads
            rows = self._r.execute(
                "SELECT seq, time, type, data FROM events WHERE run_id = ? AND instance_id = ? "
                "ORDER BY seq",
                (run_id, instance_id),
            ).fetchall()
            return [HistoryEvent(s, t, event_from_data(k, loads(d))) for s, t, k, d in rows]

        return await self._in(self._reader, read)

    async def list_instances(
        self, flt: ListFilter, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Instances matching ``flt``, newest first."""
        after = decode_cursor(cursor)
        where: list[str] = []
        params: list[Any] = []
        if flt.name is not None:
            where.append("name = ?")
            params.append(flt.name)
        if flt.status is not None:
            where.append("status = ?")
            params.append(flt.status)
        if flt.version is not None:
            where.append("version = ?")
            params.append(flt.version)
        if flt.parent_id is not None:
            where.append("parent_id = ?")
            params.append(flt.parent_id)
        if flt.created_after is not None:
            where.append("created_at >= ?")
            params.append(flt.created_after)
        if flt.created_before is not None:
            where.append("created_at < ?")
            params.append(flt.created_before)
        for key, value in (flt.search or {}).items():
            where.append("json_extract(search_attributes, ?) = json_extract(?, '$')")
            params += [json_path(key), json.dumps(value)]
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [after[0], after[0], after[1]]
        sql = f"SELECT {_INSTANCE_COLS} FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)

        def read() -> Page:
            rows = self._r.execute(sql, params).fetchall()
            items = [self._record(r) for r in rows[:limit]]
            more = len(rows) > limit
            return Page(items, encode_cursor(items[-1].created_at, items[-1].id) if more else None)

        return await self._in(self._reader, read)

    async def fetch_inbox(self, instance_id: str, after_id: int = 0) -> list[InboxMessage]:
        """Inbox messages newer than ``after_id``, oldest first."""

        def read() -> list[InboxMessage]:
            rows = self._r.execute(
                "SELECT id, kind, name, payload, time FROM inbox "
                "WHERE instance_id = ? AND id > ? ORDER BY id",
                (instance_id, after_id),
            ).fetchall()
            return [InboxMessage(i, k, n, self._codec.loads(p), t) for i, k, n, p, t in rows]

        return await self._in(self._reader, read)

    # -- work distribution -------------------------------------------------------------
    async def claim(
        self,
        worker_id: str,
        names: Sequence[str],
        *,
        limit: int = 100,
        versions: Mapping[str, Sequence[int]] | None = None,
        queues: Mapping[str, QueueLimits] | None = None,
        suspects: int | None = None,
    ) -> list[Claim]:
        """Claim runnable instances; report owned, due ones."""
        if not names:
            return []
        served, names = _served(names, versions)
        limited = dict(queues or {})

        def claim() -> list[Claim]:
            conn = self._w
            conn.execute("BEGIN IMMEDIATE")
            try:
                claims = self._claim(conn, worker_id, served, names, limit, limited, suspects)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return claims

        return await self._in(self._writer, claim)

    def _claim(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        served: str,
        names: list[str],
        limit: int,
        limited: dict[str, QueueLimits],
        suspects: int | None,
    ) -> list[Claim]:
        now = self._clock()
        claims = [
            Claim(i, r, e, False)
            for i, r, e in conn.execute(
                f"SELECT id, run_id, epoch FROM instances WHERE owner = ? "
                f"AND wake_at <= ? AND status IN {_ACTIVE} AND {served} LIMIT ?",
                (worker_id, now, *names, limit),
            )
        ]
        innocent = "recoveries = 0 AND " if suspects is not None else ""
        # Only a worker whose own lease holds may take over from expired ones: after an
        # outage two live workers with lapsed leases would otherwise take each other's.
        own_lease = "EXISTS (SELECT 1 FROM workers WHERE id = ? AND expires_at >= ?)"
        unowned = f"{innocent}owner IS NULL AND status IN {_ACTIVE} AND wake_at <= ? AND {served}"
        marks = ", ".join("?" * len(limited))
        not_limited = (
            f"(queue IS NULL OR started_at IS NOT NULL OR queue NOT IN ({marks}))"
            if limited
            else "1"
        )
        picks: list[tuple[str, tuple[Any, ...], int]] = [
            (
                f"SELECT id FROM instances WHERE {unowned} AND {not_limited} "
                f"ORDER BY priority DESC, wake_at LIMIT ?",
                (now, *names, *limited),
                limit,
            )
        ]
        for queue, room in sqlite_queues.instance_room(conn, limited, now).items():
            picks.append(
                (
                    f"SELECT id FROM instances WHERE {unowned} AND queue = ? "
                    f"AND started_at IS NULL "
                    f"ORDER BY priority DESC, wake_at LIMIT ?",
                    (now, *names, queue),
                    room,
                )
            )
        picks.append(
            (
                f"SELECT id FROM instances WHERE {innocent}owner IN "
                f"(SELECT id FROM workers WHERE expires_at < ? AND id <> ?) AND {own_lease} "
                f"AND status IN {_ACTIVE} AND {served} ORDER BY wake_at LIMIT ?",
                (now, worker_id, worker_id, now, *names),
                limit,
            )
        )
        if suspects:
            picks.append(
                (
                    f"SELECT id FROM instances WHERE recoveries > 0 AND status IN {_ACTIVE} "
                    f"AND {served} AND ((owner IS NULL AND wake_at <= ?) OR (owner IN "
                    f"(SELECT id FROM workers WHERE expires_at < ? AND id <> ?) "
                    f"AND {own_lease})) ORDER BY recoveries, wake_at LIMIT ?",
                    (*names, now, now, worker_id, worker_id, now),
                    suspects,
                )
            )
        for index, (pick, params, cap) in enumerate(picks):
            room = min(cap, limit - len(claims))
            if room <= 0:
                continue
            # Taken from a dead worker (not unowned): one more recovery.
            rows = conn.execute(
                f"UPDATE instances SET owner = ?, epoch = epoch + 1, updated_at = ?, "
                f"started_at = COALESCE(started_at, ?), "
                f"recoveries = recoveries + (owner IS NOT NULL) "
                f"WHERE id IN ({pick}) RETURNING id, run_id, epoch",
                (worker_id, now, now, *params, room),
            ).fetchall()
            suspect = bool(suspects) and index == len(picks) - 1  # the suspects' pick
            claims += [Claim(i, r, e, True, suspect) for i, r, e in rows]
        return claims

    async def claim_tasks(
        self,
        worker_id: str,
        queues: Mapping[str, QueueLimits],
        limits: Mapping[str, int],
        *,
        held: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Claim ready tasks of the served queues within their limits."""

        def claim() -> list[TaskRecord]:
            conn = self._w
            conn.execute("BEGIN IMMEDIATE")
            try:
                tasks = sqlite_queues.claim_tasks(
                    conn, self._codec, worker_id, queues, limits, self._clock(), held=held
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return tasks

        return await self._in(self._writer, claim)

    async def queue_stats(self, queue: str) -> dict[str, int]:
        """Counts of the queue's tasks by status."""
        return await self._in(self._reader, lambda: sqlite_queues.stats(self._r, queue))

    async def next_wake(
        self, names: Sequence[str], *, versions: Mapping[str, Sequence[int]] | None = None
    ) -> float | None:
        """Earliest due time of an unowned active instance."""
        if not names:
            return None
        served, names = _served(names, versions)
        sql = (
            f"SELECT MIN(wake_at) FROM instances WHERE owner IS NULL "
            f"AND status IN {_ACTIVE} AND wake_at IS NOT NULL AND {served}"
        )
        row = await self._in(self._reader, lambda: self._r.execute(sql, tuple(names)).fetchone())
        return float(row[0]) if row and row[0] is not None else None

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a worker incarnation."""
        await self._in(
            self._writer,
            lambda: self._w.execute(
                "INSERT OR REPLACE INTO workers "
                "(id, name, host, pid, started_at, expires_at, serves) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    worker.id,
                    worker.name,
                    worker.host,
                    worker.pid,
                    worker.started_at,
                    worker.expires_at,
                    json.dumps(list(worker.serves)),
                ),
            ),
        )

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove the worker and hand its instances back (due now)."""

        def run() -> None:
            conn = self._w
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    f"UPDATE instances SET owner = NULL, wake_at = ? WHERE owner = ? "
                    f"AND status IN {_ACTIVE}",
                    (self._clock(), worker_id),
                )
                conn.execute(
                    "UPDATE tasks SET status = 'ready', owner = NULL "
                    "WHERE owner = ? AND status = 'running'",
                    (worker_id,),
                )
                conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._in(self._writer, run)

    async def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker."""
        rows = await self._in(
            self._reader,
            lambda: self._r.execute(
                "SELECT id, name, host, pid, started_at, expires_at, serves FROM workers"
            ).fetchall(),
        )
        return [
            WorkerRecord(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6]))) for r in rows
        ]

    async def expire_worker(self, worker_id: str) -> None:
        """Mark the worker's lease expired now."""
        await self._in(
            self._writer,
            # Expired as of now, not at 0: a row expired long ago is forgotten (and its
            # instances handed back without counting a recovery) by the next liveness pass.
            lambda: self._w.execute(
                "UPDATE workers SET expires_at = MIN(expires_at, ?) WHERE id = ?",
                (self._clock() - 0.001, worker_id),
            ),
        )

    async def wait_for_wake(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for another process to commit to the file.

        Polls ``PRAGMA data_version`` of the writer connection every 50 ms (a read of
        shared memory in WAL mode): it changes only when *another* connection commits, so
        this process's own writes do not wake it. Other processes' work (starts, signals,
        tasks) is then claimed within ~50 ms instead of at the next fallback poll.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            version = await self._in(self._writer, self._data_version)
            if self._seen_version is not None and version != self._seen_version:
                self._seen_version = version
                return True
            self._seen_version = version
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(WAKE_POLL, remaining))

    def _data_version(self) -> int:
        (version,) = self._w.execute("PRAGMA data_version").fetchone()
        return int(version)

    def heartbeat_session(self) -> SQLiteHeartbeat:
        """A connection for renewing leases from a dedicated thread."""
        return SQLiteHeartbeat(self.connect, self.now)


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch ``conn``'s database to WAL, retrying while another connection holds it.

    On a new file, processes that open it at once all switch its journal mode; each takes
    a shared lock and asks for the exclusive one, and SQLite answers ``database is
    locked`` at once to all but one of them, without calling the busy handler (waiting
    could deadlock). Once the file is in WAL mode the statement changes nothing.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def json_path(key: str) -> str:
    """A JSON path naming one top-level key (quoted, so any key is literal)."""
    return "$." + json.dumps(key)


def _served(
    names: Sequence[str], versions: Mapping[str, Sequence[int]] | None
) -> tuple[str, list[str]]:
    """The SQL condition selecting served workflows, and its parameters."""
    if versions is None:
        return f"name IN ({', '.join('?' * len(names))})", list(names)
    keys = [f"{n}@{v}" for n in names for v in versions.get(n, ())]
    if not keys:
        return "0", []
    return f"(name || '@' || version) IN ({', '.join('?' * len(keys))})", keys


def _split_sql(script: str) -> list[str]:
    """Split a migration file into statements (no semicolons inside our DDL literals)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]
