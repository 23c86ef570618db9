"""What each command does, over the public client API (one coroutine per command)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from stalwart import Engine, WorkflowHandle
from stalwart import lint as determinism
from stalwart.cli import render
from stalwart.cli.errors import EXIT_USAGE, CliError
from stalwart.cli.loader import engine_url

logger = logging.getLogger("stalwart.cli")

ClientOp = Callable[[Engine], Awaitable[None]]
"""What a client command does with an open, worker-less engine."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str, what: str) -> Any:
    """Parse a JSON command-line value; invalid JSON is a usage error (exit 2).

    ``NaN`` and ``Infinity`` (which Python's parser accepts) are refused too.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise CliError(f"invalid JSON for {what}: {exc} (got {text!r})", EXIT_USAGE) from None


def input_arguments(text: str) -> list[Any]:
    """The workflow's positional arguments: a JSON list, or one non-list JSON value."""
    value = parse_json(text, "--input")
    return value if isinstance(value, list) else [value]


def _say(message: str) -> None:
    render.console().print(message, soft_wrap=True)


async def with_engine(engine: Engine, op: ClientOp) -> None:
    """Open ``engine``, run ``op`` with it and close it."""
    async with engine:
        await op(engine)


async def run_worker(engine: Engine) -> None:
    """Serve the engine's workflows until SIGINT/SIGTERM, then stop gracefully."""
    async with engine:
        names = ", ".join(engine.registry.workflow_names()) or "(none)"
        worker_id = engine.worker.id if engine.worker is not None else "?"
        logger.info("worker %s serving workflows [%s] on %s", worker_id, names, engine_url(engine))
        await engine.run_worker()
        logger.info("worker %s stopping", worker_id)
    logger.info("worker stopped")


async def start(
    engine: Engine,
    name: str,
    arguments: list[Any],
    *,
    instance_id: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Start (idempotently, given an id) and optionally wait for the result."""
    handle = await engine.start_by_name(name, arguments, id=instance_id)
    if not wait:
        if as_json:
            render.emit_json({"id": handle.id})
        else:
            echo(handle.id)
        return
    if not as_json:
        echo(handle.id)
    result = await _wait_result(engine, handle, timeout)
    if as_json:
        render.emit_json({"id": handle.id, "status": "completed", "result": result})
    else:
        echo(render.compact(result))


async def _wait_result(engine: Engine, handle: WorkflowHandle[Any], timeout: float | None) -> Any:
    try:
        value = await handle.result(timeout=timeout)
    except TimeoutError:
        status = await handle.status()
        raise CliError(
            f"timed out after {timeout:g}s waiting for {handle.id!r} (status: {status})", 1
        ) from None
    return engine.converter.to_data(value, Any, path=f"{handle.id} result")


def echo(text: str) -> None:
    """Print plain text on stdout (no markup, no wrapping)."""
    sys.stdout.write(text + "\n")


async def status(engine: Engine, instance_id: str, *, as_json: bool) -> None:
    """Print an instance's status."""
    value = await engine.get_handle(instance_id).status()
    if as_json:
        render.emit_json({"id": instance_id, "status": value})
    else:
        render.console().print(render.status_text(value))


async def describe(engine: Engine, instance_id: str, *, as_json: bool) -> None:
    """Print every field ``handle.describe()`` reports."""
    desc = await engine.get_handle(instance_id).describe()
    if as_json:
        render.emit_json(render.description_data(desc))
    else:
        render.console().print(render.describe_table(desc))


async def list_instances(
    engine: Engine,
    *,
    status: str | None,
    name: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    version: int | None = None,
    parent: str | None = None,
    since: str | None = None,
    until: str | None = None,
    search: list[str] | None = None,
) -> None:
    """Print a page of instances, newest first, and the cursor of the next page."""
    page = await engine.list(
        name=name,
        status=status,
        limit=limit,
        cursor=cursor,
        version=version,
        parent=parent,
        created_after=_when(since, "--since"),
        created_before=_when(until, "--until"),
        search=_search(search or []),
    )
    if as_json:
        render.emit_json(render.list_data(page))
        return
    out = render.console()
    if not page.items:
        out.print("no workflow instances")
    else:
        out.print(render.list_table(page))
    if page.next_cursor is not None:
        out.print(f"next page: --cursor {escape(page.next_cursor)}", soft_wrap=True)


def _when(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{what}: {text!r} is not an ISO 8601 date or time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _search(pairs: list[str]) -> dict[str, Any] | None:
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--search takes KEY=JSON, got {pair!r}")
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw  # a bare word is a string
    return found or None


async def history(engine: Engine, instance_id: str, *, as_json: bool) -> None:
    """Print the current run's history events."""
    events = await engine.get_handle(instance_id).history()
    if as_json:
        render.emit_json([render.event_data(e) for e in events])
    else:
        render.console().print(render.history_table(events))


async def signal(
    engine: Engine, instance_id: str, name: str, payload: Any, *, as_json: bool
) -> None:
    """Deliver a signal (durably accepted once this returns)."""
    await engine.get_handle(instance_id).signal(name, payload)
    if as_json:
        render.emit_json({"id": instance_id, "signal": name, "accepted": True})
    else:
        _say(f"signal {escape(repr(name))} sent to {escape(repr(instance_id))}")


async def cancel(engine: Engine, instance_id: str, reason: str, *, as_json: bool) -> None:
    """Request cancellation (a no-op for an instance that already ended)."""
    handle = engine.get_handle(instance_id)
    await handle.cancel(reason)
    await _report(handle, "cancel", "cancellation requested for", as_json)


async def terminate(engine: Engine, instance_id: str, reason: str, *, as_json: bool) -> None:
    """End an instance at once (a no-op for an instance that already ended)."""
    handle = engine.get_handle(instance_id)
    await handle.terminate(reason)
    await _report(handle, "terminate", "terminate requested for", as_json)


async def resume(engine: Engine, instance_id: str, *, as_json: bool) -> None:
    """Make a suspended instance runnable again; say so when it was not suspended."""
    handle = engine.get_handle(instance_id)
    resumed = await handle.resume()
    current = await handle.status()
    if as_json:
        render.emit_json({"id": instance_id, "resumed": resumed, "status": current})
    elif resumed:
        _say(f"resumed {escape(repr(instance_id))} (status: {current})")
    else:
        _say(f"{escape(repr(instance_id))} is not suspended (status: {current}); nothing to do")


async def _report(handle: WorkflowHandle[Any], action: str, verb: str, as_json: bool) -> None:
    current = await handle.status()
    if as_json:
        render.emit_json({"id": handle.id, "action": action, "status": current})
    else:
        _say(f"{verb} {escape(repr(handle.id))} (status: {current})")


def lint(paths: list[Path], *, as_json: bool) -> int:
    """Check the workflows in ``paths`` for non-determinism; the exit code (1: findings).

    Needs no engine or database: the files are read, never imported.
    """
    try:
        files = determinism.python_files(paths)
    except FileNotFoundError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    findings = determinism.lint_files(files)
    if as_json:
        render.emit_json([finding.to_dict() for finding in findings])
    else:
        for finding in findings:
            echo(finding.format())
        echo(determinism.summary(findings, len(files)))
    return 1 if findings else 0
