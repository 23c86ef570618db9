"""PostgreSQL store (``postgresql://user@host:5432/db?schema=name&pool_size=10``).

* **Schemas.** Every table lives in one schema (``?schema=``, default ``stalwart``), so
  several applications can share a database. Connections set ``search_path`` to it.
* **Migrations** are numbered SQL files (``sql/postgres/NNNN_*.sql``) applied under a
  transaction-scoped advisory lock and recorded in ``<schema>.stalwart_schema_version``;
  any number of processes may open the store at once (see :mod:`.migrate`).
* **Connections.** An ``AsyncConnectionPool`` (psycopg 3) of up to ``pool_size``
  connections in autocommit mode; multi-statement operations open explicit transactions.
  A lost connection is reported as :class:`~stalwart.errors.StoreError` and makes the pool
  test its idle connections, so it recovers from ``pg_terminate_backend`` or a server
  restart; reads are retried once on a fresh connection, writes never (a write whose
  COMMIT was lost may have happened).
* **Write batches** run in one READ COMMITTED transaction; each operation is a
  compare-and-set that first locks its instance row (see :mod:`.writes`). Deadlocks
  between batches are retried as a whole.
* **Claims** pick rows with ``FOR UPDATE SKIP LOCKED``.
* **Time.** With a ``clock`` (tests), all times come from it. Without one, the database
  clock judges leases and due times: transactions read the server's ``now()``, and the
  synchronous ``now()`` adds an offset to this host's clock, measured at ``open()`` and
  every 30 s (its error is about half a round trip plus drift between measurements).
* **Wake-ups.** Whenever an instance becomes due now, the transaction sends
  ``NOTIFY <schema>_wake, '<instance id>'``; whenever a queue may have work for a claimer
  (a task ready now, a freed slot), ``NOTIFY <schema>_queue, '<queue>'``.
  :meth:`PostgresStore.wait_for_wake` waits for either over a dedicated listening
  connection that reconnects with backoff.
* **Heartbeats** use a synchronous connection of their own (:class:`PostgresHeartbeat`).
"""

from __future__ import annotations

from stalwart.store.postgres.config import PostgresConfig, parse_url
from stalwart.store.postgres.heartbeat import PostgresHeartbeat
from stalwart.store.postgres.store import PostgresStore

__all__ = ["PostgresConfig", "PostgresHeartbeat", "PostgresStore", "parse_url"]
