"""Shared fixtures: engines on every local store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from stalwart import Engine, WorkerOptions

pytest_plugins = ["pytester"]

STORES = ["memory", "sqlite"]


def store_url(kind: str, tmp_path: Path) -> str:
    """A fresh store URL of the given kind."""
    if kind == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'stalwart.db'}"


@pytest.fixture(params=STORES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL, once per local store kind."""
    return store_url(request.param, tmp_path)


EngineFactory = Callable[..., Engine]


@pytest.fixture
async def make_engine(url: str) -> AsyncIterator[EngineFactory]:
    """Build engines on the test's store; all are closed at the end of the test."""
    made: list[Engine] = []

    def factory(*, workflows: Any = None, activities: Any = None, **options: Any) -> Engine:
        opts = WorkerOptions(**{"poll_interval": 0.05, **options})
        engine = Engine(url, workflows=workflows, activities=activities or [], options=opts)
        made.append(engine)
        return engine

    yield factory
    for engine in made:
        await engine.close()
