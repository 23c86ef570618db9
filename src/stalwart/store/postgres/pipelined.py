"""Operations that commit as one statement each, so a batch sends them in one pipeline.

**Steps**: an :class:`AppendEvents` is a call of ``stalwart_append``. The server-side
function (migration 0003) does what ``Batch._append`` does statement by
statement: the compare-and-set on the instance row, the history rows, the inbox
acknowledgement, the parent's notification and the wake-up NOTIFYs. A lone step is then
one autocommit statement (one round trip instead of six), and a group-commit batch sends
a run of steps as one ``stalwart_append_batch`` call (migration 0006: ``stalwart_append``
per element of its argument arrays). A lone *plain* step (see :func:`plain_step`) does
not call the function: :data:`STEP_SQL` does the same in one SQL statement. Steps with
effects on other instances or a continue-as-new take the statement-by-statement path,
which applies those in the same transaction.

**Starts**: a :class:`CreateInstance` without a deduplication key inserts its row and its
first events in one statement (a data-modifying CTE). When the id is taken the statement
inserts nothing and the batch runs the full create, which handles existing instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

from psycopg.types.json import Jsonb

from stalwart._engine.events import Event
from stalwart.codec import Codec
from stalwart.store.base import AppendEvents, CreateInstance, WriteOp, WriteOutcome
from stalwart.store.postgres._common import INSTANCE_COLS
from stalwart.store.postgres.arrays import Float8Array, TextArray

# The event arrays go in binary format (%b): in text format psycopg escapes every quote
# of the JSON payloads with a regex substitution, which cost more than the rest of a step.
APPEND_SQL = (
    "SELECT ok, found, wake_at FROM stalwart_append("
    + ", ".join(["%s"] * 15 + ["%b"] * 3 + ["%s"] * 3)
    + ")"
)
"""The call; its parameters come from :func:`append_params`."""


def event_arrays(
    events: Sequence[tuple[float, Event]], codec: Codec
) -> tuple[TextArray, Float8Array, TextArray]:
    """The kinds, times and JSON data of ``events``: the three arrays the statements unnest
    into history rows."""
    dumps = codec.dumps
    return (
        TextArray([e.kind for _, e in events]),
        Float8Array([float(t) for t, _ in events]),
        TextArray([dumps(e.to_data()) for _, e in events]),
    )


def one_statement(op: WriteOp) -> TypeGuard[AppendEvents]:
    """Whether ``op`` commits as one statement (``stalwart_append``, or :data:`STEP_SQL`
    when it is a :func:`plain_step`)."""
    return isinstance(op, AppendEvents) and not op.effects and op.new_run is None


def append_params(
    op: AppendEvents,
    codec: Codec,
    now: float | None,
    channel: str,
    queue_channel: str,
) -> tuple[Any, ...]:
    """The arguments of ``stalwart_append`` for ``op`` (``now``: None for the database's)."""
    dumps = codec.dumps
    terminal = op.status is not None
    child_payload = (
        dumps({"status": op.status, "output": op.output, "error": op.error})
        if terminal and not op.needs_intervention
        else None
    )
    return (
        op.instance_id,
        op.owner,
        op.epoch,
        op.expected_seq,
        op.status,
        op.active_status,
        dumps(op.output) if terminal else None,
        dumps(op.error) if op.error is not None else None,
        op.needs_intervention,
        op.release,
        op.inbox_upto,
        op.wake_at,
        op.current_step,
        Jsonb(op.search_attributes) if op.search_attributes is not None else None,
        now,
        *event_arrays(op.events, codec),
        child_payload,
        channel,
        queue_channel,
    )


_BATCH_TYPES = (
    "text[]", "text[]", "bigint[]", "integer[]", "text[]", "text[]", "text[]", "text[]",
    "boolean[]", "boolean[]", "bigint[]", "float8[]", "text[]", "jsonb[]",
)  # fmt: skip
APPEND_BATCH_SQL = (
    "SELECT ok, found, wake_at FROM stalwart_append_batch("
    + ", ".join(f"%b::{t}" for t in _BATCH_TYPES)
    + ", %s, %b::integer[], %b::text[], %b::float8[], %b::text[], %b::text[], %s, %s)"
)
"""Every plain step of a batch in one call (migration 0006); see :func:`append_batch_params`."""


def _column(values: list[Any]) -> list[Any] | None:
    # psycopg cannot tell the element type of a list of nothing but None; NULL works the
    # same inside the function (NULL[i] is NULL).
    return values if any(v is not None for v in values) else None


# Positions in the arguments of ``stalwart_append`` (see append_params): the 14 per-step
# scalars come first, then ``now``, the three event arrays and the child payload.
_STEP_SCALARS = slice(0, 14)
_KINDS, _TIMES, _DATA, _CHILD_PAYLOAD = 15, 16, 17, 18


def append_batch_params(
    ops: Sequence[AppendEvents],
    codec: Codec,
    now: float | None,
    channel: str,
    queue_channel: str,
) -> tuple[Any, ...]:
    """The arguments of ``stalwart_append_batch``: one array per argument of
    ``stalwart_append``, and the steps' events flattened with a count per step."""
    calls = [append_params(op, codec, now, channel, queue_channel) for op in ops]
    rows = [call[_STEP_SCALARS] for call in calls]
    columns = [_column(list(column)) for column in zip(*rows, strict=True)]
    kinds, times, data = TextArray(), Float8Array(), TextArray()
    for call in calls:
        kinds += call[_KINDS]
        times += call[_TIMES]
        data += call[_DATA]
    return (
        *columns,
        now,
        [len(call[_KINDS]) for call in calls],
        kinds,
        times,
        data,
        _column([call[_CHILD_PAYLOAD] for call in calls]),
        channel,
        queue_channel,
    )


# A plain step (not terminal, not releasing, no inbox acknowledgement, not parked): what
# stalwart_append does for it, as one SQL statement. PL/pgSQL runs each of its statements
# through SPI with its own executor start-up; the data-modifying CTE below does the same
# compare-and-set and history insert in one executor run: up to 60 µs less server CPU per
# step (six paired rounds against the function on a 2-vCPU VM: -2 to 64 µs, median 15).
# A refusal returns one row as the function does: ``found`` tells conflict from not_found.
STEP_SQL = """\
WITH c AS (SELECT COALESCE(%(now)s::float8, extract(epoch FROM now())::float8) AS now),
u AS (
    UPDATE instances AS i SET
        status = COALESCE(%(active)s::text,
                          CASE WHEN i.status = 'pending' THEN 'running' ELSE i.status END),
        needs_intervention = false,
        updated_at = c.now,
        wake_at = CASE WHEN EXISTS (SELECT 1 FROM inbox WHERE instance_id = %(id)s)
                       THEN c.now ELSE %(wake)s::float8 END,
        history_len = %(len)s,
        current_step = %(step)s,
        search_attributes = COALESCE(%(attrs)s::jsonb, i.search_attributes),
        recoveries = 0
    FROM c
    WHERE i.id = %(id)s
      -- fenced by IS TRUE so that only the primary key is indexable (see migration 0005)
      AND (i.owner = %(owner)s AND i.epoch = %(epoch)s AND i.history_len = %(seq)s
           AND i.status IN ('pending', 'running', 'compensating')) IS TRUE
    RETURNING i.run_id, i.wake_at
),
ev AS (
    INSERT INTO events (run_id, seq, instance_id, type, time, data)
    SELECT u.run_id, %(seq)s + (e.n - 1)::integer, %(id)s, e.k, e.t, e.d
    FROM u, unnest(%(kinds)b::text[], %(times)b::float8[], %(data)b::text[])
            WITH ORDINALITY AS e(k, t, d, n)
)
SELECT true, true, u.wake_at FROM u
UNION ALL
SELECT false, EXISTS (SELECT 1 FROM instances WHERE id = %(id)s), NULL::float8
WHERE NOT EXISTS (SELECT 1 FROM u)"""
"""A plain step in one statement; its parameters come from :func:`step_params`."""


def plain_step(op: WriteOp) -> TypeGuard[AppendEvents]:
    """Whether ``op`` commits through :data:`STEP_SQL` (a step with nothing but its own
    compare-and-set, wake time and history rows: no ending, no release, no inbox
    acknowledgement, no effects on other instances, no continue-as-new)."""
    return (
        one_statement(op)
        and op.status is None
        and not op.release
        and not op.inbox_upto
        and not op.needs_intervention
    )


def step_params(op: AppendEvents, codec: Codec, now: float | None) -> dict[str, Any]:
    """The parameters of :data:`STEP_SQL` for ``op`` (``now``: None for the database's)."""
    kinds, times, data = event_arrays(op.events, codec)
    return {
        "now": now,
        "active": op.active_status,
        "id": op.instance_id,
        "wake": op.wake_at,
        "len": op.expected_seq + len(op.events),
        "step": op.current_step,
        "attrs": Jsonb(op.search_attributes) if op.search_attributes is not None else None,
        "owner": op.owner,
        "epoch": op.epoch,
        "seq": op.expected_seq,
        "kinds": kinds,
        "times": times,
        "data": data,
    }


def lone_step_call(
    op: AppendEvents,
    codec: Codec,
    now: float | None,
    channel: str,
    queue_channel: str,
) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
    """The statement and parameters that commit the one-statement step ``op``."""
    if plain_step(op):
        return STEP_SQL, step_params(op, codec, now)
    return APPEND_SQL, append_params(op, codec, now, channel, queue_channel)


def append_outcome(row: tuple[Any, ...] | None) -> WriteOutcome:
    """The outcome of one call from its result row."""
    assert row is not None, "stalwart_append returns one row"
    ok, found, _wake_at = row
    if ok:
        return WriteOutcome(True)
    return WriteOutcome(False, "conflict" if found else "not_found")


INSERT_INSTANCE = (
    f"INSERT INTO instances ({INSTANCE_COLS}) "
    "VALUES (%s, %s, %s, 'pending', %s, %s, NULL, NULL, %s, %s, %s, %s, %s, %s, "
    "NULL, %s, NULL, false, %s, %s, %s, NULL, 0) ON CONFLICT DO NOTHING "
    f"RETURNING {INSTANCE_COLS}"
)
"""A new instance's row (nothing on any unique conflict); see :func:`instance_params`."""

CREATE_SQL = (
    f"WITH ins AS ({INSERT_INSTANCE}), "
    "ev AS (INSERT INTO events (run_id, seq, instance_id, type, time, data) "
    "SELECT ins.run_id, (e.n - 1)::integer, ins.id, e.k, e.t, e.d FROM ins, "
    "unnest(%b::text[], %b::float8[], %b::text[]) WITH ORDINALITY AS e(k, t, d, n)) "
    f"SELECT {INSTANCE_COLS} FROM ins"
)
"""A start without a deduplication key; its parameters come from :func:`create_params`."""


def one_statement_create(op: WriteOp) -> TypeGuard[CreateInstance]:
    """Whether ``op`` is a start that tries the one-statement insert first."""
    return isinstance(op, CreateInstance) and op.dedup_key is None


def instance_params(op: CreateInstance, codec: Codec, now: float) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_INSTANCE` for ``op`` at the batch's time ``now``."""
    return (
        op.id,
        op.name,
        op.version,
        op.run_id,
        codec.dumps(op.input),
        now,
        now,
        op.owner,
        op.epoch,
        None if op.owner else now,
        1 + len(op.prefix),
        op.parent_id,
        op.queue,
        op.priority,
        op.dedup_key,
    )


def create_params(op: CreateInstance, codec: Codec, now: float) -> tuple[Any, ...]:
    """The parameters of :data:`CREATE_SQL` for ``op`` at the batch's time ``now``."""
    events = [(now, op.started), *op.prefix]
    return (
        *instance_params(op, codec, now),
        *event_arrays(events, codec),
    )
