"""Run the store conformance suite (``stalwart.testing.StoreContract``) on every adapter.

The suite itself is backend-agnostic; this module only says how to open each backend.
To add an adapter, add its name to ``BACKENDS`` and a branch to ``store_url``.

Known adapter bugs are listed in ``KNOWN_ADAPTER_BUGS``: the affected tests run as
``xfail(strict=True)`` for that backend only, so they start failing (XPASS) as soon as the
adapter is fixed and the entry must then be removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from tests.postgres_support import store_url as postgres_store_url
from tests.postgres_support import unique_schema

from stalwart.store import Store, open_store
from stalwart.testing import FakeClock, PeerOpener, StoreContract

BACKENDS = ["memory", "sqlite", "postgres"]

KNOWN_ADAPTER_BUGS: dict[str, dict[str, str]] = {}


class TestStoreContract(StoreContract):
    """The conformance suite, once per backend in ``BACKENDS``."""

    @pytest.fixture(params=BACKENDS)
    def store_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        """The URL of a fresh, empty database of the backend under test."""
        backend: str = request.param
        reason = KNOWN_ADAPTER_BUGS.get(backend, {}).get(request.function.__name__)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
        if backend == "memory":
            return "memory://"
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / 'stalwart.db'}"
        if backend == "postgres":
            # One database per session (created and dropped WITH (FORCE)); each test gets
            # a fresh schema in it, which open() creates and migrates.
            database: str = request.getfixturevalue("postgres_database")
            return postgres_store_url(database, schema=unique_schema())
        raise AssertionError(f"no URL for backend {backend!r}")

    @pytest_asyncio.fixture
    async def store(self, store_url: str, clock: FakeClock) -> AsyncIterator[Store]:
        """An opened store on a fresh database, on the suite's fake clock."""
        store = open_store(store_url, clock=clock)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    @pytest_asyncio.fixture
    async def open_peer(  # type: ignore[override]  # a fixture override, not a method one
        self, store: Store, store_url: str, clock: FakeClock
    ) -> AsyncIterator[PeerOpener | None]:
        """Opens more stores on the same database, for shared (durable) backends."""
        if not (store.capabilities.durable or store.capabilities.multi_process):
            yield None
            return
        opened: list[Store] = []

        async def open_another() -> Store:
            peer = open_store(store_url, clock=clock)
            await peer.open()
            opened.append(peer)
            return peer

        try:
            yield open_another
        finally:
            for peer in reversed(opened):
                await peer.close()
