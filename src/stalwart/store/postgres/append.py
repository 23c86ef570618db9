"""The one-statement step commit: an :class:`AppendEvents` as a call of ``stalwart_append``.

The server-side function (migration 0003) does what ``Batch._append`` does statement by
statement: the compare-and-set on the instance row, the history rows, the inbox
acknowledgement, the parent's notification and the wake-up NOTIFYs. A lone step is then
one autocommit statement (one round trip instead of six), and a group-commit batch sends
its steps as one pipelined ``executemany``. Steps with effects on other instances or a
continue-as-new take the statement-by-statement path, which applies those in the same
transaction.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from psycopg.types.json import Jsonb

from stalwart.codec import Codec
from stalwart.store.base import AppendEvents, WriteOp, WriteOutcome

APPEND_SQL = "SELECT ok, found, wake_at FROM stalwart_append(" + ", ".join(["%s"] * 21) + ")"
"""The call; its parameters come from :func:`append_params`."""


def one_statement(op: WriteOp) -> TypeGuard[AppendEvents]:
    """Whether ``op`` commits through ``stalwart_append``."""
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
        [e.kind for _, e in op.events],
        [float(t) for t, _ in op.events],
        [dumps(e.to_data()) for _, e in op.events],
        child_payload,
        channel,
        queue_channel,
    )


def append_outcome(row: tuple[Any, ...] | None) -> WriteOutcome:
    """The outcome of one call from its result row."""
    assert row is not None, "stalwart_append returns one row"
    ok, found, _wake_at = row
    if ok:
        return WriteOutcome(True)
    return WriteOutcome(False, "conflict" if found else "not_found")
