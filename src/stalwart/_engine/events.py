"""History event types: the append-only record of one workflow run.

Events come in two kinds:

* *command* events are produced by the workflow code (``ActivityScheduled``,
  ``TimerStarted``, ``SideEffectRecorded``, the terminal ``Workflow*`` events). On replay
  the code must ask for the same commands in the same order, or the run has diverged.
* *incoming* events come from the outside world (activity results, timers firing,
  signals, cancellation). They are fed to the code in history order.

Each event is a frozen dataclass; it is stored as ``{"type": ..., field: value, ...}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

JSON = Any


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every history event."""

    kind: ClassVar[str] = "Event"
    is_command: ClassVar[bool] = False

    def to_data(self) -> dict[str, JSON]:
        """Return the stored form of the event's fields (without the type tag)."""
        names = _FIELD_NAMES.get(type(self))
        if names is None:  # once per event class: dataclasses.fields() is slow per call
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))
        return {name: getattr(self, name) for name in names}

    def describe(self) -> str:
        """A short human description used in error messages and tables."""
        return self.kind


@dataclass(frozen=True, slots=True)
class WorkflowStarted(Event):
    """The run began with this input (positional arguments as JSON)."""

    kind: ClassVar[str] = "WorkflowStarted"
    name: str
    version: int
    input: list[JSON]
    run_id: str
    timeout: float | None = None
    previous_run_id: str | None = None
    """The run this one continues (continue-as-new), if any."""

    def describe(self) -> str:
        return f"WorkflowStarted({self.name!r} v{self.version})"


@dataclass(frozen=True, slots=True)
class ActivityScheduled(Event):
    """The code called an activity; ``cmd`` is its position among the run's commands."""

    kind: ClassVar[str] = "ActivityScheduled"
    is_command: ClassVar[bool] = True
    cmd: int
    name: str
    input: list[JSON]
    options: dict[str, JSON]

    def describe(self) -> str:
        return f"ActivityScheduled(#{self.cmd} {self.name!r})"


@dataclass(frozen=True, slots=True)
class ActivityCompleted(Event):
    """An activity returned; its result is recorded exactly once."""

    kind: ClassVar[str] = "ActivityCompleted"
    cmd: int
    result: JSON
    attempt: int = 1

    def describe(self) -> str:
        return f"ActivityCompleted(#{self.cmd})"


@dataclass(frozen=True, slots=True)
class ActivityAttemptFailed(Event):
    """One attempt failed and another is due at ``retry_at`` (a durable backoff timer)."""

    kind: ClassVar[str] = "ActivityAttemptFailed"
    cmd: int
    attempt: int
    error: dict[str, JSON]
    retry_at: float
    details: JSON = None
    """The last heartbeat details of the failed attempt, handed to the next one."""

    def describe(self) -> str:
        return f"ActivityAttemptFailed(#{self.cmd} attempt {self.attempt})"


@dataclass(frozen=True, slots=True)
class ActivityFailed(Event):
    """The activity failed for good (retries exhausted or non-retryable)."""

    kind: ClassVar[str] = "ActivityFailed"
    cmd: int
    attempts: int
    error: dict[str, JSON]
    non_retryable: bool = False

    def describe(self) -> str:
        return f"ActivityFailed(#{self.cmd})"


@dataclass(frozen=True, slots=True)
class TimerStarted(Event):
    """The code started a durable timer that fires at ``fire_at`` (epoch seconds)."""

    kind: ClassVar[str] = "TimerStarted"
    is_command: ClassVar[bool] = True
    cmd: int
    fire_at: float

    def describe(self) -> str:
        return f"TimerStarted(#{self.cmd})"


@dataclass(frozen=True, slots=True)
class TimerFired(Event):
    """A durable timer fired."""

    kind: ClassVar[str] = "TimerFired"
    cmd: int

    def describe(self) -> str:
        return f"TimerFired(#{self.cmd})"


@dataclass(frozen=True, slots=True)
class SignalReceived(Event):
    """A signal was delivered to the run (exactly once, in the order it was sent)."""

    kind: ClassVar[str] = "SignalReceived"
    name: str
    payload: JSON

    def describe(self) -> str:
        return f"SignalReceived({self.name!r})"


@dataclass(frozen=True, slots=True)
class SideEffectRecorded(Event):
    """The value returned by ``ctx.side_effect`` (or another recorded value) at ``cmd``."""

    kind: ClassVar[str] = "SideEffectRecorded"
    is_command: ClassVar[bool] = True
    cmd: int
    value: JSON

    def describe(self) -> str:
        return f"SideEffectRecorded(#{self.cmd})"


@dataclass(frozen=True, slots=True)
class ChildWorkflowStarted(Event):
    """The code started a child workflow (created in the same write as this event)."""

    kind: ClassVar[str] = "ChildWorkflowStarted"
    is_command: ClassVar[bool] = True
    cmd: int
    child_id: str
    name: str
    version: int
    input: list[JSON]
    parent_close: str

    def describe(self) -> str:
        return f"ChildWorkflowStarted(#{self.cmd} {self.name!r} id={self.child_id!r})"


