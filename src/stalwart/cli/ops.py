"""Operator commands: check-compat, fork, bulk actions, queries and updates."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.table import Table

from stalwart import Engine
from stalwart.cli import render
from stalwart.cli.commands import echo, input_arguments


async def check_compat(engine: Engine, *, name: str | None, as_json: bool) -> int:
    """Replay in-flight instances on the app's code; exit 1 if any would diverge."""
    reports = await engine.check_compat(name=name)
    broken = [r for r in reports if not r.ok]
    if as_json:
        render.emit_json([asdict(r) for r in reports])
        return 1 if broken else 0
    out = render.console()
    if broken:
        table = Table(title="instances that would diverge", show_edge=False)
        for column in ("ID", "WORKFLOW", "STATUS", "EVENT", "PROBLEM"):
            table.add_column(column, overflow="fold")
        for r in broken:
            table.add_row(
                r.instance_id,
                f"{r.name} v{r.version}",
                r.status,
                "-" if r.event_index is None else f"#{r.event_index}",
                r.problem or "",
            )
        out.print(table)
    out.print(
        f"{len(reports) - len(broken)} of {len(reports)} in-flight instance(s) replay "
        f"on this code; {len(broken)} would diverge"
    )
    return 1 if broken else 0


async def fork(
    engine: Engine,
    instance_id: str,
    *,
    from_step: int,
    new_id: str | None,
    version: int | None,
    as_json: bool,
) -> None:
    """Fork an instance from a step and print the new instance's id."""
    handle = await engine.get_handle(instance_id).fork(from_step, id=new_id, version=version)
    if as_json:
        render.emit_json({"id": handle.id, "forked_from": instance_id, "from_step": from_step})
    else:
        echo(handle.id)


async def bulk(
    engine: Engine,
    action: str,
    *,
    name: str | None,
    status: str | None,
    version: int | None,
    reason: str,
    from_step: int,
    as_json: bool,
) -> None:
    """Apply resume/cancel/fork to every matching instance; print the ids."""
    done = await engine.bulk(
        action, name=name, status=status, version=version, reason=reason, from_step=from_step
    )
    if as_json:
        render.emit_json({"action": action, "ids": done})
        return
    for instance_id in done:
        echo(instance_id)
    render.console().print(f"{action}: {len(done)} instance(s)")


async def query(engine: Engine, instance_id: str, name: str, args: str, *, as_json: bool) -> None:
    """Answer a query and print the result as JSON."""
    result = await engine.get_handle(instance_id).query(name, *input_arguments(args))
    _print_value(engine, result, as_json=as_json)


async def update(
    engine: Engine,
    instance_id: str,
    name: str,
    args: str,
    *,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Send an update, wait for its result and print it as JSON."""
    result = await engine.get_handle(instance_id).update(
        name, *input_arguments(args), timeout=timeout
    )
    _print_value(engine, result, as_json=as_json)


def _print_value(engine: Engine, value: Any, *, as_json: bool) -> None:
    data = engine.converter.to_data(value, Any, path="result")
    render.emit_json(data)


async def steps(engine: Engine, instance_id: str, *, as_json: bool) -> None:
    """Print the step table of an instance (a saga's steps and their compensations)."""
    rows = await engine.get_handle(instance_id).steps()
    if as_json:
        render.emit_json(
            [
                {
                    **asdict(r),
                    "started_at": r.started_at.isoformat() if r.started_at else None,
                    "ended_at": r.ended_at.isoformat() if r.ended_at else None,
                }
                for r in rows
            ]
        )
        return
    table = Table(show_edge=False)
    for column in ("#", "STEP", "STATUS", "TRIES", "STARTED (UTC)", "TOOK", "DETAIL"):
        table.add_column(column, overflow="fold")
    for r in rows:
        took = (
            f"{(r.ended_at - r.started_at).total_seconds() * 1000:.0f} ms"
            if (r.started_at and r.ended_at)
            else "-"
        )
        detail = ""
        if r.error:
            detail = f"{r.error.get('type', '')}: {r.error.get('message', '')}"
        if r.compensation:
            detail = f"undo: {r.compensation}" + (f" ({detail})" if detail else "")
        if r.compensation_error:
            detail += f" undo failed: {r.compensation_error.get('message', '')}"
        table.add_row(
            "-" if r.step is None else str(r.step),
            r.name,
            render.status_text(r.status),
            str(r.attempts),
            render.fmt_time(r.started_at),
            took,
            detail or "-",
        )
    render.console().print(table)


async def compensate(engine: Engine, instance_id: str, *, as_json: bool) -> None:
    """Resume a saga parked for intervention (retry its failed compensation)."""
    resumed = await engine.get_handle(instance_id).retry_compensation()
    status = await engine.get_handle(instance_id).status()
    if as_json:
        render.emit_json({"id": instance_id, "resumed": resumed, "status": status})
    elif resumed:
        render.console().print(f"{instance_id}: compensation resumed ({status})")
    else:
        render.console().print(f"{instance_id} does not need intervention ({status})")
