"""pytest fixtures for Stalwart users (registered through the ``pytest11`` entry point).

* ``engine`` — an open :class:`stalwart.Engine` on the in-memory store, serving every
  registered workflow and activity, closed after the test;
* ``test_engine`` — an open :class:`stalwart.testing.TestEngine` (virtual clock).

The fixtures are async: they need pytest-asyncio (``asyncio_mode = "auto"`` or the
``asyncio`` marker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from stalwart.client import Engine
from stalwart.testing.environment import TestEngine

try:
    from pytest_asyncio import fixture as _fixture
except ImportError:  # pragma: no cover - without pytest-asyncio the fixtures cannot run
    from pytest import fixture as _fixture  # type: ignore[no-redef]


@_fixture
async def engine() -> AsyncIterator[Engine]:
    """An in-memory engine (client and worker) for the test."""
    async with Engine("memory://") as opened:
        yield opened


@_fixture
async def test_engine() -> AsyncIterator[TestEngine]:
    """An in-memory engine whose clock skips idle time."""
    async with TestEngine() as opened:
        yield opened
