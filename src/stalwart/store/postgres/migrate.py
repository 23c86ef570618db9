"""Schema migrations for PostgreSQL: numbered SQL files, each applied exactly once.

Migrations run in one transaction holding a transaction-scoped advisory lock keyed by the
schema name, so any number of processes opening the store at once apply each file once:
the first takes the lock and migrates, the others wait, then find nothing left to do.
Applied versions are recorded in ``<schema>.stalwart_schema_version``. The schema is
created when missing.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from stalwart.store.migrations import Migration, load_migrations
from stalwart.store.postgres._common import DB_NOW, Conn

VERSION_TABLE = "stalwart_schema_version"
"""The table (in the store's schema) recording applied migrations."""


def migrations() -> list[Migration]:
    """Every PostgreSQL migration, in version order."""
    return load_migrations("postgres")


def lock_key(schema: str) -> int:
    """The advisory lock key that serialises migrations of ``schema`` (a signed int64)."""
    digest = hashlib.blake2b(f"stalwart.migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def current_version(conn: Conn, schema: str) -> int:
    """The highest applied migration of ``schema`` (0 if none)."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{VERSION_TABLE}",))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute(
        sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(VERSION_TABLE)
        )
    )
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(conn: Conn, schema: str, now: float | None) -> list[int]:
    """Apply the pending migrations of ``schema``; return the versions applied here.

    ``now`` is the time recorded for each migration (``None``: the database clock).
    """
    pending = migrations()
    if await current_version(conn, schema) >= pending[-1].version:
        return []  # the common case: no lock taken
    schema_id = sql.Identifier(schema)
    table = sql.SQL("{}.{}").format(schema_id, sql.Identifier(VERSION_TABLE))
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema_id))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema_id))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at double precision NOT NULL)"
            ).format(table)
        )
        cur = await conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {}").format(table))
        row = await cur.fetchone()
        current = int(row[0]) if row is not None else 0
        for migration in pending:
            if migration.version <= current:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, COALESCE(%s, {}))").format(
                    table, sql.SQL(DB_NOW)
                ),
                (migration.version, migration.name, now),
            )
            applied.append(migration.version)
    return applied
