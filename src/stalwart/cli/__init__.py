"""The ``stalwart`` command line: run workers and inspect or steer workflow instances.

A thin shell over the public client API (:class:`stalwart.Engine` and
:class:`stalwart.WorkflowHandle`); see ``stalwart --help``.
"""

from __future__ import annotations

from stalwart.cli.app import app


def main() -> None:
    """Entry point of the ``stalwart`` console script."""
    app(prog_name="stalwart")


__all__ = ["app", "main"]
