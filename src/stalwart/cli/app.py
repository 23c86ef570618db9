"""The ``stalwart`` Typer application: arguments, options and help text."""

from pathlib import Path
from typing import Annotated

import typer

from stalwart import Engine
from stalwart.cli import commands, ops
from stalwart.cli.errors import guarded, run_async
from stalwart.cli.loader import DEFAULT_DB, client_engine, worker_engine
from stalwart.cli.logs import configure_logging

app = typer.Typer(
    name="stalwart",
    help="Durable workflows: run workers, start, inspect and steer workflow instances.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="STALWART_DB",
        metavar="URL",
        show_default=False,
        help="Store URL: sqlite:///path.db or memory://. Default: the URL of the app's "
        f"Engine, else {DEFAULT_DB}.",
    ),
]
App = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar="STALWART_APP",
        metavar="MODULE[:ATTR]",
        help="Module to import (registers its workflows); an Engine ATTR also gives the URL.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
Id = Annotated[str, typer.Argument(metavar="ID", help="Workflow instance id.")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in history).")]


def _client(db: str | None, app_spec: str | None, op: commands.ClientOp) -> None:
    """Build a worker-less engine (from --db/--app) and run ``op`` with it."""

    def go() -> None:
        engine = client_engine(db, app_spec)
        run_async(lambda: commands.with_engine(engine, op))

    guarded(go)


@app.command()
def worker(
    target: Annotated[
        str | None,
        typer.Argument(metavar="MODULE:ENGINE", help="The app and its Engine object."),
    ] = None,
    db: Db = None,
    app_spec: App = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default host:pid).")] = None,
    lease_seconds: Annotated[
        float | None, typer.Option(min=0.1, help="Lease before others take over.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level (DEBUG..CRITICAL).")] = "INFO",
    as_json: Annotated[bool, typer.Option("--json", help="Log as JSON lines.")] = False,
) -> None:
    """Run a worker for the app's workflows until SIGINT/SIGTERM (then stop gracefully).

    With --json, log records are written to stderr as JSON lines.
    """

    def go() -> None:
        configure_logging(log_level, as_json=as_json)
        engine = worker_engine(db, target or app_spec, name=name, lease_seconds=lease_seconds)
        run_async(lambda: commands.run_worker(engine))

    guarded(go)


@app.command()
def start(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Registered workflow name.")],
    input_json: Annotated[
        str,
        typer.Option(
            "--input", "-i", metavar="JSON", help="JSON list of arguments (or one value)."
        ),
    ] = "[]",
    instance_id: Annotated[
        str | None, typer.Option("--id", help="Instance id (start is idempotent on it).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for and print the result.")] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0.0, help="Seconds to wait with --wait.")
    ] = None,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Start a workflow by name and print its instance id (and, with --wait, its result)."""

    def go() -> None:
        arguments = commands.input_arguments(input_json)
        _client(
            db,
            app_spec,
            lambda e: commands.start(
                e,
                name,
                arguments,
                instance_id=instance_id,
                wait=wait,
                timeout=timeout,
                as_json=as_json,
            ),
        )

    guarded(go)


@app.command()
def status(instance_id: Id, db: Db = None, app_spec: App = None, as_json: Json = False) -> None:
    """Print the status of an instance."""
    _client(db, app_spec, lambda e: commands.status(e, instance_id, as_json=as_json))


@app.command()
def describe(instance_id: Id, db: Db = None, app_spec: App = None, as_json: Json = False) -> None:
    """Show name, version, status, times, current step and error of an instance."""
    _client(db, app_spec, lambda e: commands.describe(e, instance_id, as_json=as_json))


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only this status.")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this workflow.")] = None,
    version: Annotated[int | None, typer.Option("--version", help="Only this version.")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Children of this id.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Created at or after (ISO 8601, UTC default).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Created before (ISO 8601, UTC default).")
    ] = None,
    search: Annotated[
        list[str] | None,
        typer.Option("--search", metavar="KEY=JSON", help="Search attribute equality (repeat)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", help="Page size.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Cursor of the page to show.")] = None,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """List instances, newest first, with filters."""
    _client(
        db,
        app_spec,
        lambda e: commands.list_instances(
            e,
            status=status,
            name=name,
            limit=limit,
            cursor=cursor,
            as_json=as_json,
            version=version,
            parent=parent,
            since=since,
            until=until,
            search=search or [],
        ),
    )


@app.command()
def history(instance_id: Id, db: Db = None, app_spec: App = None, as_json: Json = False) -> None:
    """Show the history events of an instance's current run."""
    _client(db, app_spec, lambda e: commands.history(e, instance_id, as_json=as_json))


