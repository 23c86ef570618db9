"""PostgreSQL test helpers: which server to use, throw-away databases and schemas.

The server is ``STALWART_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432``,
the local trust-auth cluster ``make test`` starts). When it cannot be reached, tests that
need it are skipped with the reason, except under ``CI=true`` where they fail: CI must
not pass by silently skipping the PostgreSQL store.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import psycopg
import pytest
from psycopg import sql

SERVER = os.environ.get("STALWART_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The PostgreSQL server tests use (a URL without database name)."""
DB_PREFIX = "stalwart_test_"
"""Prefix of every database the tests create."""


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``), where a missing server is a failure."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@functools.cache
def unavailable_reason() -> str | None:
    """Why the test server cannot be used, or ``None`` when it can."""
    try:
        with psycopg.connect(admin_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {SERVER}: {exc}".strip()
    return None


def require_postgres() -> None:
    """Skip the test when the server is unreachable (fail instead under ``CI=true``)."""
    reason = unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)", pytrace=False)
    pytest.skip(f"{reason}; start it with `make test` or set STALWART_TEST_POSTGRES")


def admin_url() -> str:
    """A URL of the server's ``postgres`` maintenance database."""
    return f"{SERVER}/postgres"


def store_url(database: str, **options: str | int) -> str:
    """The store URL of ``database`` with query ``options`` (``schema``, ``pool_size``)."""
    query = f"?{urlencode(options)}" if options else ""
    return f"{SERVER}/{database}{query}"


def database_dsn(database: str) -> str:
    """A plain libpq URL of ``database`` (for direct inspection in tests)."""
    return f"{SERVER}/{database}"


def unique_schema(prefix: str = "t") -> str:
    """A fresh schema name."""
    return f"{prefix}_{secrets.token_hex(6)}"


def create_database() -> str:
    """Create an empty database ``stalwart_test_<random>`` and return its name."""
    name = DB_PREFIX + secrets.token_hex(6)
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    """Drop a test database, disconnecting whoever is still connected."""
    assert name.startswith(DB_PREFIX), name
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def temporary_database() -> Iterator[str]:
    """A fresh database for the duration of the block (dropped afterwards)."""
    require_postgres()
    name = create_database()
    try:
        yield name
    finally:
        drop_database(name)


def terminate_backends(database: str) -> int:
    """``pg_terminate_backend`` every other connection to ``database``; how many."""
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database created for the test session (tests isolate themselves by schema)."""
    with temporary_database() as name:
        yield name


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The URL of a fresh schema (created on first open) in the session's database."""
    return store_url(postgres_database, schema=unique_schema())
