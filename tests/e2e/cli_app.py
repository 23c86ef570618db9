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


engine = Engine(os.environ.get("CLI_APP_DB"))
