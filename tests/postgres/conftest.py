"""Fixtures of the PostgreSQL-specific tests: a session database, a schema per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio

from stalwart.store.postgres import PostgresStore
from stalwart.testing import FakeClock
from tests.postgres_support import postgres_database, postgres_url

__all__ = ["postgres_database", "postgres_url"]

StoreFactory = Callable[..., Awaitable[PostgresStore]]


@pytest_asyncio.fixture
async def open_pg(postgres_url: str) -> AsyncIterator[StoreFactory]:
    """Open stores on the test's schema (``url=`` to use another); closed at the end."""
    opened: list[PostgresStore] = []

    async def factory(*, url: str | None = None, clock: FakeClock | None = None) -> PostgresStore:
        store = PostgresStore(url or postgres_url, clock=clock)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in reversed(opened):
        await store.close()