@dataclass(frozen=True, slots=True)
class ChildWorkflowCompleted(Event):
    """A child workflow ended (``status`` is its terminal status)."""

    kind: ClassVar[str] = "ChildWorkflowCompleted"
    child_id: str
    status: str
    result: JSON = None
    error: dict[str, JSON] | None = None

    def describe(self) -> str:
        return f"ChildWorkflowCompleted({self.child_id!r} {self.status})"


@dataclass(frozen=True, slots=True)
class ExternalSignalSent(Event):
    """The code signalled another instance (delivered in the same write)."""

    kind: ClassVar[str] = "ExternalSignalSent"
    is_command: ClassVar[bool] = True
    cmd: int
    target_id: str
    name: str
    payload: JSON = None

    def describe(self) -> str:
        return f"ExternalSignalSent(#{self.cmd} {self.name!r} to {self.target_id!r})"


@dataclass(frozen=True, slots=True)
class ExternalCancelRequested(Event):
    """The code asked another instance to cancel (delivered in the same write)."""

    kind: ClassVar[str] = "ExternalCancelRequested"
    is_command: ClassVar[bool] = True
    cmd: int
    target_id: str
    reason: str = ""

    def describe(self) -> str:
        return f"ExternalCancelRequested(#{self.cmd} {self.target_id!r})"


@dataclass(frozen=True, slots=True)
class UpdateAccepted(Event):
    """An update request passed its validator; its handler runs from here."""

    kind: ClassVar[str] = "UpdateAccepted"
    update_id: str
    name: str
    args: list[JSON]

    def describe(self) -> str:
        return f"UpdateAccepted({self.name!r} {self.update_id})"


@dataclass(frozen=True, slots=True)
class UpdateRejected(Event):
    """An update request was refused by its validator (the workflow state is untouched)."""

    kind: ClassVar[str] = "UpdateRejected"
    update_id: str
    name: str
    error: dict[str, JSON]

    def describe(self) -> str:
        return f"UpdateRejected({self.name!r} {self.update_id})"


@dataclass(frozen=True, slots=True)
class UpdateCompleted(Event):
    """An update handler returned (``result``) or raised (``error``)."""

    kind: ClassVar[str] = "UpdateCompleted"
    is_command: ClassVar[bool] = True
    update_id: str
    result: JSON = None
    error: dict[str, JSON] | None = None

    def describe(self) -> str:
        return f"UpdateCompleted({self.update_id})"


@dataclass(frozen=True, slots=True)
class SearchAttributesUpserted(Event):
    """The code set search attributes (merged into the instance's, ``None`` removes)."""

    kind: ClassVar[str] = "SearchAttributesUpserted"
    is_command: ClassVar[bool] = True
    attributes: dict[str, JSON]

    def describe(self) -> str:
        return f"SearchAttributesUpserted({sorted(self.attributes)})"


@dataclass(frozen=True, slots=True)
class CompensationStarted(Event):
    """A saga began undoing step ``step`` (the command number of the step's activity)."""

    kind: ClassVar[str] = "CompensationStarted"
    is_command: ClassVar[bool] = True
    step: int
    name: str
    reason: str = ""
    undo: str = ""
    """What undoes the step (an activity or a saga method)."""

    def describe(self) -> str:
        return f"CompensationStarted(step #{self.step} {self.name!r})"


@dataclass(frozen=True, slots=True)
class StepCompensated(Event):
    """Step ``step`` was undone (its compensation completed)."""

    kind: ClassVar[str] = "StepCompensated"
    is_command: ClassVar[bool] = True
    step: int
    name: str

    def describe(self) -> str:
        return f"StepCompensated(step #{self.step} {self.name!r})"


@dataclass(frozen=True, slots=True)
class CompensationFailed(Event):
    """Undoing step ``step`` failed after its retries; an operator must intervene."""

    kind: ClassVar[str] = "CompensationFailed"
    is_command: ClassVar[bool] = True
    step: int
    name: str
    error: dict[str, JSON]

    def describe(self) -> str:
        return f"CompensationFailed(step #{self.step} {self.name!r})"


@dataclass(frozen=True, slots=True)
class InterventionRequired(Event):
    """The run is parked (status ``failed``, ``needs_intervention``) until reopened."""

    kind: ClassVar[str] = "InterventionRequired"
    is_command: ClassVar[bool] = True
    step: int
    name: str
    error: dict[str, JSON]

    def describe(self) -> str:
        return f"InterventionRequired(step #{self.step} {self.name!r})"


@dataclass(frozen=True, slots=True)
class InterventionResolved(Event):
    """An operator reopened the parked run (``retry_compensation``)."""

    kind: ClassVar[str] = "InterventionResolved"


