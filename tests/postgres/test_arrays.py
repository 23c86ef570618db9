"""The typed event arrays reach PostgreSQL exactly as plain lists would."""

from __future__ import annotations

from stalwart.store.postgres.arrays import Float8Array, TextArray
from tests.postgres._helpers import raw_connection
from tests.postgres_support import database_dsn


async def test_typed_arrays_round_trip(postgres_database: str) -> None:
    texts = ['{"a": "quote \\" backslash \\\\ é ✓"}', "", "NULL", "x" * 10_000]
    floats = [0.0, -1.5, 1796047436.719912, 1e-300]
    async with raw_connection(database_dsn(postgres_database)) as conn:
        cur = await conn.execute(
            "SELECT %b::text[], %b::float8[], %b::text[], %b::float8[], "
            "%b::text[] = %s::text[], cardinality(%b::text[])",
            (
                TextArray(texts),
                Float8Array(floats),
                TextArray(),
                Float8Array(),
                TextArray(texts),
                texts,
                TextArray(),
            ),
        )
        row = await cur.fetchone()
    assert row == (texts, floats, [], [], True, 0)
