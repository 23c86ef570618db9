"""The testing toolkit: virtual time, activity mocks, Replayer, pytest fixtures."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from examples.user_trial import (
    DAY,
    TrialOutcome,
    disable_trial_features,
    send_trial_email,
    user_trial,
)

from stalwart import WorkflowContext, activity, workflow
from stalwart._engine.events import history_to_json
from stalwart.testing import Replayer, TestEngine

START = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)


def trial_engine(sent: list[tuple[float, str]], env_ref: list[TestEngine]) -> TestEngine:
    async def fake_email(user_id: str, kind: str) -> None:
        sent.append(((env_ref[0].now() - START) / DAY, kind))

    async def fake_disable(user_id: str) -> None:
        sent.append(((env_ref[0].now() - START) / DAY, "disabled"))

    env = TestEngine(
        workflows=[user_trial],
        activities=[send_trial_email, disable_trial_features],
        mocks={send_trial_email: fake_email, disable_trial_features: fake_disable},
        start=START,
    )
    env_ref.append(env)
    return env


async def test_thirty_day_trial_with_extension_runs_in_virtual_time() -> None:
    sent: list[tuple[float, str]] = []
    env_ref: list[TestEngine] = []
    wall = time.monotonic()
    async with trial_engine(sent, env_ref) as env:
        h = await user_trial.start(env, "u-1", id="trial-u-1")
        await env.sleep(10 * DAY)
        assert await h.query("status") == {
            "converted": False,
            "extended": False,
            "trial_end": (START + 30 * DAY).isoformat(),
            "sent": ["reminder"],
        }
        await h.signal("extend")
        await h.signal("extend")  # honoured once only
        outcome = await h.result(timeout=10)
        assert env.now() == START + 37 * DAY
    assert time.monotonic() - wall < 1.0
    assert sent == [
        (7.0, "reminder"),
        (14.0, "conversion_offer"),
        (25.0, "final_reminder"),
        (37.0, "disabled"),
        (37.0, "trial_ended"),
    ]
    assert outcome == TrialOutcome(
        "u-1",
        converted=False,
        extended=True,
        plan=None,
        actions=["reminder", "conversion_offer", "final_reminder", "trial_ended"],
    )


async def test_upgrade_cancels_the_rest_of_the_schedule() -> None:
    sent: list[tuple[float, str]] = []
    env_ref: list[TestEngine] = []
    async with trial_engine(sent, env_ref) as env:
        h = await user_trial.start(env, "u-2", id="trial-u-2")
        await env.sleep(16 * DAY)
        await h.signal("upgrade", "pro")
        outcome = await h.result(timeout=10)
        await env.sleep(30 * DAY)  # nothing else happens
    assert sent == [(7.0, "reminder"), (14.0, "conversion_offer"), (16.0, "welcome_pro")]
    assert outcome.converted and outcome.plan == "pro"


async def test_history_exported_as_json_replays_with_the_replayer() -> None:
    sent: list[tuple[float, str]] = []
    env_ref: list[TestEngine] = []
    async with trial_engine(sent, env_ref) as env:
        h = await user_trial.start(env, "u-3", id="trial-u-3")
        await env.sleep(20 * DAY)
        await h.signal("upgrade", "team")
        await h.result(timeout=10)
        exported = json.dumps(history_to_json(await h.history()))
    result = Replayer([user_trial]).replay(exported)
    assert result.ok and result.status == "completed", result.error


@activity(name="tk_lookup")
async def tk_lookup(key: str) -> str:
    raise RuntimeError("would call a real service")


@workflow(name="tk_uses_lookup")
async def tk_uses_lookup(ctx: WorkflowContext, key: str) -> str:
    return await tk_lookup(key)


async def test_mock_activity_replaces_the_implementation() -> None:
    async with TestEngine(workflows=[tk_uses_lookup], activities=[tk_lookup]) as env:
        env.mock_activity(tk_lookup, lambda key: f"fake-{key}")
        assert await tk_uses_lookup.run(env, "k", id="mocked", timeout=10) == "fake-k"


def test_pytest_fixtures_are_provided(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nasyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
    )
    pytester.makepyfile(
        """
        from stalwart import Engine, WorkflowContext, workflow
        from stalwart.testing import TestEngine

        @workflow
        async def hello(ctx: WorkflowContext, name: str) -> str:
            await ctx.sleep(86400)
            return "hi " + name

        async def test_engine_fixture(engine: Engine) -> None:
            assert engine.url == "memory://"

        async def test_test_engine_fixture(test_engine: TestEngine) -> None:
            start = test_engine.now()
            assert await hello.run(test_engine, "ada", id="h", timeout=5) == "hi ada"
            assert (test_engine.now() - start).total_seconds() >= 86400
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
