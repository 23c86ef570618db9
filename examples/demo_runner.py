"""What both demos share: a temporary working directory, error reporting, the exit code."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console


class DemoError(Exception):
    """The demo could not run (as opposed to an invariant failing)."""


async def run_in_workdir(
    console: Console,
    prefix: str,
    headline: str,
    run: Callable[[Path], Awaitable[bool]],
    *,
    keep: bool,
) -> int:
    """Run a demo in a fresh temporary directory; 0 if every invariant held.

    The directory is removed after a successful run unless ``keep``; a failed one keeps
    its files (logs, databases) for inspection.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    console.print(headline)
    console.print(f"[dim]files in {workdir}[/dim]")
    try:
        ok = await run(workdir)
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}  [dim]({workdir})[/dim]")
        return 2
    if ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"files kept in {workdir}")
    if not ok:
        console.print("[bold red]some invariants failed[/bold red]")
    return 0 if ok else 1
