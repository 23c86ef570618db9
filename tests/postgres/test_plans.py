"""The hot statements keep primary-key plans on a fresh, unanalysed database.

PL/pgSQL caches a generic plan per session; planned while the instances table is small
and without statistics, ``stalwart_append``'s compare-and-set once tied between the
primary key and the owner index, and every step then walked all the instances its worker
owned (a fan-out of 4,000 workflows slowed to a crawl). auto_explain, at notice level,
shows the plans the function's statements actually ran with; the same holds for the
prepared one-statement plain step (its generic plan, forced).
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from stalwart.codec import JsonCodec
from stalwart.store.base import AppendEvents
from stalwart.store.postgres.pipelined import APPEND_SQL, STEP_SQL, append_params, step_params
from tests.postgres._helpers import create_op, raw_connection, register
from tests.postgres.conftest import StoreFactory
from tests.postgres_support import database_dsn


@pytest.mark.parametrize("statement", ["function", "plain step"])
async def test_append_looks_its_instance_up_by_primary_key(
    open_pg: StoreFactory, postgres_database: str, statement: str
) -> None:
    store = await open_pg()
    await register(store, "w1")
    for start in range(0, 400, 100):
        outcomes = await store.write(
            [create_op(f"i{n}", owner="w1") for n in range(start, start + 100)]
        )
        assert all(o.ok for o in outcomes)
    plans: list[str] = []
    async with raw_connection(database_dsn(postgres_database)) as conn:
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema)))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_level = notice",
            "SET client_min_messages = notice",
            # The prepared plain-step statement: its generic plan from the first call.
            "SET plan_cache_mode = force_generic_plan",
        ):
            await conn.execute(setting)
        # More calls than PL/pgSQL's five custom plans, so the cached generic plan runs too.
        for n in range(12):
            op = AppendEvents(f"i{n}", "w1", 1, 1, [])
            if statement == "function":
                params: Any = append_params(op, JsonCodec(), None, "c", "q")
                cur = await conn.execute(APPEND_SQL, params)
            else:
                params = step_params(op, JsonCodec(), None)
                cur = await conn.execute(STEP_SQL, params, prepare=True)
            assert await cur.fetchone() == (True, True, None)
    updates = [p for p in plans if "Update on instances" in p]
    assert len(updates) >= 12, plans
    assert all("instances_pkey" in p for p in updates), updates
    assert not any("instances_owner" in p for p in updates), updates
