"""The database clock (no clock given), URL options and open_store dispatch."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from stalwart.errors import ConfigurationError
from stalwart.store import open_store
from stalwart.store.base import AppendEvents
from stalwart.store.postgres import PostgresStore, parse_url
from stalwart.testing import FakeClock
from tests.postgres._helpers import WF, create_op, register, running
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import database_dsn


def _db_now(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


async def test_database_clock_stamps_writes(open_pg: StoreFactory, postgres_database: str) -> None:
    """Without a clock, timestamps are the server's and now() tracks the server clock."""
    dsn = database_dsn(postgres_database)
    store = await open_pg()
    before = _db_now(dsn)
    assert abs(store.now() - before) < 0.5
    (out,) = await store.write([create_op("i1")])
    after = _db_now(dsn)
    assert out.record is not None
    assert before <= out.record.created_at <= after
    assert out.record.wake_at == out.record.created_at
    (history,) = await store.load_history("i1", "run-i1")
    assert history.time == out.record.created_at


async def test_database_clock_judges_due_times_and_leases(open_pg: StoreFactory) -> None:
    """Claims compare wake_at and leases with the server clock."""
    store = await open_pg()
    await running(store, "i1")
    t = store.now()
    (out,) = await store.write([AppendEvents("i1", "w1", 1, 2, wake_at=t + 0.3, release=True)])
    assert out.ok
    await register(store, "w2")
    assert await store.claim("w2", [WF]) == []
    await asyncio.sleep(0.4)
    assert [c.instance_id for c in await store.claim("w2", [WF])] == ["i1"]
    await register(store, "short", ttl=0.2)
    session = store.heartbeat_session()
    try:
        assert await asyncio.to_thread(session.renew, "short", 0.2) is True
        (worker,) = [w for w in await store.list_workers() if w.id == "short"]
        assert abs(worker.expires_at - (store.now() + 0.2)) < 0.3
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(session.renew, "short", 0.2) is False  # lapsed
    finally:
        await asyncio.to_thread(session.close)


async def test_given_clock_is_used_for_everything(open_pg: StoreFactory) -> None:
    """With a clock, every stored time is the clock's, however far from the server's."""
    clock = FakeClock(start=1_000.0)
    store = await open_pg(clock=clock)
    assert store.now() == 1_000.0
    (out,) = await store.write([create_op("i1")])
    assert out.record is not None and out.record.created_at == 1_000.0
    await register(store, "w1")
    assert [c.instance_id for c in await store.claim("w1", [WF])] == ["i1"]


def test_open_store_dispatches_postgres_urls() -> None:
    """open_store builds a PostgresStore; time.time means "use the database clock"."""
    clock = FakeClock()
    store = open_store("postgresql://u@127.0.0.1:5432/db?schema=app_1", clock=clock)
    assert isinstance(store, PostgresStore)
    assert store.schema == "app_1" and store.channel == "app_1_wake"
    assert store.now() == clock()
    store = open_store("postgres://u@127.0.0.1/db", clock=time.time)
    assert isinstance(store, PostgresStore)
    assert store.schema == "stalwart"
    assert store._clock is None
    caps = store.capabilities
    assert (caps.durable, caps.multi_process) == (True, True)
    assert caps.extra == {"listen_notify": True, "skip_locked": True, "concurrent_writes": True}


def test_url_options() -> None:
    """schema, pool_size and pool_timeout are ours; the rest goes to libpq."""
    cfg = parse_url(
        "postgresql://me:secret@127.0.0.1:5433/db?schema=s2&pool_size=3&pool_timeout=2.5"
        "&sslmode=disable&application_name=billing"
    )
    assert (cfg.schema, cfg.pool_size, cfg.pool_timeout) == ("s2", 3, 2.5)
    assert "search_path=s2" in cfg.conninfo
    assert "application_name=billing" in cfg.conninfo
    assert "sslmode=disable" in cfg.conninfo
    assert "port=5433" in cfg.conninfo
    assert "secret" not in cfg.display and "me:***@" in cfg.display
    default = parse_url("postgresql://127.0.0.1/db")
    assert (default.schema, default.pool_size) == ("stalwart", 10)
    assert "application_name=stalwart" in default.conninfo


@pytest.mark.parametrize(
    "query",
    [
        "schema=Upper",
        "schema=bad-name",
        "schema=1abc",
        "schema=" + "x" * 60,
        "pool_size=0",
        "pool_size=two",
        "pool_timeout=-1",
        "no_such_libpq_option=1",
    ],
)
def test_bad_url_options_are_configuration_errors(query: str) -> None:
    """Invalid options are refused when the store is built, not when it connects."""
    with pytest.raises(ConfigurationError):
        PostgresStore(f"postgresql://127.0.0.1/db?{query}")


def test_not_a_postgres_url() -> None:
    """parse_url only takes postgresql:// and postgres:// URLs."""
    with pytest.raises(ConfigurationError):
        parse_url("mysql://127.0.0.1/db")
