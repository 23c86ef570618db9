"""result() of a run this process's worker ended takes the committed ending in-process.

The worker tells waiters how the run ended once its final write is committed, so
``result()`` needs no read of the store for it (a read per workflow was a tenth of a
fan-out's CPU on SQLite). The outcome must be exactly what a read of the store gives: a
typed result, or the failure with its type and message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from stalwart import Engine, WorkflowContext, WorkflowFailedError, activity, workflow
from tests.conftest import EngineFactory


@dataclass
class Receipt:
    order: str
    total: float


@activity
async def rip_price(order: str) -> float:
    return 12.5


@workflow(name="rip_order")
async def rip_order(ctx: WorkflowContext, order: str) -> Receipt:
    return Receipt(order, await rip_price(order))


@workflow(name="rip_broken")
async def rip_broken(ctx: WorkflowContext, order: str) -> Receipt:
    await rip_price(order)
    raise ValueError(f"order {order} is malformed")


def _count_reads(engine: Engine) -> list[str]:
    reads: list[str] = []
    original = engine.store.get_instance

    async def counted(instance_id: str) -> Any:
        reads.append(instance_id)
        return await original(instance_id)

    engine.store.get_instance = counted  # type: ignore[method-assign]
    return reads


async def test_result_of_a_local_run_is_not_read_back(make_engine: EngineFactory) -> None:
    async with make_engine(workflows=[rip_order], activities=[rip_price]) as engine:
        reads = _count_reads(engine)
        handle = await rip_order.start(engine, "A-1")
        assert await handle.result(timeout=10) == Receipt("A-1", 12.5)
        assert reads == []
        # A later handle, with the run no longer live here, reads the same from the store.
        assert await engine.get_handle(handle.id).result(timeout=10) == Receipt("A-1", 12.5)
        assert reads == [handle.id]


async def test_failure_of_a_local_run_matches_the_stored_one(make_engine: EngineFactory) -> None:
    async with make_engine(workflows=[rip_broken], activities=[rip_price]) as engine:
        reads = _count_reads(engine)
        handle = await rip_broken.start(engine, "B-2")
        with pytest.raises(WorkflowFailedError) as local:
            await handle.result(timeout=10)
        assert reads == []
        with pytest.raises(WorkflowFailedError) as stored:
            await engine.get_handle(handle.id).result(timeout=10)
        assert reads == [handle.id]
        for attr in ("status", "error_type", "args"):
            assert getattr(local.value, attr) == getattr(stored.value, attr)
        assert local.value.status == "failed" and local.value.error_type == "ValueError"
        assert "order B-2 is malformed" in str(local.value)
