"""The PostgreSQL store: :class:`PostgresStore`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from stalwart._engine.events import HistoryEvent, event_from_data
from stalwart.codec import Codec, JsonCodec
from stalwart.errors import StoreError
from stalwart.store.base import (
    Claim,
    InboxMessage,
    InstanceRecord,
    ListFilter,
    Page,
    QueueLimits,
    StoreCapabilities,
    TaskRecord,
    WorkerRecord,
    WriteOp,
    WriteOutcome,
)
from stalwart.store.cursor import decode_cursor, encode_cursor
from stalwart.store.postgres import queues as queue_ops
from stalwart.store.postgres._common import (
    ACTIVE,
    DB_NOW,
    INSTANCE_COLS,
    WORKER_COLS,
    Conn,
    decode_instance,
    decode_worker,
    served,
)
from stalwart.store.postgres.config import PostgresConfig, parse_url
from stalwart.store.postgres.heartbeat import PostgresHeartbeat
from stalwart.store.postgres.listener import WakeListener
from stalwart.store.postgres.migrate import migrate
from stalwart.store.postgres.pipelined import (
    append_outcome,
    lone_step_call,
    one_statement,
)
from stalwart.store.postgres.writes import Batch

T = TypeVar("T")
logger = logging.getLogger("stalwart.store")

CLOCK_SYNC_INTERVAL = 30.0
"""Seconds between measurements of the offset between the database clock and ours."""
TXN_RETRIES = 5
"""Attempts of a transaction aborted by a deadlock or serialization failure."""

_NOTIFY = "SELECT pg_notify(%s, w) FROM unnest(%s::text[]) AS w"


class PostgresStore:
    """A store in a PostgreSQL schema, shared by any number of processes and hosts.

    ``postgresql://user@host:5432/db?schema=name&pool_size=10&pool_timeout=30``; other
    query parameters go to libpq. See :mod:`stalwart.store.postgres` for the design.

    ``clock``: when given (tests pass a fake clock), every time the store records or
    judges (leases, due times, timestamps) comes from it. When ``None``, the database
    clock is the reference: transactions read ``now()`` on the server, and the
    synchronous :meth:`now` is this host's clock corrected by the offset to the server
    clock, measured at :meth:`open` and every ``CLOCK_SYNC_INTERVAL`` seconds.
    """

    capabilities = StoreCapabilities(
        durable=True,
        multi_process=True,
        extra={"listen_notify": True, "skip_locked": True, "concurrent_writes": True},
    )

    def __init__(
        self,
        url: str,
        *,
        codec: Codec | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config: PostgresConfig = parse_url(url)
        self._codec = codec or JsonCodec()
        self._clock = clock
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._offset = 0.0
        self._sync_task: asyncio.Task[None] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self._listener: WakeListener | None = None
        # Lone steps (a sequential workflow) go through one connection kept out of the
        # pool: checking a connection out and back in cost ~15% of such a step's CPU.
        self._step_conn: Conn | None = None
        self._step_busy = False

    @property
    def schema(self) -> str:
        """The schema holding this store's tables."""
        return self.config.schema

    @property
    def channel(self) -> str:
        """The NOTIFY channel announcing instances that became due now."""
        return self.config.channel

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        """Open the connection pool, apply migrations and measure the clock offset."""
        if self._pool is not None:
            return
        cfg = self.config
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            cfg.conninfo,
            min_size=1,
            max_size=cfg.pool_size,
            open=False,
            kwargs={"autocommit": True},
            timeout=cfg.pool_timeout,
            name=f"stalwart-{cfg.schema}",
        )
        try:
            await pool.open(wait=True, timeout=cfg.pool_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {cfg.display}: {exc}") from exc
        self._pool = pool
        try:
            await self._run(lambda conn: migrate(conn, cfg.schema, self._now_param()))
            if self._clock is None:
                await self._run(self._sync_clock, idempotent=True)
                self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the background tasks and close every connection."""
        for task in (self._sync_task, self._check_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sync_task = self._check_task = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        pool, self._pool = self._pool, None
        step_conn, self._step_conn = self._step_conn, None
        if pool is not None:
            if step_conn is not None:
                await pool.putconn(step_conn)
            await pool.close()

    # -- time --------------------------------------------------------------------------
    def now(self) -> float:
        """The store's clock: the given clock, else the database clock (estimated)."""
        if self._clock is not None:
            return self._clock()
        return time.time() + self._offset

    def _now_param(self) -> float | None:
        return self._clock() if self._clock is not None else None

    async def _txn_now(self, conn: Conn) -> float:
        """The time of the current transaction: the given clock, else the server's."""
        if self._clock is not None:
            return self._clock()
        cur = await conn.execute(f"SELECT {DB_NOW}")
        row = await cur.fetchone()
        assert row is not None
        return float(row[0])

    async def _sync_clock(self, conn: Conn) -> None:
        before = time.time()
        cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        row = await cur.fetchone()
        after = time.time()
        assert row is not None
        self._offset = float(row[0]) - (before + after) / 2

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_SYNC_INTERVAL)
            try:
                await self._run(self._sync_clock, idempotent=True)
            except StoreError as exc:  # keep the last offset; try again later
                logger.debug("clock offset refresh failed: %s", exc)

    # -- connections and errors --------------------------------------------------------
    async def _run(
        self,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        idempotent: bool = False,
        held: bool = False,
    ) -> T:
        """Run ``fn`` on a pooled connection (``held``: the one kept for lone steps),
        translating errors into StoreError.

        A transaction aborted by a deadlock or serialization failure is retried (it
        changed nothing). A lost connection is retried once only when ``idempotent``:
        a write whose COMMIT may or may not have happened is reported, never replayed.
        """
        pool = self._pool
        if pool is None:
            raise StoreError("the PostgreSQL store is not open")
        attempt = 0
        while True:
            attempt += 1
            try:
                connection = self._held_connection(pool) if held else pool.connection()
                async with connection as conn:
                    return await fn(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if attempt >= TXN_RETRIES:
                    raise StoreError(f"PostgreSQL error: {exc}") from exc
                await asyncio.sleep(random.uniform(0.0, 0.005 * attempt))
            except PoolClosed as exc:
                raise StoreError("the PostgreSQL store is closed") from exc
            except PoolTimeout as exc:
                raise StoreError(f"no PostgreSQL connection available: {exc}") from exc
            except psycopg.OperationalError as exc:
                # Weed out the pool's other dead connections before anyone uses them.
                await self._check_pool()
                if not (idempotent and attempt == 1):
                    raise StoreError(f"PostgreSQL error: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL error: {exc}") from exc

    async def _lone_step(self, step: Callable[[Conn], Awaitable[T]]) -> T:
        """Run one autocommit step on the held step connection (taken from the pool on
        first use); on the pool when it is in use, or the pool is too small to spare it."""
        if self._step_busy or self.config.pool_size < 2:
            return await self._run(step)
        self._step_busy = True
        try:
            return await self._run(step, held=True)
        finally:
            self._step_busy = False

    @contextlib.asynccontextmanager
    async def _held_connection(self, pool: AsyncConnectionPool[Conn]) -> AsyncIterator[Conn]:
        """The connection kept for lone steps; given back to the pool (which discards
        it) when it was lost, or cancelled mid-statement."""
        conn = self._step_conn
        if conn is None:
            conn = self._step_conn = await pool.getconn()
        try:
            yield conn
        except (psycopg.OperationalError, asyncio.CancelledError):
            self._step_conn = None
            await pool.putconn(conn)
            raise

    async def _check_pool(self) -> None:
        """Have the pool test its idle connections (after a restart, all are dead).

        Concurrent callers share one check; it is bounded by the pool timeout.
        """
        pool = self._pool
        if pool is None:
            return
        held = self._step_conn
        if held is not None and not self._step_busy:
            # Kept out of the pool, the held step connection would escape the check and
            # fail a second write after the same outage: hand it in to be tested too.
            self._step_conn = None
            await pool.putconn(held)
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.get_running_loop().create_task(self._check(pool))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._check_task), self.config.pool_timeout)

    @staticmethod
    async def _check(pool: AsyncConnectionPool[Conn]) -> None:
        with contextlib.suppress(psycopg.Error):
            await pool.check()

    async def _fetchall(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        async def read(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        return await self._run(read, idempotent=True)

    # -- writes ------------------------------------------------------------------------
    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Apply ``ops`` in one transaction (each op a compare-and-set)."""
        if not ops:
            return []

        if len(ops) == 1 and one_statement(ops[0]):
            # A lone step: one autocommit statement is its whole transaction.
            query, params = lone_step_call(
                ops[0], self._codec, self._now_param(), self.channel, self.config.queue_channel
            )

            async def step(conn: Conn) -> list[WriteOutcome]:
                cur = await conn.execute(query, params, prepare=True)
                return [append_outcome(await cur.fetchone())]

            return await self._lone_step(step)

        async def run(conn: Conn) -> list[WriteOutcome]:
            async with conn.transaction(), conn.cursor() as cur:
                now = await self._txn_now(conn)
                batch = Batch(cur, self._codec, now, self.channel, self.config.queue_channel)
                outcomes = await batch.apply_all(ops)
                await batch.flush_notifications()
            return outcomes

        return await self._run(run)

    # -- reads -------------------------------------------------------------------------
    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance, or ``None``."""
        rows = await self._fetchall(
            f"SELECT {INSTANCE_COLS} FROM instances WHERE id = %s", (instance_id,)
        )
        return decode_instance(self._codec, rows[0]) if rows else None

    async def load_history(self, instance_id: str, run_id: str) -> list[HistoryEvent]:
        """Every event of the run, in order."""
        rows = await self._fetchall(
            "SELECT seq, time, type, data FROM events WHERE run_id = %s AND instance_id = %s "
            "ORDER BY seq",
            (run_id, instance_id),
        )
        loads = self._codec.loads
        return [HistoryEvent(s, t, event_from_data(k, loads(d))) for s, t, k, d in rows]

    async def list_instances(
        self, flt: ListFilter, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Instances matching ``flt``, newest first."""
        after = decode_cursor(cursor)
        where: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("name", "=", flt.name),
            ("status", "=", flt.status),
            ("version", "=", flt.version),
            ("parent_id", "=", flt.parent_id),
            ("created_at", ">=", flt.created_after),
            ("created_at", "<", flt.created_before),
        ):
            if value is not None:
                where.append(f"{column} {op} %s")
                params.append(value)
        scalars: dict[str, Any] = {}
        for key, value in (flt.search or {}).items():
            if value is None:  # as ListFilter.matches: a missing key matches None too
                where.append("coalesce(search_attributes -> %s, 'null') = 'null'")
                params.append(key)
            elif isinstance(value, str | int | float | bool):
                scalars[key] = value
            else:
                where.append("search_attributes -> %s = %s")
                params += [key, Jsonb(value)]
        if scalars:
            where.append("search_attributes @> %s")
            params.append(Jsonb(scalars))
        if after is not None:
            where.append("(created_at < %s OR (created_at = %s AND id < %s))")
            params += [after[0], after[0], after[1]]
        query = f"SELECT {INSTANCE_COLS} FROM instances"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(limit + 1)
        rows = await self._fetchall(query, params)
        items = [decode_instance(self._codec, r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def fetch_inbox(self, instance_id: str, after_id: int = 0) -> list[InboxMessage]:
        """Inbox messages newer than ``after_id``, oldest first."""
        rows = await self._fetchall(
            "SELECT id, kind, name, payload, time FROM inbox "
            "WHERE instance_id = %s AND id > %s ORDER BY id",
            (instance_id, after_id),
        )
        return [InboxMessage(i, k, n, self._codec.loads(p), t) for i, k, n, p, t in rows]

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
        """Claim runnable instances; report owned, due ones.

        Picks lock their rows with ``FOR UPDATE SKIP LOCKED``, so concurrent claimers
        take disjoint sets without waiting for each other (or for a step being committed
        on a row, which is skipped until the next claim). Instances not yet started on a
        queue of ``queues`` are claimed within its limits, under the queue's advisory lock
        (see :mod:`.queues`).
        """
        if not names:
            return []
        condition, served_params = served(names, versions)
        limited = dict(queues or {})

        async def run(conn: Conn) -> list[Claim]:
            async with conn.transaction():
                now = await self._txn_now(conn)
                return await self._claim(
                    conn, worker_id, condition, served_params, limit, limited, now, suspects
                )

        return await self._run(run)

    async def _claim(
        self,
        conn: Conn,
        worker_id: str,
        condition: str,
        served_params: dict[str, Any],
        limit: int,
        limited: dict[str, QueueLimits],
        now: float,
        suspects: int | None,
    ) -> list[Claim]:
        params = {**served_params, "worker": worker_id, "now": now, "limited": list(limited)}
        cur = await conn.execute(
            f"SELECT id, run_id, epoch FROM instances WHERE owner = %(worker)s "
            f"AND wake_at <= %(now)s AND status IN {ACTIVE} AND {condition} LIMIT %(room)s",
            {**params, "room": limit},
        )
        claims = [Claim(i, r, e, False) for i, r, e in await cur.fetchall()]
        innocent = "recoveries = 0 AND " if suspects is not None else ""
        # Only a worker whose own lease holds may take over from expired ones: after an
        # outage two live workers with lapsed leases would otherwise take each other's.
        own_lease = "EXISTS (SELECT 1 FROM workers WHERE id = %(worker)s AND expires_at >= %(now)s)"
        unowned = (
            f"{innocent}owner IS NULL AND status IN {ACTIVE} AND wake_at <= %(now)s AND {condition}"
        )
        not_limited = (
            "NOT (started_at IS NULL AND coalesce(queue = ANY(%(limited)s::text[]), false))"
            if limited
            else "true"
        )
        picks: list[tuple[str, dict[str, Any], int]] = [
            (
                f"SELECT id FROM instances WHERE {unowned} AND {not_limited} "
                f"ORDER BY priority DESC, wake_at",
                params,
                limit,
            )
        ]
        room_by_queue = await queue_ops.instance_room(conn, self.schema, limited, now)
        for queue, room in room_by_queue.items():
            picks.append(
                (
                    f"SELECT id FROM instances WHERE {unowned} AND queue = %(queue)s "
                    f"AND started_at IS NULL ORDER BY priority DESC, wake_at",
                    {**params, "queue": queue},
                    room,
                )
            )
        # The uncorrelated EXISTS is a one-time filter: with no expired worker (the usual
        # case) the takeover pick reads nothing. Without it the planner may walk every
        # active instance by name and status to find none (milliseconds per scan with a
        # few thousand in flight).
        any_dead = "EXISTS (SELECT 1 FROM workers WHERE expires_at < %(now)s AND id <> %(worker)s)"
        picks.append(
            (
                f"SELECT id FROM instances WHERE {any_dead} AND {innocent}owner IN (SELECT id "
                f"FROM workers WHERE expires_at < %(now)s AND id <> %(worker)s) AND {own_lease} "
                f"AND status IN {ACTIVE} AND {condition} ORDER BY wake_at",
                params,
                limit,
            )
        )
        if suspects:
            picks.append(
                (
                    f"SELECT id FROM instances WHERE recoveries > 0 AND status IN {ACTIVE} "
                    f"AND {condition} AND ((owner IS NULL AND wake_at <= %(now)s) OR (owner IN "
                    f"(SELECT id FROM workers WHERE expires_at < %(now)s AND id <> %(worker)s) "
                    f"AND {own_lease})) ORDER BY recoveries, wake_at",
                    params,
                    suspects,
                )
            )
        for index, (pick, pick_params, cap) in enumerate(picks):
            room = min(cap, limit - len(claims))
            if room <= 0:
                continue
            # Taken from a dead worker (not unowned): one more recovery. The picked CTE
            # carries the old owner: in UPDATE ... FROM, instances.owner is the old row's.
            cur = await conn.execute(
                f"WITH picked AS MATERIALIZED ({pick} LIMIT %(room)s FOR UPDATE SKIP LOCKED) "
                f"UPDATE instances SET owner = %(worker)s, epoch = epoch + 1, "
                f"updated_at = %(now)s, started_at = COALESCE(started_at, %(now)s), "
                f"recoveries = recoveries + (instances.owner IS NOT NULL)::int "
                f"FROM picked WHERE instances.id = picked.id "
                f"RETURNING instances.id, instances.run_id, instances.epoch",
                {**pick_params, "room": room},
            )
            suspect = bool(suspects) and index == len(picks) - 1  # the suspects' pick
            claims += [Claim(i, r, e, True, suspect) for i, r, e in await cur.fetchall()]
        return claims

    async def claim_tasks(
        self,
        worker_id: str,
        queues: Mapping[str, QueueLimits],
        limits: Mapping[str, int],
        *,
        held: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Claim ready tasks of the served queues within their limits.

        A limited queue's claims are serialised by an advisory lock, so its concurrency
        and rate limits hold across every worker; the rows are picked with SKIP LOCKED.
        """

        async def run(conn: Conn) -> list[TaskRecord]:
            async with conn.transaction():
                now = await self._txn_now(conn)
                return await queue_ops.claim_tasks(
                    conn, self._codec, self.schema, worker_id, queues, limits, now, held=held
                )

        return await self._run(run)

    async def queue_stats(self, queue: str) -> dict[str, int]:
        """Counts of the queue's tasks by status (``ready``, ``running``, ``done``)."""
        return await self._run(lambda conn: queue_ops.stats(conn, queue), idempotent=True)

    async def next_wake(
        self, names: Sequence[str], *, versions: Mapping[str, Sequence[int]] | None = None
    ) -> float | None:
        """Earliest due time of an unowned active instance."""
        if not names:
            return None
        condition, params = served(names, versions)
        rows = await self._fetchall(
            f"SELECT MIN(wake_at) FROM instances WHERE owner IS NULL "
            f"AND status IN {ACTIVE} AND wake_at IS NOT NULL AND {condition}",
            params,
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a worker incarnation (replacing a record with the same id)."""

        async def run(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO workers ({WORKER_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, host = EXCLUDED.host, "
                "pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, "
                "expires_at = EXCLUDED.expires_at, serves = EXCLUDED.serves",
                (
                    worker.id,
                    worker.name,
                    worker.host,
                    worker.pid,
                    worker.started_at,
                    worker.expires_at,
                    list(worker.serves),
                ),
            )

        await self._run(run, idempotent=True)

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove the worker and hand its instances back (due now)."""

        async def run(conn: Conn) -> None:
            async with conn.transaction():
                cur = await conn.execute(
                    f"UPDATE instances SET owner = NULL, wake_at = %s WHERE owner = %s "
                    f"AND status IN {ACTIVE} RETURNING id",
                    (await self._txn_now(conn), worker_id),
                )
                released = [r[0] for r in await cur.fetchall()]
                await conn.execute(
                    "UPDATE tasks SET status = 'ready', owner = NULL "
                    "WHERE owner = %s AND status = 'running'",
                    (worker_id,),
                )
                await conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))
                if released:
                    await conn.execute(_NOTIFY, (self.channel, released))

        await self._run(run, idempotent=True)

    async def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker."""
        return [
            decode_worker(r) for r in await self._fetchall(f"SELECT {WORKER_COLS} FROM workers")
        ]

    async def expire_worker(self, worker_id: str) -> None:
        """Mark the worker's lease expired now (its instances and tasks become claimable)."""

        async def run(conn: Conn) -> None:
            async with conn.transaction():
                # As of now, not 0: a long-expired row is forgotten (its instances handed
                # back without counting a recovery) by the next liveness pass.
                cur = await conn.execute(
                    f"UPDATE workers SET expires_at = LEAST(expires_at, "
                    f"COALESCE(%s, {DB_NOW}) - 0.001) WHERE id = %s",
                    (self._now_param(), worker_id),
                )
                if cur.rowcount:
                    await conn.execute(
                        f"SELECT pg_notify(%s, id) FROM instances WHERE owner = %s "
                        f"AND status IN {ACTIVE}",
                        (self.channel, worker_id),
                    )
                    await conn.execute(
                        "SELECT pg_notify(%s, queue) FROM (SELECT DISTINCT queue FROM tasks "
                        "WHERE owner = %s AND status = 'running') AS t",
                        (self.config.queue_channel, worker_id),
                    )

        await self._run(run, idempotent=True)

    def heartbeat_session(self) -> PostgresHeartbeat:
        """A synchronous connection for renewing leases from a dedicated thread."""
        return PostgresHeartbeat(self.config.conninfo, self._clock)

    # -- wake-ups ----------------------------------------------------------------------
    def _wake_listener(self) -> WakeListener:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open")
        if self._listener is None:
            self._listener = WakeListener(
                self.config.conninfo, [self.channel, self.config.queue_channel]
            )
        return self._listener

    async def listen(self, timeout: float = 10.0) -> bool:
        """Start listening for wake-ups; True once LISTEN is in effect (False on timeout).

        :meth:`wait_for_wake` starts listening by itself; call this first to be sure no
        notification committed after it returns is missed.
        """
        return await self._wake_listener().wait_listening(timeout)

    async def wait_for_wake(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for claimable work; True if some appeared.

        Instances become due now (and are announced on :attr:`channel`, payload: the
        instance id) when created unowned, sent a message, resumed or reopened, handed
        back by a release or a deregistration, given an activity task's outcome, or
        notified of a child's end. Queues that may have work for a claimer are announced
        on ``<schema>_queue`` (payload: the queue name): a task ready now, a finished
        task or queued instance (a free slot), the tasks of an expired worker. A
        notification that arrived since the previous call returns True at once; so does a
        reconnection of the listening connection (notifications may have been missed
        meanwhile). Meant for one consumer (the worker's claim loop).
        """
        return await self._wake_listener().wait(timeout)
