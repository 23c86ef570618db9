"""How failures end the CLI: one red line on stderr and an exit code per error kind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stalwart import StalwartError

EXIT_USAGE = 2
"""Bad input: invalid JSON, unknown status, bad app spec, undecodable arguments."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C before the command finished."""

EXIT_CODES: dict[str, int] = {
    "configuration": EXIT_USAGE,
    "encoding": EXIT_USAGE,
    "not_found": 3,
    "closed": 4,
    "already_started": 5,
}
"""Exit codes by :attr:`stalwart.StalwartError.code`; any other error exits with 1."""


class CliError(Exception):
    """A failure detected by the CLI itself (bad JSON, unimportable app, ...)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def exit_code_for(exc: StalwartError) -> int:
    """The process exit code for a Stalwart error, from its ``code`` attribute."""
    return EXIT_CODES.get(exc.code, 1)


def fail(message: str, exit_code: int) -> NoReturn:
    """Print ``error: message`` on one red line to stderr and exit with ``exit_code``."""
    one_line = " ".join(message.split())
    Console(stderr=True, highlight=False).print(
        f"[bold red]error:[/bold red] [red]{escape(one_line)}[/red]", soft_wrap=True
    )
    raise typer.Exit(exit_code)


def guarded(action: Callable[[], None]) -> None:
    """Run ``action``, turning expected errors into a message and an exit code."""
    try:
        action()
    except StalwartError as exc:
        fail(str(exc), exit_code_for(exc))
    except CliError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine (built by ``coro_fn``) to completion with error handling."""
    guarded(lambda: asyncio.run(coro_fn()))
