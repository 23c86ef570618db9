"""A lone plain step commits as one SQL statement that does what ``stalwart_append`` does.

Each case runs on twin instances in the same state: one step goes through the store (and
so :data:`STEP_SQL`), its twin calls the PL/pgSQL function directly with the same
arguments; the instance rows and the new history rows must come out the same, and so must
the outcome of a refused step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from psycopg import sql

from stalwart._engine.events import ActivityCompleted, ActivityScheduled, TimerStarted
from stalwart.codec import JsonCodec
from stalwart.store.base import AppendEvents, SendMessage, WriteOutcome
from stalwart.store.postgres import PostgresStore
from stalwart.store.postgres.pipelined import (
    APPEND_SQL,
    append_outcome,
    append_params,
    plain_step,
)
from stalwart.testing import FakeClock
from tests.postgres._helpers import create_op, raw_connection, register, running
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import database_dsn

ROW = (
    "status, output, error, updated_at, owner, epoch, wake_at, history_len, current_step,"
    " search_attributes, needs_intervention, recoveries"
)

Setup = Callable[[PostgresStore, str], Awaitable[None]]
Step = Callable[[str, float], AppendEvents]


async def _running(store: PostgresStore, name: str) -> None:
    await running(store, name)


async def _pending(store: PostgresStore, name: str) -> None:
    await register(store, "w1")
    (out,) = await store.write([create_op(name, owner="w1")])
    assert out.created


async def _with_message(store: PostgresStore, name: str) -> None:
    await running(store, name)
    (out,) = await store.write([SendMessage(name, "signal", "go", {"n": 1})])
    assert out.ok


def _events(t: float) -> list[tuple[float, Any]]:
    return [
        (t, ActivityCompleted(cmd=1, result={"it's": ['"quoted"', 1.5]})),
        (t + 0.25, ActivityScheduled(cmd=2, name="pay", input=["x"], options={})),
    ]


CASES: dict[str, tuple[Setup, Step]] = {
    "events and a wake time": (
        _running,
        lambda i, t: AppendEvents(i, "w1", 1, 2, _events(t), wake_at=t + 30, current_step="pay"),
    ),
    "no events": (_running, lambda i, t: AppendEvents(i, "w1", 1, 2, [])),
    "first step (pending to running)": (
        _pending,
        lambda i, t: AppendEvents(i, "w1", 1, 1, [(t, TimerStarted(cmd=0, fire_at=t + 5))]),
    ),
    "compensating": (
        _running,
        lambda i, t: AppendEvents(i, "w1", 1, 2, _events(t), active_status="compensating"),
    ),
    "search attributes": (
        _running,
        lambda i, t: AppendEvents(i, "w1", 1, 2, [], search_attributes={"customer": "c-1"}),
    ),
    "a message waiting in the inbox (due now)": (
        _with_message,
        lambda i, t: AppendEvents(i, "w1", 1, 2, _events(t), wake_at=t + 600),
    ),
    "stale history length": (_running, lambda i, t: AppendEvents(i, "w1", 1, 5, _events(t))),
    "another owner": (_running, lambda i, t: AppendEvents(i, "w2", 1, 2, _events(t))),
    "an old epoch": (_running, lambda i, t: AppendEvents(i, "w1", 0, 2, _events(t))),
}


async def _state(conn: Any, name: str) -> tuple[Any, ...]:
    cur = await conn.execute(f"SELECT {ROW} FROM instances WHERE id = %s", (name,))
    row = await cur.fetchone()
    cur = await conn.execute(
        "SELECT seq, type, time, data FROM events WHERE instance_id = %s AND seq >= 1 ORDER BY seq",
        (name,),
    )
    return row, await cur.fetchall()


@pytest.mark.parametrize("case", list(CASES))
async def test_the_statement_and_the_function_leave_the_same_state(
    open_pg: StoreFactory, postgres_database: str, case: str
) -> None:
    clock = FakeClock()
    store = await open_pg(clock=clock)
    setup, make_step = CASES[case]
    await setup(store, "via-function")
    await setup(store, "via-statement")
    clock.advance(7)
    t = clock()
    step = make_step("via-statement", t)
    twin = make_step("via-function", t)
    assert plain_step(step)

    (by_statement,) = await store.write([step])
    async with raw_connection(database_dsn(postgres_database)) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema)))
        params = append_params(twin, JsonCodec(), t, store.channel, "q")
        cur = await conn.execute(APPEND_SQL, params)
        by_function = append_outcome(await cur.fetchone())
        assert by_statement == by_function
        assert await _state(conn, "via-statement") == await _state(conn, "via-function")


async def test_a_step_on_a_missing_instance_is_not_found(open_pg: StoreFactory) -> None:
    store = await open_pg()
    t = store.now()
    assert await store.write([AppendEvents("nobody", "w1", 1, 2, _events(t))]) == [
        WriteOutcome(False, "not_found")
    ]


def test_only_plain_steps_take_the_statement() -> None:
    def step(**kwargs: Any) -> AppendEvents:
        return AppendEvents("i", "w1", 1, 2, [], **kwargs)

    assert plain_step(step())
    assert plain_step(step(active_status="compensating", search_attributes={"a": 1}))
    assert not plain_step(step(status="completed", output=1))
    assert not plain_step(step(status="failed", needs_intervention=True))
    assert not plain_step(step(release=True))
    assert not plain_step(step(inbox_upto=3))
    assert not plain_step(step(effects=[SendMessage("other", "signal", "x")]))
    assert not plain_step(SendMessage("i", "signal", "x"))
