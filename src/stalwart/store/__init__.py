"""Stores: the storage port and its adapters, chosen by URL."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlparse

from stalwart.codec import Codec
from stalwart.errors import ConfigurationError
from stalwart.store.base import Store

DEFAULT_URL = "sqlite:///stalwart.db"
"""The store used when no URL is given: ``./stalwart.db``."""


def open_store(
    url: str | None = None, *, codec: Codec | None = None, clock: Callable[[], float] = time.time
) -> Store:
    """Build the store a URL names (not yet opened).

    ``memory://`` keeps everything in memory; ``sqlite:///relative.db`` or
    ``sqlite:////absolute/path.db`` (optionally ``?synchronous=NORMAL``) is a SQLite file.
    ``postgresql://user@host:5432/db`` (optionally ``?schema=name&pool_size=N``) is a
    PostgreSQL database; unless ``clock`` is a custom clock (not ``time.time``), its
    database clock judges leases and due times.
    """
    url = url or DEFAULT_URL
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from stalwart.store.memory import MemoryStore

        return MemoryStore(clock=clock)
    if parsed.scheme == "sqlite":
        from stalwart.store.sqlite import SQLiteStore

        if parsed.netloc:
            raise ConfigurationError(
                f"SQLite URLs look like sqlite:///relative.db or sqlite:////abs.db, got {url!r}"
            )
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(sorted(unknown))}")
        return SQLiteStore(
            path, synchronous=options.get("synchronous", "FULL"), codec=codec, clock=clock
        )
    if parsed.scheme in ("postgresql", "postgres"):
        from stalwart.store.postgres import PostgresStore

        return PostgresStore(url, codec=codec, clock=None if clock is time.time else clock)
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use memory://, sqlite:///path.db or postgresql://..."
    )


__all__ = ["DEFAULT_URL", "Store", "open_store"]
