"""PostgreSQL schema migrations: idempotence, concurrent first open, schema isolation.

Every test works on a database of its own (``stalwart_test_<random>``, dropped afterwards).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.postgres._helpers import WF, create_op, register
from tests.postgres_support import database_dsn, store_url, temporary_database

from stalwart.store.base import ListFilter, SendMessage
from stalwart.store.migrations import load_migrations
from stalwart.store.postgres import PostgresStore
from stalwart.store.postgres.migrate import migrate

MIGRATIONS = load_migrations("postgres")
EXPECTED_VERSIONS = [(m.version, m.name) for m in MIGRATIONS]


def _query(database: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_dsn(database)) as conn:
        return conn.execute(query, params).fetchall()


def _versions(database: str, schema: str = "stalwart") -> list[tuple[Any, ...]]:
    return _query(
        database, f'SELECT version, name FROM "{schema}".stalwart_schema_version ORDER BY 1'
    )


def _catalog(database: str, schema: str = "stalwart") -> list[tuple[Any, ...]]:
    """Tables, columns (with type, nullability, default, collation) and indexes."""
    columns = _query(
        database,
        "SELECT table_name, column_name, data_type, is_nullable, column_default, "
        "collation_name FROM information_schema.columns WHERE table_schema = %s "
        "ORDER BY table_name, ordinal_position",
        (schema,),
    )
    indexes = _query(
        database,
        "SELECT tablename, indexname, replace(indexdef, %s, 'S.') FROM pg_indexes "
        "WHERE schemaname = %s ORDER BY indexname",
        (f"{schema}.", schema),
    )
    return columns + indexes


async def _open_close(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.close()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    """Migration files are versions 1..n, in order."""
    assert MIGRATIONS, "there must be at least the initial migration"
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


@pytest.mark.parametrize("start", ["missing_schema", "empty_schema"])
async def test_migrating_twice_is_idempotent(start: str) -> None:
    """A second migration changes nothing; each version is recorded once."""
    with temporary_database() as db:
        if start == "empty_schema":
            with psycopg.connect(database_dsn(db), autocommit=True) as conn:
                conn.execute("CREATE SCHEMA stalwart")
        await _open_close(store_url(db))
        first = _catalog(db)
        assert _versions(db) == EXPECTED_VERSIONS
        assert {r[0] for r in first} >= {"instances", "events", "inbox", "workers"}
        await _open_close(store_url(db))
        assert _versions(db) == EXPECTED_VERSIONS
        assert _catalog(db) == first
        async with await psycopg.AsyncConnection.connect(database_dsn(db), autocommit=True) as conn:
            assert await migrate(conn, "stalwart", None) == []
        # nothing landed outside the store's schema
        assert _query(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


async def test_reopening_keeps_data() -> None:
    """Re-running migrations on a schema in use does not touch its data."""
    with temporary_database() as db:
        store = PostgresStore(store_url(db))
        await store.open()
        try:
            await store.write([create_op("i1")])
            (sent,) = await store.write([SendMessage("i1", "signal", "go", [1])])
        finally:
            await store.close()
        store = PostgresStore(store_url(db))
        await store.open()
        try:
            assert sent.record is not None
            assert await store.get_instance("i1") == sent.record
            assert [m.name for m in await store.fetch_inbox("i1")] == ["go"]
        finally:
            await store.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time

    from stalwart._engine.events import WorkflowStarted
    from stalwart.store.base import CreateInstance
    from stalwart.store.postgres import PostgresStore

    url, ready, go, tag = sys.argv[1:5]
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        time.sleep(0.0005)

    async def main() -> None:
        store = PostgresStore(url)
        await store.open()
        try:
            started = WorkflowStarted(name="wf", version=1, input=[], run_id=tag)
            (out,) = await store.write([CreateInstance(tag, "wf", 1, tag, [], started)])
            assert out.ok and out.created, out
        finally:
            await store.close()

    asyncio.run(main())
    print("migrated", tag)
    """
)


@pytest.mark.parametrize("processes", [4])
def test_concurrent_first_open_migrates_once(tmp_path: Path, processes: int) -> None:
    """Processes opening one fresh database at once all succeed; each migration is
    applied once (the advisory lock serialises them)."""
    with temporary_database() as db:
        url = store_url(db)
        go = tmp_path / "go"
        children: list[tuple[Path, str, subprocess.Popen[str]]] = []
        for n in range(processes):
            tag = f"p{n}"
            ready = tmp_path / f"{tag}.ready"
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, url, str(ready), str(go), tag],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            children.append((ready, tag, proc))
        try:
            deadline = time.monotonic() + 60
            while not all(ready.exists() for ready, _, _ in children):
                assert time.monotonic() < deadline, "child processes did not start"
                assert all(p.poll() is None for _, _, p in children), "a child exited early"
                time.sleep(0.01)
            go.touch()  # release every child at the same moment
            for _, tag, proc in children:
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, f"{tag} failed:\n{err}"
                assert out.strip() == f"migrated {tag}"
        finally:
            for _, _, proc in children:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        assert _versions(db) == EXPECTED_VERSIONS
        ids = _query(db, "SELECT id FROM stalwart.instances ORDER BY id")
        assert [r[0] for r in ids] == [f"p{n}" for n in range(processes)]
        with temporary_database() as reference:
            asyncio.run(_open_close(store_url(reference)))
            assert _catalog(db) == _catalog(reference)


async def test_schemas_in_one_database_are_isolated() -> None:
    """Two applications in two schemas of one database never see each other's data."""
    with temporary_database() as db:
        a = PostgresStore(store_url(db, schema="app_a"))
        b = PostgresStore(store_url(db, schema="app_b"))
        await a.open()
        await b.open()
        try:
            (in_a,) = await a.write([create_op("same-id")])
            assert in_a.created
            (in_b,) = await b.write([create_op("same-id")])
            assert in_b.created, "the id is free in the other schema"
            await a.write([SendMessage("same-id", "signal", "for-a")])
            assert [m.name for m in await a.fetch_inbox("same-id")] == ["for-a"]
            assert await b.fetch_inbox("same-id") == []
            await a.write([create_op("only-a")])
            assert await b.get_instance("only-a") is None
            assert len((await b.list_instances(ListFilter())).items) == 1
            await register(a, "wa")
            assert [w.id for w in await b.list_workers()] == []
            await register(b, "wb")
            claims_b = await b.claim("wb", [WF])
            assert [c.instance_id for c in claims_b] == ["same-id"]
            rec_a = await a.get_instance("same-id")
            assert rec_a is not None and rec_a.owner is None
            claims_a = await a.claim("wa", [WF])
            assert sorted(c.instance_id for c in claims_a) == ["only-a", "same-id"]
        finally:
            await a.close()
            await b.close()
        for schema in ("app_a", "app_b"):
            assert _versions(db, schema) == EXPECTED_VERSIONS
        assert _catalog(db, "app_a") == _catalog(db, "app_b")
        assert _query(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'stalwart'") == [(0,)]
