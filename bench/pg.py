"""PostgreSQL helpers: a fresh database per measurement, availability, settings.

Only loopback servers are used (``--pg-url`` must point at 127.0.0.1, ::1 or localhost).
Every measurement gets its own database ``bench_<random>``, created by the parent before
the measurement's child process starts and dropped (``WITH (FORCE)``) after it ended,
whatever happened in the child.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlparse, urlunparse

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432"
"""The server (no database): the local cluster, user postgres, trust auth."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")
DURABILITY_SETTINGS = ("synchronous_commit", "fsync", "wal_sync_method")


def check_loopback(server_url: str) -> None:
    """Refuse anything but a loopback server."""
    host = urlparse(server_url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"--pg-url must name a loopback server (127.0.0.1), got host {host!r}")


def database_url(server_url: str, dbname: str) -> str:
    """``server_url`` with the database ``dbname``."""
    parsed = urlparse(server_url)
    return urlunparse(parsed._replace(path=f"/{dbname}"))


def admin_url(server_url: str) -> str:
    """The maintenance database of the server (to create and drop others)."""
    return database_url(server_url, "postgres")


def new_db_name() -> str:
    """A fresh, unique database name."""
    return f"bench_{uuid.uuid4().hex[:12]}"


def create_database(server_url: str, dbname: str) -> str:
    """Create ``dbname``; return its URL."""
    import psycopg

    with psycopg.connect(admin_url(server_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    return database_url(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """Drop ``dbname`` (disconnecting whoever still uses it); ignore errors."""
    try:
        import psycopg

        with psycopg.connect(admin_url(server_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    except Exception:
        pass


def read_settings(conn: Any) -> dict[str, str]:
    """``SHOW`` the durability settings on a (sync psycopg or DB-API) connection."""
    out = {}
    for name in DURABILITY_SETTINGS:
        cur = conn.execute(f"SHOW {name}")
        out[name] = str(cur.fetchone()[0])
    return out


def server_info(server_url: str) -> dict[str, str]:
    """Version and durability settings of the server (header of the report)."""
    import psycopg

    with psycopg.connect(admin_url(server_url), autocommit=True, connect_timeout=10) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        info = {"server_version": version}
        info.update(read_settings(conn))
        for name in ("shared_buffers", "max_connections", "commit_delay"):
            info[name] = str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
    return info


def stalwart_available(server_url: str) -> tuple[bool, str]:
    """Whether ``stalwart.store.open_store("postgresql://...")`` opens and closes a store
    on a fresh database; ``(False, reason)`` otherwise."""
    dbname = new_db_name()
    try:
        url = create_database(server_url, dbname)
    except Exception as exc:
        return False, f"cannot create a database: {_reason(exc)}"
    try:
        from stalwart.store import open_store

        async def probe() -> None:
            store = open_store(url)
            await store.open()
            await store.close()

        asyncio.run(probe())
        return True, ""
    except Exception as exc:
        return False, _reason(exc)
    finally:
        drop_database(server_url, dbname)


def next_xid(url: str) -> int | None:
    """The next transaction id of the cluster (not consuming one).

    Only transactions that write get an id, so the difference between two readings counts
    write transactions: the PostgreSQL analog of the SQLite COMMIT count. The counter is
    cluster-wide: writes to other databases during the run would be counted too.
    """
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
            return int(row[0]) if row else None
    except Exception:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
