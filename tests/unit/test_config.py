"""Decorators, retry policies, registry and engine configuration validate their input."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

import stalwart
from stalwart import ConfigurationError, Engine, RetryPolicy, WorkflowContext, activity, workflow
from stalwart.decorators import Registry
from stalwart.store import open_store


def test_retry_policy_validation_and_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval=1, backoff=2, max_interval=5)
    assert [policy.delay_after(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert RetryPolicy.from_data(policy.to_data()) == policy
    for bad in (
        {"max_attempts": 0},
        {"initial_interval": -1},
        {"initial_interval": math.nan},
        {"backoff": 0.5},
        {"max_interval": math.inf},
        {"non_retryable": [42]},
    ):
        with pytest.raises(ConfigurationError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_decorators_bare_and_with_arguments() -> None:
    @activity
    def plain(x: int) -> int:
        return x + 1

    @activity(name="named", retry=RetryPolicy(max_attempts=1), timeout=timedelta(seconds=3))
    async def configured(x: int) -> int:
        return x

    @workflow
    async def wf_plain(ctx: WorkflowContext) -> None:
        return None

    @workflow(name="wf_named", version=3, timeout=60)
    async def wf_configured(ctx: WorkflowContext, x: int) -> int:
        return x

    assert plain.name == "plain" and plain(1) == 2 and not plain.is_async
    assert configured.name == "named" and configured.timeout == 3.0 and configured.is_async
    assert wf_plain.name == "wf_plain" and wf_plain.version == 1
    assert (wf_configured.name, wf_configured.version, wf_configured.timeout) == ("wf_named", 3, 60)
    assert stalwart.default_registry.workflow("wf_named") is wf_configured


def test_decorator_input_errors() -> None:
    with pytest.raises(ConfigurationError, match="async def"):
        workflow(lambda ctx: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="version"):

        @workflow(version=0)
        async def bad_version(ctx: WorkflowContext) -> None: ...

    with pytest.raises(ConfigurationError, match="keyword-only"):

        @activity
        def kwonly(*, x: int) -> int:
            return x

    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        activity(retry={"max_attempts": 3})(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="name"):
        activity(name="")(lambda: None)


def test_duplicate_names_are_refused_at_engine_start() -> None:
    async def one(ctx: WorkflowContext) -> None: ...

    async def two(ctx: WorkflowContext) -> None: ...

    first = stalwart.WorkflowDefinition(one, name="same")
    second = stalwart.WorkflowDefinition(two, name="same")
    registry = Registry()
    registry.add_workflow(first)
    registry.add_workflow(second)
    with pytest.raises(ConfigurationError, match="'same'"):
        registry.check_unique()
    with pytest.raises(ConfigurationError, match="'same'"):
        Engine("memory://", workflows=[first, second], activities=[])


def test_store_urls() -> None:
    assert type(open_store("memory://")).__name__ == "MemoryStore"
    store = open_store("sqlite:///some/file.db?synchronous=normal")
    assert store.path == "some/file.db" and store.synchronous == "NORMAL"  # type: ignore[attr-defined]
    for bad in (
        "mysql://x",
        "sqlite://host/x.db",
        "sqlite:///x.db?foo=1",
        "sqlite:///x.db?synchronous=sometimes",
        "sqlite:///:memory:",
    ):
        with pytest.raises(ConfigurationError):
            open_store(bad)


async def test_bad_ids_and_listing_arguments_are_refused() -> None:
    @workflow(name="cfg_noop")
    async def cfg_noop(ctx: WorkflowContext) -> None:
        return None

    async with Engine("memory://", workflows=[cfg_noop], activities=[]) as engine:
        for bad in ("", "   ", "x" * 256, "bad\nid"):
            with pytest.raises(ConfigurationError):
                await cfg_noop.start(engine, id=bad)
        with pytest.raises(ConfigurationError, match="unknown status"):
            await engine.list(status="exploded")
        with pytest.raises(ConfigurationError, match="cursor"):
            await engine.list(cursor="!!!")
        assert (await engine.list()).items == []
