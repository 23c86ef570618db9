"""Shared pieces of the store conformance suite: the fake clock and helpers."""

from __future__ import annotations

import base64
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from stalwart._engine.events import (
    ActivityAttemptFailed,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    CancelRequested,
    ChildWorkflowCompleted,
    ChildWorkflowStarted,
    CompensationFailed,
    CompensationStarted,
    Event,
    ExternalCancelRequested,
    ExternalSignalSent,
    HistoryEvent,
    InterventionRequired,
    InterventionResolved,
    MarkerRecorded,
    SearchAttributesUpserted,
    SideEffectRecorded,
    SignalReceived,
    StepCompensated,
    TimerFired,
    TimerStarted,
    UpdateAccepted,
    UpdateCompleted,
    UpdateRejected,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTerminated,
    WorkflowTimedOut,
)
from stalwart.store.base import (
    AppendEvents,
    Claim,
    CreateInstance,
    InboxMessage,
    InstanceRecord,
    SendMessage,
    Store,
    Suspend,
    Terminate,
    WorkerRecord,
    WriteOp,
    WriteOutcome,
)

PeerOpener = Callable[[], Awaitable[Store]]
"""Opens (and returns, opened) another store on the same database as ``store``."""

WF = "order"
"""The workflow name most tests use."""
OTHER = "invoice"
"""A workflow name the claiming worker does not serve."""
LONG_TTL = 3600.0
"""A lease long enough never to expire within a test (unless the test says so)."""

_State = tuple[InstanceRecord | None, list[HistoryEvent], list[InboxMessage]]


class FakeClock:
    """A clock that only moves when told to (pass it to a store as ``clock=``).

    Calling it returns the current time in epoch seconds. It is safe to read from the
    store's threads while a test advances it.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> float:
        """The current fake time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now


# ----------------------------------------------------------------------------- helpers
def _started(
    run_id: str = "run-1", *, name: str = WF, version: int = 1, input: list[Any] | None = None
) -> WorkflowStarted:
    return WorkflowStarted(name=name, version=version, input=input or [], run_id=run_id)


def _create_op(
    instance_id: str,
    *,
    name: str = WF,
    version: int = 1,
    run_id: str | None = None,
    input: list[Any] | None = None,
    owner: str | None = None,
    epoch: int = 1,
    parent_id: str | None = None,
) -> CreateInstance:
    run = run_id or f"run-{instance_id}"
    data = input if input is not None else [instance_id]
    return CreateInstance(
        id=instance_id,
        name=name,
        version=version,
        run_id=run,
        input=data,
        started=_started(run, name=name, version=version, input=data),
        owner=owner,
        epoch=epoch,
        parent_id=parent_id,
    )


async def _write1(store: Store, op: WriteOp) -> WriteOutcome:
    outcomes = await store.write([op])
    assert len(outcomes) == 1, f"one op must give one outcome, got {outcomes!r}"
    return outcomes[0]


async def _get(store: Store, instance_id: str) -> InstanceRecord:
    rec = await store.get_instance(instance_id)
    assert rec is not None, f"instance {instance_id!r} should exist"
    return rec


async def _create(store: Store, instance_id: str, **kwargs: Any) -> InstanceRecord:
    outcome = await _write1(store, _create_op(instance_id, **kwargs))
    assert outcome.ok and outcome.created, outcome
    assert outcome.record is not None
    return outcome.record


async def _register(store: Store, clock: FakeClock, worker_id: str, ttl: float = LONG_TTL) -> None:
    now = clock()
    await store.register_worker(
        WorkerRecord(worker_id, f"worker {worker_id}", "host-a", 4242, now, now + ttl)
    )


async def _running(
    store: Store, clock: FakeClock, instance_id: str, *, worker: str = "w1", name: str = WF
) -> InstanceRecord:
    """An instance owned by a registered ``worker`` at epoch 1, running, history_len 2."""
    await _register(store, clock, worker)
    await _create(store, instance_id, owner=worker, name=name)
    outcome = await _write1(
        store,
        AppendEvents(
            instance_id,
            worker,
            1,
            1,
            [(clock(), TimerStarted(cmd=0, fire_at=clock() + 600.0))],
            wake_at=clock() + 600.0,
        ),
    )
    assert outcome.ok, outcome
    rec = await _get(store, instance_id)
    assert (rec.status, rec.owner, rec.epoch, rec.history_len) == ("running", worker, 1, 2)
    return rec


async def _end(store: Store, rec: InstanceRecord, status: str) -> InstanceRecord:
    """End an owned instance with ``status`` through its owner's AppendEvents."""
    assert rec.owner is not None
    if status == "terminated":
        outcome = await _write1(store, Terminate(rec.id, WorkflowTerminated(reason="ops")))
    else:
        outcome = await _write1(
            store,
            AppendEvents(rec.id, rec.owner, rec.epoch, rec.history_len, status=status),
        )
    assert outcome.ok, outcome
    ended = await _get(store, rec.id)
    assert ended.status == status
    return ended


