"""Stalwart's error hierarchy.

Every error raised by Stalwart derives from :class:`StalwartError` and carries a stable
``code`` that the CLI maps to exit codes (and the HTTP API to statuses)::

    StalwartError
    ├── ConfigurationError          bad engine/decorator/retry configuration
    ├── EncodingError               a value cannot be encoded or decoded with its annotated type
    ├── WorkflowNotFoundError       no instance with that id
    ├── WorkflowNotRegisteredError  no workflow of that name in the registry
    ├── WorkflowAlreadyStartedError same id, different workflow or different input
    ├── WorkflowClosedError         signal/cancel to an instance that already ended
    ├── WorkflowFailedError         ``handle.result()`` of a run that did not complete
    ├── ActivityError               an activity failed (seen inside the workflow)
    ├── ActivityCancelledError      heartbeat() of an activity whose result is not wanted
    ├── ChildWorkflowError          a child workflow did not complete (seen in the parent)
    ├── UnknownHandlerError         no query/update handler of that name
    ├── UpdateFailedError           an update was rejected by its validator or failed
    ├── CompensatedError            a saga failed and undid its steps (ends "compensated")
    ├── NonRetryableError           raise it from an activity to stop retries
    ├── NonDeterminismError         replay diverged from the recorded history
    ├── LeaseLostError              a worker's write was fenced off by a newer owner
    └── StoreError                  the store failed or refused an operation

Control-flow signals that user code must not swallow (``Cancelled``) derive from
``BaseException`` via :class:`asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
from typing import Any


class StalwartError(Exception):
    """Root of every error Stalwart raises."""

    code: str = "stalwart_error"


class ConfigurationError(StalwartError):
    """A decorator, retry policy or engine option is invalid."""

    code = "configuration"


class EncodingError(StalwartError):
    """A value cannot be encoded to, or decoded from, its stored JSON form.

    ``path`` names where the value sits (for example ``process_order(order).items[2]``).
    """

    code = "encoding"

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class WorkflowNotFoundError(StalwartError):
    """No workflow instance has the given id."""

    code = "not_found"

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"no workflow instance with id {instance_id!r}")
        self.instance_id = instance_id


class WorkflowNotRegisteredError(StalwartError):
    """No workflow with this name (and version) is registered."""

    code = "not_registered"

    def __init__(self, name: str, version: int | None = None) -> None:
        what = f"{name!r} version {version}" if version is not None else repr(name)
        super().__init__(f"no workflow named {what} is registered")
        self.name = name
        self.version = version


class WorkflowAlreadyStartedError(StalwartError):
    """An instance with this id exists with another workflow name or another input."""

    code = "already_started"

    def __init__(self, instance_id: str, reason: str) -> None:
        super().__init__(f"workflow instance {instance_id!r} already exists: {reason}")
        self.instance_id = instance_id
        self.reason = reason


class WorkflowClosedError(StalwartError):
    """The instance has already reached a terminal status."""

    code = "closed"

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(f"workflow instance {instance_id!r} is already {status}")
        self.instance_id = instance_id
        self.status = status


class WorkflowFailedError(StalwartError):
    """``result()`` was awaited on a run that failed, was cancelled, terminated or timed out."""

    code = "workflow_failed"

    def __init__(
        self,
        instance_id: str,
        status: str,
        message: str,
        *,
        error_type: str = "",
        traceback: str = "",
    ) -> None:
        super().__init__(f"workflow {instance_id!r} ended {status}: {message}")
        self.instance_id = instance_id
        self.status = status
        self.message = message
        self.error_type = error_type
        self.traceback = traceback


class ActivityError(StalwartError):
    """An activity failed after its retries; raised at the workflow's ``await``.

    Carries the original exception's type name, message and traceback text, because the
    original exception object may not be importable or reconstructible on replay.
    """

    code = "activity_failed"

    def __init__(
        self,
        activity: str,
        error_type: str,
        message: str,
        *,
        traceback: str = "",
        attempts: int = 1,
        non_retryable: bool = False,
    ) -> None:
        super().__init__(
            f"activity {activity!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )
        self.activity = activity
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        self.non_retryable = non_retryable


class ActivityCancelledError(StalwartError):
    """Raised by ``activity_context().heartbeat()`` once the call is no longer wanted
    (the workflow was cancelled, or lost a race that this activity was part of)."""

    code = "activity_cancelled"


class ChildWorkflowError(StalwartError):
    """A child workflow failed, was cancelled, terminated or timed out."""

    code = "child_failed"

    def __init__(self, child_id: str, status: str, error_type: str = "", message: str = "") -> None:
        detail = f": {error_type}: {message}" if error_type or message else ""
        super().__init__(f"child workflow {child_id!r} ended {status}{detail}")
        self.child_id = child_id
        self.status = status
        self.error_type = error_type
        self.message = message


class UnknownHandlerError(StalwartError):
    """No query or update handler has that name in the workflow."""

    code = "unknown_handler"


class UpdateFailedError(StalwartError):
    """An update was refused by its validator or its handler raised."""

    code = "update_failed"

    def __init__(
        self, instance_id: str, name: str, error_type: str, message: str, *, rejected: bool
    ) -> None:
        what = "rejected" if rejected else "failed"
        super().__init__(f"update {name!r} of {instance_id!r} {what}: {error_type}: {message}")
        self.instance_id = instance_id
        self.name = name
        self.error_type = error_type
        self.message = message
        self.rejected = rejected


class CompensatedError(StalwartError):
    """A saga failed (or was cancelled) and undid its completed steps.

    Raised out of a saga scope once compensation finished; if it leaves the workflow, the
    run ends with status ``compensated``. ``cause`` describes the original failure.
    """

    code = "compensated"

    def __init__(self, reason: str, cause: dict[str, Any] | None = None) -> None:
        super().__init__(f"saga compensated: {reason}")
        self.reason = reason
        self.cause = cause


class NonRetryableError(StalwartError):
    """Raise from an activity to fail it at once, without further retries."""

    code = "non_retryable"


class NonDeterminismError(StalwartError):
    """The workflow code asked for something other than what its history records.

    ``event_index`` is the position in the history where the two diverge, ``expected``
    describes what the history holds there and ``got`` what the code asked for.
    """

    code = "non_determinism"

    def __init__(self, instance_id: str, event_index: int, expected: str, got: str) -> None:
        super().__init__(
            f"workflow {instance_id!r} diverged from its history at event #{event_index}: "
            f"history holds {expected}, but the code asked for {got}"
        )
        self.instance_id = instance_id
        self.event_index = event_index
        self.expected = expected
        self.got = got


class LeaseLostError(StalwartError):
    """A write was refused because another worker owns the instance now."""

    code = "lease_lost"


class StoreError(StalwartError):
    """The store failed or refused an operation."""

    code = "store"


class WorkflowTimeoutError(StalwartError):
    """The whole-run timeout of a workflow elapsed."""

    code = "timed_out"


class Cancelled(asyncio.CancelledError):
    """Raised at a workflow's current ``await`` when the workflow is cancelled.

    It derives from :class:`asyncio.CancelledError` (a ``BaseException``) so generic
    ``except Exception`` blocks do not swallow it. Catch it to clean up, then re-raise.
    """

    code = "cancelled"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def error_info(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as a JSON-able dict: type name, message and traceback text."""
    import traceback as tb

    return {
        "type": type(exc).__qualname__,
        "message": str(exc),
        "traceback": "".join(tb.format_exception(exc)),
    }
