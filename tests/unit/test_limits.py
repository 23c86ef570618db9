"""Limits with clear errors: payload size, history size."""

from __future__ import annotations

import pytest

from stalwart import (
    EncodingError,
    WorkflowContext,
    WorkflowFailedError,
    activity,
    workflow,
)
from tests.conftest import EngineFactory


@activity
async def l_echo(text: str) -> str:
    return text


@activity
async def l_blow_up(n: int) -> str:
    return "x" * n


@workflow(name="l_payloads")
async def l_payloads(ctx: WorkflowContext, n: int) -> str:
    try:
        await l_echo("y" * n)  # too big an argument: refused at the call site
    except EncodingError as exc:
        first = f"call: {exc}"
    try:
        await l_blow_up(n)  # too big a result: recorded once as a non-retryable failure
    except Exception as exc:
        return f"{first} | result: {type(exc).__name__}: {exc}"
    return first


@workflow(name="l_take")
async def l_take(ctx: WorkflowContext, text: str) -> int:
    return len(text)


async def test_payload_limits(make_engine: EngineFactory, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(
        workflows=[l_payloads, l_take],
        activities=[l_echo, l_blow_up],
        max_payload_bytes=10_000,
        warn_payload_bytes=1_000,
    )
    async with engine:
        with pytest.raises(EncodingError, match=r"l_take\(text\).*over the limit of 10000"):
            await l_take.start(engine, "w" * 20_000, id="big-input")
        assert not await engine.get_handle("big-input").exists()
        message = await l_payloads.run(engine, 10_001, id="p", timeout=10)
    call, result = message.split(" | ")
    assert "l_echo(text): encoded value is" in call
    assert result.startswith("result: ActivityError") and "over the limit" in result
    with caplog.at_level("WARNING", logger="stalwart"):
        engine.converter.to_data("z" * 2_000, str, path="note")
    assert any("note: encoded value is" in r.message for r in caplog.records)


@workflow(name="l_runaway")
async def l_runaway(ctx: WorkflowContext) -> None:
    while True:
        await l_echo("again")


async def test_history_limit_ends_a_runaway_run(make_engine: EngineFactory) -> None:
    engine = make_engine(workflows=[l_runaway], activities=[l_echo], history_limit=50)
    async with engine:
        h = await l_runaway.start(engine, id="runaway")
        with pytest.raises(WorkflowFailedError) as info:
            await h.result(timeout=10)
        assert info.value.status == "terminated"
        assert info.value.error_type == "HistoryLimitExceeded"
        assert "continue_as_new" in info.value.message
        assert len(await h.history()) <= 52
