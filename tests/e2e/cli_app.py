"""A small application the CLI end-to-end tests point ``--app cli_app:engine`` at.

The engine's store URL comes from ``CLI_APP_DB`` so each test run uses its own file.
"""

from __future__ import annotations

import os
from typing import Any

from stalwart import Engine, WorkflowContext, activity, workflow


@activity
def shout(text: str) -> str:
    """Upper-case ``text`` (an activity, so histories show activity events)."""
    return text.upper()


@workflow
async def double(ctx: WorkflowContext, x: int) -> int:
    """Return twice the input."""
    return x * 2


@workflow
async def wait_for_go(ctx: WorkflowContext, label: str) -> dict[str, Any]:
    """Wait for a ``go`` signal, then return the label (shouted) and the payload."""
    loud = await shout(label)
    payload = await ctx.wait_for_signal("go")
    return {"label": loud, "payload": payload}


@workflow
async def counter(ctx: WorkflowContext, start: int) -> int:
    """Count up through ``add`` updates (refusing non-positive steps) until ``stop``."""
    value = start
    stopped = False
    ctx.upsert_search_attributes({"kind": "counter", "start": start})

    @ctx.query_handler("value")
    def current() -> int:
        return value

    def positive(step: int) -> None:
        if step <= 0:
            raise ValueError("step must be positive")

    @ctx.update_handler("add", validator=positive)
    async def add(step: int) -> int:
        nonlocal value
        value += step
        await shout(f"added {step}")
        return value

    @ctx.signal_handler("stop")
    def stop() -> None:
        nonlocal stopped
        stopped = True

    await ctx.wait_condition(lambda: stopped)
    return value


engine = Engine(os.environ.get("CLI_APP_DB"))
