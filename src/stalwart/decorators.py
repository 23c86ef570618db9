"""``@workflow`` and ``@activity``: turning functions into durable definitions.

Decorating registers the definition in the default :class:`Registry` (so importing a
module is enough for an engine to find it); an engine may instead be given explicit lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from stalwart.codec import Signature
from stalwart.context import WorkflowContext, current_workflow_context
from stalwart.errors import ConfigurationError
from stalwart.retry import RetryPolicy, as_seconds
from stalwart.saga import CompensateWith, check_compensation, run_step

if TYPE_CHECKING:
    from stalwart.client import Engine, WorkflowHandle

P = ParamSpec("P")
R = TypeVar("R")


class Registry:
    """Workflows (by name and version) and activities (by name).

    The default registry collects everything decorated; an engine builds its own from it
    (or from explicit lists) and refuses two different definitions under one name (and,
    for workflows, one version).
    """

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, int], list[WorkflowDefinition[Any, Any]]] = {}
        self._activities: dict[str, list[ActivityDefinition[Any, Any]]] = {}

    def add_workflow(self, defn: WorkflowDefinition[Any, Any]) -> None:
        """Register a workflow definition (re-registering the same function replaces it)."""
        _add(self._workflows, (defn.name, defn.version), defn)

    def add_activity(self, defn: ActivityDefinition[Any, Any]) -> None:
        """Register an activity definition (re-registering the same function replaces it)."""
        _add(self._activities, defn.name, defn)

    def replace_activity(self, defn: ActivityDefinition[Any, Any]) -> None:
        """Make ``defn`` the only activity under its name (used to mock activities)."""
        self._activities[defn.name] = [defn]

    def workflow(
        self, name: str, version: int | None = None
    ) -> WorkflowDefinition[Any, Any] | None:
        """The workflow ``name`` at ``version`` (default: the latest registered version)."""
        if version is None:
            versions = self.versions(name)
            if not versions:
                return None
            version = versions[-1]
        found = self._workflows.get((name, version))
        return found[-1] if found and len(found) == 1 else None

    def versions(self, name: str) -> list[int]:
        """The registered versions of workflow ``name``, ascending."""
        return sorted(v for n, v in self._workflows if n == name)

    def served(self) -> dict[str, list[int]]:
        """Every workflow name with the versions registered for it."""
        out: dict[str, list[int]] = {}
        for name, version in sorted(self._workflows):
            out.setdefault(name, []).append(version)
        return out

    def activity(self, name: str) -> ActivityDefinition[Any, Any] | None:
        """The activity registered under ``name``, if there is exactly one."""
        found = self._activities.get(name)
        return found[-1] if found and len(found) == 1 else None

    def workflows(self) -> list[WorkflowDefinition[Any, Any]]:
        """Every registered workflow (every version)."""
        return [d for defs in self._workflows.values() for d in defs]

    def activities(self) -> list[ActivityDefinition[Any, Any]]:
        """Every registered activity."""
        return [d for defs in self._activities.values() for d in defs]

    def workflow_names(self) -> list[str]:
        """Names of the registered workflows, sorted."""
        return sorted({name for name, _ in self._workflows})

    def check_unique(self) -> None:
        """Refuse two different functions registered under one name (and version)."""
        tables: list[tuple[str, dict[Any, list[Any]]]] = [
            ("workflow", self._workflows),
            ("activity", self._activities),
        ]
        for kind, table in tables:
            for key, defs in table.items():
                if len(defs) > 1:
                    where = ", ".join(f"{d.fn.__module__}.{d.fn.__qualname__}" for d in defs)
                    label = f"{key[0]!r} version {key[1]}" if isinstance(key, tuple) else repr(key)
                    raise ConfigurationError(
                        f"two {kind}s are registered under the name {label} ({where}); "
                        f"give one of them name=... (or another version)"
                    )


def _add(table: dict[Any, list[Any]], key: Any, defn: Any) -> None:
    defs = table.setdefault(key, [])
    key = (defn.fn.__module__, defn.fn.__qualname__)
    defs[:] = [d for d in defs if (d.fn.__module__, d.fn.__qualname__) != key]
    defs.append(defn)


default_registry = Registry()
"""Every ``@workflow`` and ``@activity`` registers here when its module is imported."""


# ----------------------------------------------------------------------------- activities
class ActivityDefinition(Generic[P, R]):
    """An activity: a plain function doing I/O, called durably from workflows.

    Inside a workflow, calling it returns an awaitable durable call (the result is
    recorded once; retries follow the policy). Outside a workflow it is a plain call, so
    activities can be unit-tested directly.
    """

    def __init__(
        self,
        fn: Callable[P, Any],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        compensate: ActivityDefinition[Any, Any] | None = None,
        compensate_with: CompensateWith = "result",
        compensate_on_failure: bool = False,
        queue: str | None = None,
        priority: int = 0,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@activity decorates a function, got {fn!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"@activity(retry=...) takes a RetryPolicy, got {retry!r}")
        self.fn = fn
        self.name = name if name is not None else fn.__name__
        _check_name(self.name, "activity")
        self.retry = retry or RetryPolicy()
        self.timeout = as_seconds(timeout, f"@activity {self.name!r} timeout")
        self.heartbeat_timeout = as_seconds(
            heartbeat_timeout, f"@activity {self.name!r} heartbeat_timeout"
        )
        self.schedule_to_close = as_seconds(
            schedule_to_close, f"@activity {self.name!r} schedule_to_close"
        )
        if compensate is not None:
            check_compensation(compensate, f"@activity {self.name!r}")
        if compensate_with not in ("result", "input", "both", "nothing"):
            raise ConfigurationError(
                f"compensate_with must be result, input, both or nothing, got {compensate_with!r}"
            )
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ConfigurationError(f"@activity queue must be a non-empty name, got {queue!r}")
        self.queue = queue
        self.priority = priority
        self.compensate = compensate
        self.compensate_with: CompensateWith = compensate_with
        self.compensate_on_failure = compensate_on_failure
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = Signature(fn, skip_first=False, label=self.name)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__wrapped__ = fn

    def options_data(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """The effective options of one call, as recorded in its ActivityScheduled event."""
        data: dict[str, Any] = {
            "retry": (retry or self.retry).to_data(),
            "timeout": timeout if timeout is not None else self.timeout,
        }
        beat = heartbeat_timeout if heartbeat_timeout is not None else self.heartbeat_timeout
        total = schedule_to_close if schedule_to_close is not None else self.schedule_to_close
        if beat is not None:
            data["heartbeat_timeout"] = beat
        if total is not None:
            data["schedule_to_close"] = total
        if (queue or self.queue) is not None:
            data["queue"] = queue or self.queue
            data["priority"] = priority if priority is not None else self.priority
        return data

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        ctx = current_workflow_context()
        if ctx is None:
            return self.fn(*args, **kwargs)
        if self.compensate is not None and ctx._saga is not None:
            return run_step(
                ctx,
                ctx._saga,
                self,
                args,
                kwargs,
                undo=self.compensate,
                with_=self.compensate_with,
                on_failure=self.compensate_on_failure,
            )
        return ctx.call_activity(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<activity {self.name!r}>"


@overload
def activity(fn: Callable[P, R], /) -> ActivityDefinition[P, R]: ...


@overload
def activity(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    heartbeat_timeout: float | timedelta | None = None,
    schedule_to_close: float | timedelta | None = None,
    compensate: ActivityDefinition[Any, Any] | None = None,
    compensate_with: CompensateWith = "result",
    compensate_on_failure: bool = False,
    queue: str | None = None,
    priority: int = 0,
) -> Callable[[Callable[P, R]], ActivityDefinition[P, R]]: ...


def activity(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    heartbeat_timeout: float | timedelta | None = None,
    schedule_to_close: float | timedelta | None = None,
    compensate: ActivityDefinition[Any, Any] | None = None,
    compensate_with: CompensateWith = "result",
    compensate_on_failure: bool = False,
    queue: str | None = None,
    priority: int = 0,
) -> ActivityDefinition[P, R] | Callable[[Callable[P, R]], ActivityDefinition[P, R]]:
    """Declare an activity; usable bare (``@activity``) or with options.

    ``retry`` is the :class:`RetryPolicy` (default: 3 attempts, exponential backoff);
    ``timeout`` bounds each attempt (start-to-close), in seconds or as a ``timedelta``;
    ``heartbeat_timeout`` fails an attempt that stays silent (no
    ``activity_context().heartbeat()``) that long; ``schedule_to_close`` bounds the
    whole call, retries included. ``compensate`` names the activity that undoes this one
    inside a saga (it receives this call's result, or its ``input``, or ``both``, per
    ``compensate_with``); ``compensate_on_failure`` undoes even a failed call. ``queue``
    sends every call to that task queue, run by whichever worker serves it (``priority``:
    higher first).
    Sync functions run in a thread pool, async ones on the worker's event loop.
    """

    def wrap(f: Callable[P, R]) -> ActivityDefinition[P, R]:
        defn: ActivityDefinition[P, R] = ActivityDefinition(
            f,
            name=name,
            retry=retry,
            timeout=timeout,
            heartbeat_timeout=heartbeat_timeout,
            schedule_to_close=schedule_to_close,
            compensate=compensate,
            compensate_with=compensate_with,
            compensate_on_failure=compensate_on_failure,
            queue=queue,
            priority=priority,
        )
        default_registry.add_activity(defn)
        return defn

    return wrap(fn) if fn is not None else wrap


# ------------------------------------------------------------------------------ workflows
@dataclass(frozen=True, slots=True)
class WorkflowInvocation(Generic[R]):
    """A workflow applied to its arguments, ready to start: ``engine.start(wf(x), id=...)``."""

    workflow: WorkflowDefinition[Any, R]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class WorkflowDefinition(Generic[P, R]):
    """A workflow: a deterministic ``async def`` whose first parameter is the context."""

    def __init__(
        self,
        fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]],
        *,
        name: str | None = None,
        version: int = 1,
        timeout: float | timedelta | None = None,
        deprecated: bool = False,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"@workflow decorates an 'async def' function, got {getattr(fn, '__name__', fn)!r}"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigurationError(f"@workflow version must be an integer >= 1, got {version!r}")
        self.fn = fn
        self.name = name if name is not None else fn.__name__
        _check_name(self.name, "workflow")
        self.version = version
        self.deprecated = deprecated
        self.timeout = as_seconds(timeout, f"@workflow {self.name!r} timeout")
        self.signature = Signature(fn, skip_first=True, label=self.name)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Inside a workflow: run it as a child workflow (``await child(x)``) and return its
        result. Outside: bind arguments for the typed ``engine.start(wf(...))`` form."""
        ctx = current_workflow_context()
        if ctx is not None:
            return self._run_as_child(ctx, args, kwargs)
        return WorkflowInvocation(self, args, dict(kwargs))

    async def _run_as_child(
        self, ctx: WorkflowContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        handle = await ctx.start_child(self, *args, **kwargs)
        return await handle.result()

    def invoke(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowInvocation[R]:
        """Bind arguments for ``engine.start(wf.invoke(...), id=...)`` (fully typed)."""
        return WorkflowInvocation(self, args, dict(kwargs))

    async def start(
        self, engine: Engine, *args: Any, id: str | None = None, **kwargs: Any
    ) -> WorkflowHandle[R]:
        """Start an instance (idempotent on ``id``) and return its handle."""
        return await engine.start(WorkflowInvocation(self, args, kwargs), id=id)

    async def run(
        self,
        engine: Engine,
        *args: Any,
        id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> R:
        """Start an instance and wait for its typed result."""
        handle = await self.start(engine, *args, id=id, **kwargs)
        return await handle.result(timeout=timeout)

    def entry(
        self, ctx: WorkflowContext, args: list[Any]
    ) -> Callable[[], Coroutine[Any, Any, Any]]:
        """The coroutine factory the runtime runs for one run of this workflow."""
        fn: Callable[..., Any] = self.fn

        async def main() -> Any:
            return await fn(ctx, *args)

        return main

    def __repr__(self) -> str:
        return f"<workflow {self.name!r} v{self.version}>"


@overload
def workflow(
    fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]], /
) -> WorkflowDefinition[P, R]: ...


@overload
def workflow(
    *,
    name: str | None = None,
    version: int = 1,
    timeout: float | timedelta | None = None,
    deprecated: bool = False,
) -> Callable[
    [Callable[Concatenate[WorkflowContext, P], Awaitable[R]]], WorkflowDefinition[P, R]
]: ...


def workflow(
    fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    timeout: float | timedelta | None = None,
    deprecated: bool = False,
) -> (
    WorkflowDefinition[P, R]
    | Callable[[Callable[Concatenate[WorkflowContext, P], Awaitable[R]]], WorkflowDefinition[P, R]]
):
    """Declare a workflow; usable bare (``@workflow``) or with options.

    ``name`` defaults to the function's name, ``version`` to 1 and ``timeout`` (the whole
    run, in seconds or as a ``timedelta``) to none. Several versions may be registered under
    one name: new instances take the latest (or the version pinned at start) and running
    instances always replay on the version they started with. ``deprecated=True`` warns
    on every new start.
    """

    def wrap(
        f: Callable[Concatenate[WorkflowContext, P], Awaitable[R]],
    ) -> WorkflowDefinition[P, R]:
        defn = WorkflowDefinition(
            f, name=name, version=version, timeout=timeout, deprecated=deprecated
        )
        default_registry.add_workflow(defn)
        return defn

    return wrap(fn) if fn is not None else wrap


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
        raise ConfigurationError(
            f"{kind} name must be a non-empty printable string of at most 200 characters, "
            f"got {name!r}"
        )
