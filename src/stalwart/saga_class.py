"""Declarative sagas: a class whose fields are the saga's state and whose methods are steps.

::

    class OrderFulfillment(stalwart.Saga):
        order_id: str
        reservation: str | None = None

        steps = ["reserve", ["charge", "notify_warehouse"], "ship"]   # [..] runs in parallel

        @saga_step(compensate="release")
        async def reserve(self, ctx: WorkflowContext) -> str:
            self.reservation = await reserve_inventory(self.order_id)
            return self.reservation

        async def release(self, ctx: WorkflowContext, reservation: str) -> None:
            await release_inventory(reservation)

    handle = await OrderFulfillment.start(engine, OrderFulfillment(order_id="o-1"), id="o-1")

Each subclass is a dataclass and is registered as a workflow named after the class (set
``name``/``version`` class attributes to change that). Steps run in the order of
``steps`` (default: definition order); a failure, or a cancellation, undoes the completed
steps in reverse completion order with the same durable machinery as ``ctx.saga()``.
The run's result is the final state; ``handle.query("state")`` shows it while it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, dataclass_transform, overload

from stalwart._engine import events as ev
from stalwart.context import WorkflowContext
from stalwart.decorators import WorkflowDefinition, default_registry
from stalwart.errors import ConfigurationError, error_info
from stalwart.saga import SagaScope

if TYPE_CHECKING:
    from stalwart.client import Engine, WorkflowHandle

S = TypeVar("S", bound="Saga")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class StepSpec:
    """How one step method behaves inside its saga."""

    compensate: str | None = None
    """The method that undoes the step; it receives the step's return value."""
    optional: bool = False
    """A failing optional step is skipped (no compensation is triggered)."""
    compensate_on_failure: bool = False
    """Run the compensation even when the step itself failed (it receives ``None``)."""


@overload
def saga_step(fn: F, /) -> F: ...


@overload
def saga_step(
    *, compensate: str | None = None, optional: bool = False, compensate_on_failure: bool = False
) -> Callable[[F], F]: ...


def saga_step(
    fn: F | None = None,
    /,
    *,
    compensate: str | None = None,
    optional: bool = False,
    compensate_on_failure: bool = False,
) -> F | Callable[[F], F]:
    """Mark a method of a :class:`Saga` subclass as a step (usable bare or with options)."""

    def mark(method: F) -> F:
        method.__saga_step__ = StepSpec(compensate, optional, compensate_on_failure)  # type: ignore[attr-defined]
        return method

    return mark(fn) if fn is not None else mark


@dataclass_transform()
class Saga:
    """Base class of declarative sagas (see the module docstring)."""

    steps: ClassVar[Sequence[str | Sequence[str]]] = ()
    name: ClassVar[str | None] = None
    version: ClassVar[int] = 1
    workflow: ClassVar[WorkflowDefinition[Any, Any]]
    _specs: ClassVar[dict[str, StepSpec]]
    _plan: ClassVar[list[list[str]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(cls)
        specs = {
            attr: value.__saga_step__
            for attr, value in vars(cls).items()
            if hasattr(value, "__saga_step__")
        }
        plan = [[s] if isinstance(s, str) else list(s) for s in cls.steps] or [[n] for n in specs]
        for name in (n for group in plan for n in group):
            if name not in specs:
                raise ConfigurationError(
                    f"{cls.__name__}.steps names {name!r}, which is not a @saga_step method"
                )
        for name, spec in specs.items():
            if spec.compensate is not None and not callable(getattr(cls, spec.compensate, None)):
                raise ConfigurationError(
                    f"{cls.__name__}.{name}: compensation {spec.compensate!r} is not a method"
                )
        cls._specs, cls._plan = specs, plan
        cls.workflow = _workflow_for(cls)
        default_registry.add_workflow(cls.workflow)

    @classmethod
    async def start(
        cls: type[S], engine: Engine, state: S, *, id: str | None = None
    ) -> WorkflowHandle[S]:
        """Start the saga with its initial state."""
        handle: WorkflowHandle[S] = await cls.workflow.start(engine, state, id=id)
        return handle

    @classmethod
    async def run(
        cls: type[S],
        engine: Engine,
        state: S,
        *,
        id: str | None = None,
        timeout: float | None = None,
    ) -> S:
        """Start the saga and wait for its final state."""
        result: S = await cls.workflow.run(engine, state, id=id, timeout=timeout)
        return result


def _workflow_for(cls: type[Saga]) -> WorkflowDefinition[Any, Any]:
    async def run_saga(ctx: WorkflowContext, state: Any) -> Any:
        ctx.set_query_handler("state", lambda: dataclasses.asdict(state))
        await _execute(cls, ctx, state)
        return state

    run_saga.__annotations__ = {"ctx": WorkflowContext, "state": cls, "return": cls}
    run_saga.__name__ = run_saga.__qualname__ = cls.__name__
    run_saga.__module__ = cls.__module__
    run_saga.__doc__ = cls.__doc__
    return WorkflowDefinition(run_saga, name=cls.name or cls.__name__, version=cls.version)


async def _execute(cls: type[Saga], ctx: WorkflowContext, state: Any) -> None:
    run = ctx._run
    names = [n for group in cls._plan for n in group]
    run.record(ev.MarkerRecorded(name="saga:plan", value=names))
    index = {name: i for i, name in enumerate(names)}
    async with SagaScope(ctx) as scope:
        for group in cls._plan:
            outcomes = await asyncio.gather(
                *(_run_step(cls, ctx, scope, state, n, index[n]) for n in group),
                return_exceptions=True,
            )
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if failures:
                raise failures[0]


async def _run_step(
    cls: type[Saga], ctx: WorkflowContext, scope: SagaScope, state: Any, name: str, index: int
) -> None:
    spec = cls._specs[name]
    run = ctx._run
    run.record(ev.MarkerRecorded(name=f"saga:started:{name}", value=index))
    undo = getattr(state, spec.compensate) if spec.compensate else None
    try:
        result = await getattr(state, name)(ctx)
    except Exception as exc:
        if spec.optional:
            run.record(ev.MarkerRecorded(name=f"saga:skipped-step:{name}", value=error_info(exc)))
            return
        run.record(ev.MarkerRecorded(name=f"saga:failed:{name}", value=error_info(exc)))
        if spec.compensate_on_failure and undo is not None:
            scope.add_callable(index, name, spec.compensate or "", lambda: undo(ctx, None))
        raise
    run.record(ev.MarkerRecorded(name=f"saga:completed:{name}", value=index))
    if undo is not None:
        scope.add_callable(index, name, spec.compensate or "", lambda: undo(ctx, result))
