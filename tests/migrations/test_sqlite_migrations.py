"""SQLite schema migrations: idempotence, concurrent first open, and schema drift.

``sqlite_schema.sql`` next to this file is a snapshot of ``sqlite_master`` after every
migration has been applied. When a migration is added or changed, regenerate it with::

    STALWART_UPDATE_SCHEMA_SNAPSHOT=1 .venv/bin/pytest tests/migrations

and commit the new snapshot together with the migration.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stalwart.store import open_store
from stalwart.store.migrations import load_migrations

SNAPSHOT = Path(__file__).with_name("sqlite_schema.sql")
UPDATE_ENV = "STALWART_UPDATE_SCHEMA_SNAPSHOT"
MIGRATIONS = load_migrations("sqlite")
EXPECTED_VERSIONS = [(m.version, m.name) for m in MIGRATIONS]


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


async def _migrate(path: Path) -> None:
    """Open (which migrates) and close a store on ``path``."""
    store = open_store(_url(path))
    await store.open()
    await store.close()


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _versions(path: Path) -> list[tuple[object, ...]]:
    return _query(path, "SELECT version, name FROM stalwart_schema_version ORDER BY version")


def _schema(path: Path) -> list[tuple[object, ...]]:
    return _query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")


def render_schema(path: Path) -> str:
    """The snapshot text for the database at ``path`` (versions, then every schema object)."""
    lines = [
        "-- Snapshot of sqlite_master after applying every SQLite migration",
        "-- (src/stalwart/store/sql/sqlite/). Generated; do not edit by hand. Regenerate with:",
        f"--     {UPDATE_ENV}=1 .venv/bin/pytest tests/migrations",
        "--",
    ]
    lines += [f"-- migration {version}: {name}" for version, name in _versions(path)]
    for kind, name, table, sql in _schema(path):
        lines += ["", f"-- {kind} {name} (on {table})"]
        lines.append(f"{sql};" if sql is not None else "-- (implicit, no SQL)")
    return "\n".join(lines) + "\n"


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    """Migration files are versions 1..n, in order."""
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS, "there must be at least the initial migration"


@pytest.mark.parametrize("start", ["missing_file", "empty_file"])
async def test_migrating_twice_is_idempotent(tmp_path: Path, start: str) -> None:
    """A second migration of the same file changes nothing; each version is recorded once."""
    path = tmp_path / "stalwart.db"
    if start == "empty_file":
        path.write_bytes(b"")
    await _migrate(path)
    first_versions, first_schema = _versions(path), _schema(path)
    assert first_versions == EXPECTED_VERSIONS
    await _migrate(path)
    assert _versions(path) == EXPECTED_VERSIONS
    assert _query(path, "SELECT MAX(version), COUNT(*) FROM stalwart_schema_version") == [
        (MIGRATIONS[-1].version, len(MIGRATIONS))
    ]
    assert _schema(path) == first_schema


async def test_reopening_keeps_data(tmp_path: Path) -> None:
    """Re-running migrations on a database in use does not touch its data."""
    from stalwart._engine.events import WorkflowStarted
    from stalwart.store.base import CreateInstance

    path = tmp_path / "stalwart.db"
    store = open_store(_url(path))
    await store.open()
    started = WorkflowStarted(name="wf", version=1, input=[1], run_id="r1")
    (outcome,) = await store.write([CreateInstance("i1", "wf", 1, "r1", [1], started)])
    await store.close()
    assert outcome.ok
    store = open_store(_url(path))
    await store.open()
    try:
        assert await store.get_instance("i1") == outcome.record
        assert [h.event for h in await store.load_history("i1", "r1")] == [started]
    finally:
        await store.close()
    assert _versions(path) == EXPECTED_VERSIONS


async def test_history_survives_the_move_to_commit_order(tmp_path: Path) -> None:
    """Migration 8 rebuilds the history table: every run's events, written at version 7,
    read back the same afterwards, and (run_id, seq) is still unique."""
    from stalwart._engine.events import ActivityCompleted, ActivityScheduled
    from stalwart.store.base import AppendEvents, CreateInstance
    from stalwart.store.sqlite import SQLiteStore, _split_sql

    path = tmp_path / "stalwart.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE stalwart_schema_version "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for migration in MIGRATIONS:
        if migration.version <= 7:
            for statement in _split_sql(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO stalwart_schema_version VALUES (?, ?, 0)",
                (migration.version, migration.name),
            )
    conn.close()
    # Steps of three runs interleaved, written by a store that stops at version 7.
    old = SQLiteStore(str(path))
    old._migrate = lambda: None  # type: ignore[method-assign]
    await old.open()
    from stalwart._engine.events import WorkflowStarted

    t = old.now()
    for n in range(3):
        started = WorkflowStarted(name="wf", version=1, input=[n], run_id=f"r{n}")
        (out,) = await old.write(
            [CreateInstance(f"i{n}", "wf", 1, f"r{n}", [n], started, owner="w", epoch=1)]
        )
        assert out.ok
    for k in range(4):
        ops = [
            AppendEvents(
                f"i{n}",
                "w",
                1,
                1 + 2 * k,
                [
                    (t, ActivityScheduled(cmd=k, name="a", input=[k], options={})),
                    (t, ActivityCompleted(cmd=k, result=n * 10 + k)),
                ],
            )
            for n in range(3)
        ]
        assert all(o.ok for o in await old.write(ops))
    before = {n: await old.load_history(f"i{n}", f"r{n}") for n in range(3)}
    await old.close()
    assert all(len(h) == 9 for h in before.values())

    store = open_store(_url(path))
    await store.open()
    try:
        for n in range(3):
            assert await store.load_history(f"i{n}", f"r{n}") == before[n]
        # A rowid table now (new rows append); the migrated rows keep their runs together.
        order = _query(path, "SELECT run_id, seq FROM events ORDER BY id")
        assert order == sorted(order) and len(order) == 27
        with pytest.raises(sqlite3.IntegrityError):
            conn = sqlite3.connect(path)
            try:
                conn.execute(
                    "INSERT INTO events (run_id, seq, instance_id, type, time, data) "
                    "VALUES ('r0', 3, 'i0', 'x', 0, '{}')"
                )
            finally:
                conn.close()
    finally:
        await store.close()
    assert _versions(path) == EXPECTED_VERSIONS


_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time

    from stalwart._engine.events import WorkflowStarted
    from stalwart.store import open_store
    from stalwart.store.base import CreateInstance

    url, ready, go, tag = sys.argv[1:5]
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        time.sleep(0.0005)

    async def main() -> None:
        store = open_store(url)
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


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_first_open_migrates_once(tmp_path: Path, processes: int) -> None:
    """Processes opening the same new file at once all succeed; the schema is applied once."""
    files = [tmp_path / f"race-{k}.db" for k in range(3)]  # several races per run
    go = tmp_path / "go"
    children: list[tuple[Path, str, subprocess.Popen[str]]] = []
    for path in files:
        for n in range(processes):
            tag = f"{path.stem}-p{n}"
            ready = tmp_path / f"{tag}.ready"
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, _url(path), str(ready), str(go), tag],
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
            with proc:  # closes its pipes (also after a failed assertion) and reaps it
                pass
    reference = tmp_path / "reference.db"
    _migrate_sync(reference)
    for path in files:
        assert _versions(path) == EXPECTED_VERSIONS
        assert _schema(path) == _schema(reference)
        assert sorted(str(r[0]) for r in _query(path, "SELECT id FROM instances")) == sorted(
            f"{path.stem}-p{n}" for n in range(processes)
        )


def _migrate_sync(path: Path) -> None:
    import asyncio

    asyncio.run(_migrate(path))


async def test_schema_matches_committed_snapshot(tmp_path: Path) -> None:
    """The migrated schema equals tests/migrations/sqlite_schema.sql (no silent drift)."""
    path = tmp_path / "stalwart.db"
    await _migrate(path)
    actual = render_schema(path)
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.write_text(actual, encoding="utf-8")
    assert SNAPSHOT.exists(), f"missing {SNAPSHOT}; generate it with {UPDATE_ENV}=1"
    expected = SNAPSHOT.read_text(encoding="utf-8")
    assert actual == expected, (
        "the SQLite schema produced by the migrations differs from the committed snapshot "
        f"{SNAPSHOT.name}; if the change is intended, regenerate it with {UPDATE_ENV}=1 "
        "and commit it with the migration"
    )