@dataclass(frozen=True, slots=True)
class MarkerRecorded(Event):
    """A named marker, e.g. ``patch:<change id>`` from ``ctx.patched()``.

    Markers take no command number, so histories recorded before a patch was added still
    replay: where the marker is absent, ``patched()`` answers False and nothing shifts.
    """

    kind: ClassVar[str] = "MarkerRecorded"
    is_command: ClassVar[bool] = True
    name: str
    value: JSON = None

    def describe(self) -> str:
        return f"MarkerRecorded({self.name!r})"


@dataclass(frozen=True, slots=True)
class CancelRequested(Event):
    """Someone asked the run to cancel; ``Cancelled`` is raised at the code's await."""

    kind: ClassVar[str] = "CancelRequested"
    reason: str


@dataclass(frozen=True, slots=True)
class WorkflowCompleted(Event):
    """The workflow function returned this result."""

    kind: ClassVar[str] = "WorkflowCompleted"
    is_command: ClassVar[bool] = True
    result: JSON


@dataclass(frozen=True, slots=True)
class WorkflowFailed(Event):
    """The workflow function raised."""

    kind: ClassVar[str] = "WorkflowFailed"
    is_command: ClassVar[bool] = True
    error: dict[str, JSON]


@dataclass(frozen=True, slots=True)
class WorkflowCancelled(Event):
    """The workflow ended by letting ``Cancelled`` propagate."""

    kind: ClassVar[str] = "WorkflowCancelled"
    is_command: ClassVar[bool] = True
    reason: str


@dataclass(frozen=True, slots=True)
class WorkflowContinuedAsNew(Event):
    """The run ended by continuing as a new run (same instance id, fresh history)."""

    kind: ClassVar[str] = "WorkflowContinuedAsNew"
    is_command: ClassVar[bool] = True
    input: list[JSON]
    new_run_id: str


@dataclass(frozen=True, slots=True)
class WorkflowCompensated(Event):
    """The run failed or was cancelled and every completed step was undone."""

    kind: ClassVar[str] = "WorkflowCompensated"
    is_command: ClassVar[bool] = True
    reason: str
    error: dict[str, JSON] | None = None


@dataclass(frozen=True, slots=True)
class WorkflowTerminated(Event):
    """An operator ended the run at once; no workflow code ran."""

    kind: ClassVar[str] = "WorkflowTerminated"
    reason: str


@dataclass(frozen=True, slots=True)
class WorkflowTimedOut(Event):
    """The whole-run timeout elapsed."""

    kind: ClassVar[str] = "WorkflowTimedOut"
    timeout: float


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        WorkflowStarted,
        ActivityScheduled,
        ActivityCompleted,
        ActivityAttemptFailed,
        ActivityFailed,
        TimerStarted,
        TimerFired,
        SignalReceived,
        SideEffectRecorded,
        ChildWorkflowStarted,
        ChildWorkflowCompleted,
        ExternalSignalSent,
        ExternalCancelRequested,
        UpdateAccepted,
        UpdateRejected,
        UpdateCompleted,
        SearchAttributesUpserted,
        CompensationStarted,
        StepCompensated,
        CompensationFailed,
        InterventionRequired,
        InterventionResolved,
        MarkerRecorded,
        CancelRequested,
        WorkflowCompleted,
        WorkflowFailed,
        WorkflowCancelled,
        WorkflowContinuedAsNew,
        WorkflowCompensated,
        WorkflowTerminated,
        WorkflowTimedOut,
    )
}

TERMINAL_EVENTS: dict[type[Event], str] = {
    WorkflowCompleted: "completed",
    WorkflowFailed: "failed",
    WorkflowCancelled: "cancelled",
    WorkflowTerminated: "terminated",
    WorkflowTimedOut: "timed_out",
    WorkflowCompensated: "compensated",
}


def event_from_data(kind: str, data: dict[str, JSON]) -> Event:
    """Rebuild an event from its type tag and stored fields."""
    try:
        cls = EVENT_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown history event type {kind!r}") from None
    return cls(**data)


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """An event at its position (``seq``, from 0) in a run's history, with its time."""

    seq: int
    time: float
    event: Event

    @property
    def kind(self) -> str:
        """The event's type name."""
        return self.event.kind


def history_to_json(items: list[HistoryEvent]) -> list[dict[str, JSON]]:
    """Export a history as JSON-able dicts ``{"seq", "time", "type", **fields}``."""
    return [{"seq": h.seq, "time": h.time, "type": h.kind, **h.event.to_data()} for h in items]


def history_from_json(data: list[dict[str, JSON]]) -> list[HistoryEvent]:
    """Rebuild a history exported by :func:`history_to_json` (or ``stalwart history --json``)."""
    items = []
    for raw in data:
        fields = dict(raw)
        try:
            seq, time, kind = fields.pop("seq"), fields.pop("time"), fields.pop("type")
        except KeyError as exc:
            raise ValueError(f"history entry without {exc.args[0]!r}: {raw!r}") from None
        items.append(HistoryEvent(int(seq), float(time), event_from_data(str(kind), fields)))
    return items
