"""The public API: ``stalwart.__all__`` is explicit, sorted, complete and documented."""

from __future__ import annotations

import inspect
import types

import stalwart

EXPECTED = {
    "ActivityCancelledError",
    "ActivityContext",
    "ActivityDefinition",
    "ActivityError",
    "Cancelled",
    "ChildWorkflowError",
    "Codec",
    "CompensatedError",
    "ConfigurationError",
    "EncodingError",
    "Engine",
    "HistoryEvent",
    "JsonCodec",
    "LeaseLostError",
    "NonDeterminismError",
    "NonRetryableError",
    "Queue",
    "Registry",
    "RetryPolicy",
    "Saga",
    "SagaScope",
    "StalwartError",
    "Step",
    "StepInfo",
    "StoreError",
    "UnknownHandlerError",
    "UpdateFailedError",
    "WorkerOptions",
    "WorkflowAlreadyStartedError",
    "WorkflowClosedError",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowDescription",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInvocation",
    "WorkflowList",
    "WorkflowNotFoundError",
    "WorkflowNotRegisteredError",
    "WorkflowTimeoutError",
    "__version__",
    "activity",
    "activity_context",
    "default_registry",
    "saga_step",
    "workflow",
}


def test_all_is_the_committed_public_surface() -> None:
    assert set(stalwart.__all__) == EXPECTED
    assert stalwart.__all__ == sorted(stalwart.__all__)
    public = {
        name
        for name, value in vars(stalwart).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= EXPECTED


def test_every_public_name_is_documented() -> None:
    for name in stalwart.__all__:
        obj = getattr(stalwart, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"stalwart.{name} has no docstring"


def test_errors_share_one_root_with_stable_codes() -> None:
    codes = set()
    for name in stalwart.__all__:
        obj = getattr(stalwart, name)
        if inspect.isclass(obj) and issubclass(obj, stalwart.StalwartError):
            assert name.endswith("Error")
            codes.add(obj.code)
    assert len(codes) >= 10
    assert issubclass(stalwart.Cancelled, BaseException)
    assert not issubclass(stalwart.Cancelled, Exception)