async def _suspended(store: Store, clock: FakeClock, instance_id: str) -> InstanceRecord:
    rec = await _running(store, clock, instance_id)
    assert rec.owner is not None
    outcome = await _write1(
        store, Suspend(instance_id, rec.owner, rec.epoch, {"type": "NonDeterminismError"})
    )
    assert outcome.ok, outcome
    return await _get(store, instance_id)


async def _state(store: Store, instance_id: str) -> _State:
    """Everything the store holds about one instance (to prove nothing changed)."""
    rec = await store.get_instance(instance_id)
    history = await store.load_history(instance_id, rec.run_id) if rec is not None else []
    return rec, history, await store.fetch_inbox(instance_id)


async def _send(store: Store, instance_id: str, name: str = "go", payload: Any = None) -> int:
    outcome = await _write1(store, SendMessage(instance_id, "signal", name, payload))
    assert outcome.ok and outcome.error is None, outcome
    assert isinstance(outcome.message_id, int)
    return outcome.message_id


async def _settle(store: Store, claims: Sequence[Claim], worker: str) -> None:
    """Act as a worker that loaded its new claims: commit a step so they are not due."""
    for claim in claims:
        if claim.newly_claimed:
            rec = await _get(store, claim.instance_id)
            out = await _write1(
                store, AppendEvents(claim.instance_id, worker, claim.epoch, rec.history_len)
            )
            assert out.ok, (claim, out)


def _require(store: Store, capability: str) -> None:
    caps = store.capabilities
    declared = getattr(caps, capability, None)
    if declared is None:
        declared = caps.extra.get(capability, False)
    if not declared:
        pytest.skip(f"the store does not declare the {capability!r} capability")


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _sample_events(t: float) -> list[Event]:
    """One event of every type, with awkward values (unicode, nesting, big ints, floats)."""
    return [
        WorkflowStarted(
            name="注文 🚀",
            version=3,
            input=[{"ключ": ["значение", 1, 2.5, None, True]}, "", 2**53 + 1, -(2**63)],
            run_id="run-ü-1",
            timeout=12.5,
        ),
        ActivityScheduled(
            cmd=0,
            name="charge card",
            input=[{"amount": "12.30", "nested": {"deep": [[], {}, [[{"x": "y"}]]]}}],
            options={"retry": {"max_attempts": 5, "backoff": 1.5}, "timeout": None},
        ),
        ActivityCompleted(cmd=0, result={"ok": True, "emoji": "✅", "n": [1, [2, [3]]]}, attempt=2),
        ActivityAttemptFailed(
            cmd=1,
            attempt=1,
            error={
                "type": "ValueError",
                "message": 'bad \u2018quote\u2019 "x"',
                "traceback": "a\nb",
            },
            retry_at=t + 30.25,
        ),
        ActivityFailed(
            cmd=1,
            attempts=3,
            error={
                "type": "Boom",
                "message": "",
                "details": {"code": 42, "tags": ["\u03b1", "\u03b2"]},
            },
            non_retryable=True,
        ),
        TimerStarted(cmd=2, fire_at=t + 3600.0),
        TimerFired(cmd=2),
        SignalReceived(name="approve ✓", payload={"by": "Zoë", "at": [2024, 1, 1], "note": None}),
        SideEffectRecorded(cmd=3, value=-0.1),
        MarkerRecorded(name="patch:new-pricing", value=True),
        ChildWorkflowStarted(
            cmd=4,
            child_id="order-1/4",
            name="ship",
            version=2,
            input=[{"to": "Zürich"}],
            parent_close="abandon",
        ),
        ChildWorkflowCompleted(
            child_id="order-1/4",
            status="failed",
            result=None,
            error={"type": "ValueError", "message": "no route"},
        ),
        ExternalSignalSent(cmd=5, target_id="order-1/4", name="nudge", payload=[1, {"x": None}]),
        ExternalCancelRequested(cmd=6, target_id="order-1/4", reason="late"),
        WorkflowContinuedAsNew(input=[1, "two"], new_run_id="run-2"),
        UpdateAccepted(update_id="u-1", name="discount", args=[10, {"code": "ÉTÉ"}]),
        UpdateRejected(
            update_id="u-2", name="discount", error={"type": "ValueError", "message": "too big"}
        ),
        UpdateCompleted(update_id="u-1", result={"total": 8}, error=None),
        SearchAttributesUpserted(attributes={"customer": "acme", "tier": 2, "vip": None}),
        CompensationStarted(step=1, name="charge", reason="ship failed"),
        StepCompensated(step=1, name="charge"),
        CompensationFailed(step=0, name="reserve", error={"type": "IOError", "message": "down"}),
        InterventionRequired(step=0, name="reserve", error={"type": "IOError"}),
        InterventionResolved(),
        WorkflowCompensated(reason="ship failed", error={"type": "ActivityError"}),
        CancelRequested(reason="user asked: «stop»"),
        WorkflowCompleted(result=[{"a": 1}, "b", 3.0, False, None, {"": ""}]),
        WorkflowFailed(error={"type": "RuntimeError", "message": "失败", "traceback": "…"}),
        WorkflowCancelled(reason="cancelled\ttab"),
        WorkflowTerminated(reason=""),
        WorkflowTimedOut(timeout=86400.0),
    ]
