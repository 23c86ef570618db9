"""Finding the user's application (``module:attr``) and building the engine to use."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
from typing import Any

from stalwart import Engine
from stalwart.cli.errors import CliError

DEFAULT_DB = "sqlite:///stalwart.db"
"""The store used when neither ``--db``/``STALWART_DB`` nor the app's engine names one."""


def import_app(spec: str) -> Any:
    """Import ``module[:attr]`` from the current directory; return ``attr`` (or ``None``).

    Importing the module registers its ``@workflow``/``@activity`` definitions.
    ``attr`` may be dotted (``module:container.engine``).
    """
    module_name, _, attr = spec.strip().partition(":")
    if not module_name or (":" in spec and not attr):
        raise CliError(f"invalid app {spec!r}: expected 'module' or 'module:attribute'")
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import app module {module_name!r}: {exc}") from exc
    if not attr:
        return None
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None


def _app_engine(app: str | None) -> Engine | None:
    if app is None:
        return None
    found = import_app(app)
    return found if isinstance(found, Engine) else None


def client_engine(db: str | None, app: str | None) -> Engine:
    """An engine without a worker, for starting and inspecting instances.

    ``db`` (from ``--db`` or ``STALWART_DB``) wins over the app engine's URL, which wins
    over :data:`DEFAULT_DB`. With an app engine, its registry and codec are reused so
    arguments are type-checked and stored data is read the way the app writes it.
    """
    source = _app_engine(app)
    if source is None:
        return Engine(db or DEFAULT_DB, worker=False)
    return Engine(
        db or source.url or DEFAULT_DB,
        worker=False,
        workflows=source.registry.workflows(),
        activities=source.registry.activities(),
        # Without the app's codec (compression, encryption) stored data would be misread.
        codec=source.codec,
    )


def worker_engine(
    db: str | None,
    app: str | None,
    *,
    name: str | None = None,
    lease_seconds: float | None = None,
) -> Engine:
    """The engine a ``stalwart worker`` runs: the app's own Engine object, if it names one.

    A plain module (no ``:attr``) gets a fresh engine serving everything it registered.
    ``db``, ``name`` and ``lease_seconds`` override the engine's settings when given.
    """
    if app is None:
        raise CliError("the worker needs the application: stalwart worker module:engine")
    found = import_app(app)
    if found is None:
        engine = Engine(db or DEFAULT_DB)
    elif isinstance(found, Engine):
        engine = found
        if db is not None:
            engine.url = db
    else:
        raise CliError(f"{app!r} is a {type(found).__name__}, not a stalwart.Engine")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if lease_seconds is not None:
        changes["lease_seconds"] = lease_seconds
    if changes:
        engine.options = dataclasses.replace(engine.options, **changes)
    return engine


def engine_url(engine: Engine) -> str:
    """The store URL an engine opens (its own, or the default)."""
    return engine.url or DEFAULT_DB
