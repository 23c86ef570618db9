"""The ``stalwart`` Typer application: arguments, options and help text."""

from typing import Annotated

import typer

from stalwart.cli import commands
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
    limit: Annotated[int, typer.Option("--limit", "-l", help="Page size.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Cursor of the page to show.")] = None,
    db: Db = None,
    app_spec: App = None,
    as_json: Json = False,
) -> None:
    """List instances, newest first."""
    _client(
        db,
        app_spec,
        lambda e: commands.list_instances(
            e, status=status, name=name, limit=limit, cursor=cursor, as_json=as_json
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
