"""Output: rich tables for people, JSON (``--json``) for programs."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stalwart import HistoryEvent, WorkflowDescription, WorkflowList

MAX_WIDTH = 100
"""Width used when stdout is not a terminal (and ``COLUMNS`` is unset)."""
DETAILS_WIDTH = 120
"""History details longer than this are cut with an ellipsis."""

STATUS_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "suspended": "bold magenta",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "red",
    "terminated": "red",
    "timed_out": "red",
    "compensating": "bold yellow",
    "compensated": "magenta",
    "skipped": "dim",
}
_SKIPPED_FIELDS = {"run_id", "options"}
_TIME_FIELDS = {"fire_at", "retry_at"}


def console() -> Console:
    """A console for stdout, at most :data:`MAX_WIDTH` columns when not a terminal."""
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else MAX_WIDTH
    return Console(width=width, highlight=False)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__qualname__} is not JSON serializable")


def compact(data: Any) -> str:
    """JSON-able data as one compact line of JSON."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def fmt_time(value: datetime | float | None, *, millis: bool = False) -> str:
    """A UTC timestamp as ``YYYY-MM-DD HH:MM:SS`` (optionally with milliseconds)."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, tz=UTC)
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def status_text(status: str) -> Text:
    """A status word, coloured by kind."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def error_summary(error: dict[str, Any] | None) -> str:
    """``Type: message`` of a stored error dict (``-`` when there is none)."""
    if not error:
        return "-"
    kind, message = error.get("type"), error.get("message", "")
    return f"{kind}: {message}" if kind else str(message)


def description_data(desc: WorkflowDescription) -> dict[str, Any]:
    """A description as JSON-able data (times in ISO 8601)."""
    return {
        "id": desc.id,
        "name": desc.name,
        "version": desc.version,
        "status": desc.status,
        "run_id": desc.run_id,
        "created_at": desc.created_at.isoformat(),
        "updated_at": desc.updated_at.isoformat(),
        "current_step": desc.current_step,
        "error": desc.error,
        "owner": desc.owner,
        "history_length": desc.history_length,
        "wake_at": desc.wake_at.isoformat() if desc.wake_at is not None else None,
        "parent_id": desc.parent_id,
        "children": desc.children,
        "search_attributes": desc.search_attributes,
        "unserved": desc.unserved,
        "needs_intervention": desc.needs_intervention,
    }


def describe_table(desc: WorkflowDescription) -> Table:
    """A two-column table of every field of a description."""
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("id", desc.id),
        ("name", desc.name),
        ("version", str(desc.version)),
        ("status", status_text(desc.status)),
        ("run id", desc.run_id),
        ("created", fmt_time(desc.created_at, millis=True)),
        ("updated", fmt_time(desc.updated_at, millis=True)),
        ("current step", desc.current_step or "-"),
        ("owner", desc.owner or "-"),
        ("history length", str(desc.history_length)),
        ("wake at", fmt_time(desc.wake_at, millis=True)),
        ("needs intervention", "yes" if desc.needs_intervention else "no"),
        ("error", error_summary(desc.error)),
        ("parent", desc.parent_id or "-"),
        ("children", ", ".join(desc.children) or "-"),
        (
            "search attributes",
            ", ".join(f"{k}={v}" for k, v in desc.search_attributes.items()) or "-",
        ),
    ]
    if desc.unserved:
        rows.append(("unserved", Text(desc.unserved, style="bold yellow")))
    for field, value in rows:
        table.add_row(field, value)
    return table


def list_data(page: WorkflowList) -> dict[str, Any]:
    """A page of instances as JSON-able data."""
    return {
        "items": [description_data(d) for d in page.items],
        "next_cursor": page.next_cursor,
    }


def list_table(page: WorkflowList) -> Table:
    """One row per instance: id, name, version, status, times and current step."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    id_width = max((len(d.id) for d in page.items), default=2)
    table.add_column("ID", no_wrap=True, min_width=min(id_width, 36), overflow="fold")
    table.add_column("NAME", overflow="fold")
    table.add_column("V", justify="right")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("CREATED (UTC)")
    table.add_column("UPDATED (UTC)")
    table.add_column("STEP", overflow="fold")
    for d in page.items:
        table.add_row(
            d.id,
            d.name,
            str(d.version),
            status_text(d.status),
            fmt_time(d.created_at),
            fmt_time(d.updated_at),
            Text(f"UNSERVED: {d.unserved}", style="yellow")
            if d.unserved
            else (d.current_step or "-"),
        )
    return table


def event_data(item: HistoryEvent) -> dict[str, Any]:
    """One history event as ``{"seq", "time", "type", **fields}`` (replayable form)."""
    return {"seq": item.seq, "time": item.time, "type": item.kind, **item.event.to_data()}


def event_details(item: HistoryEvent) -> str:
    """The interesting fields of an event on one short line."""
    parts: list[str] = []
    for key, value in item.event.to_data().items():
        if key in _SKIPPED_FIELDS or value is None:
            continue
        if key == "error" and isinstance(value, dict):
            shown = error_summary(value)
        elif key in _TIME_FIELDS and isinstance(value, int | float):
            shown = fmt_time(value, millis=True)
        else:
            shown = compact(value)
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= DETAILS_WIDTH else text[: DETAILS_WIDTH - 1] + "…"


def history_table(events: list[HistoryEvent]) -> Table:
    """One row per event: sequence number, time, type and a short summary."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("SEQ", justify="right", no_wrap=True)
    table.add_column("TIME (UTC)", no_wrap=True)
    table.add_column("TYPE", no_wrap=True, style="bold")
    table.add_column("DETAILS", overflow="fold")
    for item in events:
        table.add_row(
            str(item.seq), fmt_time(item.time, millis=True), item.kind, event_details(item)
        )
    return table