@app.command()
def signal(
    instance_id: Id,
    name: Annotated[str, typer.Argument(help="Signal name.")],
    payload_json: Annotated[
        str, typer.Argument(metavar="[JSON]", help="Signal payload as JSON.")
    ] = "null",
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Send a signal with a JSON payload to an instance."""

    def go() -> None:
        payload = commands.parse_json(payload_json, "the signal payload")
        _client(
            db, app_spec, lambda e: commands.signal(e, instance_id, name, payload, as_json=as_json)
        )

    guarded(go)


@app.command()
def cancel(
    instance_id: Id,
    reason: Reason = "",
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Ask an instance to cancel (Cancelled is raised at its current await)."""
    _client(db, app_spec, lambda e: commands.cancel(e, instance_id, reason, as_json=as_json))


@app.command()
def terminate(
    instance_id: Id,
    reason: Reason = "",
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """End an instance at once, without running any more workflow code."""
    _client(db, app_spec, lambda e: commands.terminate(e, instance_id, reason, as_json=as_json))


@app.command()
def resume(instance_id: Id, db: Db = None, app_spec: App = None, as_json: Json = False) -> None:
    """Retry a suspended instance on the current code."""
    _client(db, app_spec, lambda e: commands.resume(e, instance_id, as_json=as_json))


@app.command()
def lint(
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="PATH", help="Files, and directories to search for *.py."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check workflow code for calls that make replay diverge (exit 1 if any are found).

    The files are read, not imported, and no database is needed.

    A `# stalwart: ignore[CODE]` comment silences a finding on its line.
    """

    def go() -> None:
        exit_code = commands.lint(paths, as_json=as_json)
        if exit_code:
            raise typer.Exit(exit_code)

    guarded(go)


@app.command("check-compat")
def check_compat(
    target: Annotated[
        str | None,
        typer.Argument(metavar="MODULE:ENGINE", help="The app whose code to check."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this workflow.")] = None,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Replay every in-flight instance on the app's current code; list those that would
    diverge (event index and the call that differs). Exit 1 if any would."""
    code = 0

    async def op(engine: Engine) -> None:
        nonlocal code
        code = await ops.check_compat(engine, name=name, as_json=as_json)

    _client(db, target or app_spec, op)
    raise typer.Exit(code)


@app.command()
def fork(
    instance_id: Id,
    from_step: Annotated[int, typer.Option("--from-step", min=0, help="First step to re-run.")],
    new_id: Annotated[str | None, typer.Option("--id", help="Id of the new instance.")] = None,
    version: Annotated[int | None, typer.Option(help="Run the fork on this version.")] = None,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Start a new instance reusing the results before step N (#N in the history) and
    re-executing the rest on the current code."""
    _client(
        db,
        app_spec,
        lambda e: ops.fork(
            e, instance_id, from_step=from_step, new_id=new_id, version=version, as_json=as_json
        ),
    )


@app.command()
def bulk(
    action: Annotated[str, typer.Argument(metavar="resume|cancel|fork")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this workflow.")] = None,
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only this status.")] = None,
    version: Annotated[int | None, typer.Option(help="Only this version.")] = None,
    reason: Reason = "",
    from_step: Annotated[int, typer.Option("--from-step", min=0, help="For fork.")] = 0,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Resume, cancel or fork every instance matching the filters."""
    _client(
        db,
        app_spec,
        lambda e: ops.bulk(
            e,
            action,
            name=name,
            status=status,
            version=version,
            reason=reason,
            from_step=from_step,
            as_json=as_json,
        ),
    )


@app.command()
def query(
    instance_id: Id,
    name: Annotated[str, typer.Argument(help="Query handler name.")],
    args: Annotated[str, typer.Argument(metavar="JSON", help="JSON list of arguments.")] = "[]",
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Ask a query handler (needs --app: queries replay the workflow's code here)."""
    _client(db, app_spec, lambda e: ops.query(e, instance_id, name, args, as_json=as_json))


@app.command()
def update(
    instance_id: Id,
    name: Annotated[str, typer.Argument(help="Update handler name.")],
    args: Annotated[str, typer.Argument(metavar="JSON", help="JSON list of arguments.")] = "[]",
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the result.")] = 30,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """Send an update and print the handler's result."""
    _client(
        db,
        app_spec,
        lambda e: ops.update(e, instance_id, name, args, timeout=timeout, as_json=as_json),
    )


@app.command()
def steps(instance_id: Id, db: Db = None, app_spec: App = None, as_json: Json = False) -> None:
    """Show each step of an instance with its status, attempts, timing and compensation."""
    _client(db, app_spec, lambda e: ops.steps(e, instance_id, as_json=as_json))


@app.command()
def compensate(instance_id: Id, db: Db = None, app_spec: App = None, as_json: Json = False) -> None:
    """Resume the rollback of a saga parked as failed with needs_intervention."""
    _client(db, app_spec, lambda e: ops.compensate(e, instance_id, as_json=as_json))
