"""SQL fragments and row decoding shared by the PostgreSQL store's modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from stalwart.codec import Codec
from stalwart.store.base import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    InstanceRecord,
    WorkerRecord,
)

Conn = AsyncConnection[tuple[Any, ...]]
"""A pooled connection (autocommit; transactions are explicit)."""


def _sql_list(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


ACTIVE = _sql_list(ACTIVE_STATUSES)
"""SQL list of the active statuses."""
TERMINAL = _sql_list(TERMINAL_STATUSES)
"""SQL list of the terminal statuses."""
INSTANCE_COLS = (
    "id, name, version, status, run_id, input, output, error, created_at, updated_at, "
    "owner, epoch, wake_at, history_len, current_step, parent_id, search_attributes, "
    "needs_intervention, queue, priority, dedup_key, started_at, recoveries"
)
WORKER_COLS = "id, name, host, pid, started_at, expires_at, serves"
DB_NOW = "extract(epoch FROM now())::float8"
"""The database's clock (the transaction's start) as epoch seconds."""


def decode_instance(codec: Codec, row: Sequence[Any]) -> InstanceRecord:
    """An instance record from a row of ``INSTANCE_COLS``."""
    loads = codec.loads
    return InstanceRecord(
        id=row[0],
        name=row[1],
        version=row[2],
        status=row[3],
        run_id=row[4],
        input=loads(row[5]),
        output=loads(row[6]) if row[6] is not None else None,
        error=loads(row[7]) if row[7] is not None else None,
        created_at=row[8],
        updated_at=row[9],
        owner=row[10],
        epoch=row[11],
        wake_at=row[12],
        history_len=row[13],
        current_step=row[14],
        parent_id=row[15],
        search_attributes=row[16],
        needs_intervention=row[17],
        queue=row[18],
        priority=row[19],
        dedup_key=row[20],
        started_at=row[21],
        recoveries=row[22],
    )


def decode_worker(row: Sequence[Any]) -> WorkerRecord:
    """A worker record from a row of ``WORKER_COLS``."""
    return WorkerRecord(row[0], row[1], row[2], row[3], row[4], row[5], tuple(row[6]))


def served(
    names: Sequence[str], versions: Mapping[str, Sequence[int]] | None
) -> tuple[str, dict[str, Any]]:
    """The SQL condition selecting served workflows, and its named parameters."""
    if versions is None:
        return "name = ANY(%(served_names)s::text[])", {"served_names": list(names)}
    pairs = [(n, v) for n in names for v in versions.get(n, ())]
    if not pairs:
        return "false", {}
    return (
        "(name, version) IN (SELECT * FROM unnest(%(served_names)s::text[], "
        "%(served_versions)s::int[]))",
        {"served_names": [n for n, _ in pairs], "served_versions": [v for _, v in pairs]},
    )
