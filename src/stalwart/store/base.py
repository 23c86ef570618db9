"""The storage port: a small, typed set of domain operations, each one transaction.

Adapters (``memory``, ``sqlite``, and later ``postgres``) implement :class:`Store`; one
conformance suite (``stalwart.testing.StoreContract``) runs unchanged against each.

Writes go through :meth:`Store.write`, which applies a *batch* of operations in a single
transaction (group commit). Each operation is isolated: one that is refused (a fenced
owner, a stale sequence number, an unknown instance) does not affect the others.
Every state change of an owned instance is a compare-and-set on ``(owner, epoch,
history length)``, committed together with its history events and inbox acknowledgement.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stalwart._engine.events import Event, HistoryEvent

JSON = Any

ACTIVE_STATUSES = ("pending", "running", "compensating")
"""Statuses of instances that still have work to do (claimable by workers)."""
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "terminated", "timed_out", "compensated")
"""Statuses of instances that have ended."""
ALL_STATUSES = (*ACTIVE_STATUSES, "suspended", *TERMINAL_STATUSES)
"""Every instance status (``suspended`` = parked after a non-determinism error)."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One workflow instance as stored."""

    id: str
    name: str
    version: int
    status: str
    run_id: str
    input: list[JSON]
    output: JSON
    error: dict[str, JSON] | None
    created_at: float
    updated_at: float
    owner: str | None
    epoch: int
    wake_at: float | None
    history_len: int
    current_step: str | None = None
    parent_id: str | None = None
    search_attributes: dict[str, JSON] | None = None
    needs_intervention: bool = False
    """A saga whose compensation could not finish: ``failed`` until an operator reopens it."""
    queue: str | None = None
    """The queue the instance was started on (flow control), if any."""
    priority: int = 0
    dedup_key: str | None = None
    started_at: float | None = None
    """When a worker first claimed the instance (queue flow control counts from it)."""
    recoveries: int = 0
    """Times the instance was taken over from a worker whose lease expired (a workflow
    that keeps killing its workers is parked once this passes a limit)."""


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """A signal or cancellation request not yet moved into history."""

    id: int
    kind: str
    name: str
    payload: JSON
    time: float


@dataclass(frozen=True, slots=True)
class Claim:
    """An instance a worker must (re)load: newly claimed, or owned and due."""

    instance_id: str
    run_id: str
    epoch: int
    newly_claimed: bool
    suspect: bool = False
    """Taken over before without progress since (``recoveries > 0``): a possible poison
    workflow, claimed in isolation (see ``Store.claim``'s ``suspects``)."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Flow control of one queue, declared identically by every worker that serves it."""

    concurrency: int | None = None
    """At most this many tasks (or started workflows) of the queue at once, globally."""
    rate_limit: int | None = None
    """At most this many starts per ``rate_period`` seconds, globally."""
    rate_period: float = 1.0


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A claimed activity task."""

    id: str
    queue: str
    instance_id: str
    run_id: str
    cmd: int
    attempt: int
    name: str
    input: list[JSON]
    options: dict[str, JSON]
    priority: int
    not_before: float
    created_at: float
    started_at: float | None
    owner: str | None
    status: str


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker incarnation and its liveness lease."""

    id: str
    name: str
    host: str
    pid: int
    started_at: float
    expires_at: float
    serves: tuple[str, ...] = ()
    """The workflows the worker runs, as ``"name@version"``."""


@dataclass(frozen=True, slots=True)
class ListFilter:
    """Filters for :meth:`Store.list_instances` (``None`` = any)."""

    name: str | None = None
    status: str | None = None
    version: int | None = None
    parent_id: str | None = None
    created_after: float | None = None
    """Inclusive lower bound on ``created_at`` (epoch seconds)."""
    created_before: float | None = None
    """Exclusive upper bound on ``created_at`` (epoch seconds)."""
    search: dict[str, JSON] | None = None
    """Search attributes that must all be equal (JSON scalars)."""

    def matches(self, rec: InstanceRecord) -> bool:
        """Whether ``rec`` passes the filter (the reference semantics for adapters)."""
        return (
            (self.name is None or rec.name == self.name)
            and (self.status is None or rec.status == self.status)
            and (self.version is None or rec.version == self.version)
            and (self.parent_id is None or rec.parent_id == self.parent_id)
            and (self.created_after is None or rec.created_at >= self.created_after)
            and (self.created_before is None or rec.created_at < self.created_before)
            and all(
                (rec.search_attributes or {}).get(k) == v for k, v in (self.search or {}).items()
            )
        )


@dataclass(frozen=True, slots=True)
class Page:
    """A page of instances and the cursor of the next page (``None`` at the end)."""

    items: list[InstanceRecord]
    next_cursor: str | None


# ----------------------------------------------------------------------------- operations
@dataclass(frozen=True, slots=True)
class CreateInstance:
    """Create an instance with its first event, unless the id exists (idempotent start)."""

    id: str
    name: str
    version: int
    run_id: str
    input: list[JSON]
    started: Event
    owner: str | None = None
    epoch: int = 1
    parent_id: str | None = None
    prefix: Sequence[tuple[float, Event]] = ()
    """Events recorded after ``started`` (a fork reuses another run's history prefix)."""
    queue: str | None = None
    """Start on this queue: its concurrency and rate limits gate the first claim."""
    priority: int = 0
    """Higher runs first among due instances (and tasks) of a queue."""
    dedup_key: str | None = None
    """Refused (``"duplicate"``) while another active instance holds the same key."""


@dataclass(frozen=True, slots=True)
class AppendEvents:
    """Commit one step of an owned instance: events, status, wake time, inbox ack.

    Refused (``ok=False, error="conflict"``) unless the instance is still owned by
    ``owner`` at ``epoch`` and its history has exactly ``expected_seq`` events.
    """

    instance_id: str
    owner: str
    epoch: int
    expected_seq: int
    events: Sequence[tuple[float, Event]] = ()
    status: str | None = None
    output: JSON = None
    error: dict[str, JSON] | None = None
    wake_at: float | None = None
    release: bool = False
    inbox_upto: int = 0
    current_step: str | None = None
    effects: Sequence[WriteOp] = ()
    """Operations on *other* instances (start children, signal or cancel them) applied in
    the same transaction, only if this compare-and-set succeeds."""
    new_run: Event | None = None
    """A ``WorkflowStarted`` event: continue-as-new. The instance keeps its id, owner and
    ``running`` status; its current run becomes this one, with a fresh history."""
    search_attributes: dict[str, JSON] | None = None
    """When set, the instance's complete search attributes after this step."""
    active_status: str | None = None
    """A non-terminal status to show (``running`` or ``compensating``)."""
    needs_intervention: bool = False
    """With ``status="failed"``: the run is parked, not over; :class:`Reopen` resumes it."""
    # Every successful AppendEvents also sets the instance's ``recoveries`` to 0 (progress).


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Put a signal or cancellation request into an active instance's inbox."""

    instance_id: str
    kind: str
    name: str
    payload: JSON = None


@dataclass(frozen=True, slots=True)
class Terminate:
    """End an instance at once (fences off its owner); no workflow code runs."""

    instance_id: str
    event: Event


@dataclass(frozen=True, slots=True)
class Suspend:
    """Park an owned instance after a non-determinism error (history untouched)."""

    instance_id: str
    owner: str
    epoch: int
    error: dict[str, JSON]


@dataclass(frozen=True, slots=True)
class Resume:
    """Make a suspended instance runnable again (after a code fix)."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class EnqueueTask:
    """Put one attempt of an activity on a task queue (idempotent on ``id``).

    Normally an effect of the step write that scheduled (or retried) the activity, so the
    task exists exactly when its history event does. Workers serving ``queue`` claim it
    once ``not_before`` has passed.
    """

    id: str
    queue: str
    instance_id: str
    run_id: str
    cmd: int
    attempt: int
    name: str
    input: list[JSON]
    options: dict[str, JSON]
    priority: int = 0
    not_before: float = 0.0


@dataclass(frozen=True, slots=True)
class CompleteTask:
    """Record a claimed task's outcome: refused (``conflict``) unless ``owner`` still holds
    it; otherwise the task is done and its outcome event (``{"type": ..., fields}``) goes to
    the instance's inbox (kind ``activity``), waking it."""

    task_id: str
    owner: str
    outcome: dict[str, JSON]


@dataclass(frozen=True, slots=True)
class Reopen:
    """Resume a run parked as ``failed`` with ``needs_intervention`` (an operator fixed the
    cause): it becomes ``compensating`` and due now, with an ``intervention`` inbox message."""

    instance_id: str


WriteOp = (
    CreateInstance
    | AppendEvents
    | SendMessage
    | Terminate
    | Suspend
    | Resume
    | Reopen
    | EnqueueTask
    | CompleteTask
)
"""Any operation of a write batch."""

TASK_MESSAGE = "activity"
"""Inbox kind of a queued activity's outcome (payload: the outcome event's data)."""

CHILD_MESSAGE = "child"
"""Inbox kind of the message a child's terminal transition leaves for its parent.

Its ``name`` is the child's id and its payload ``{"status", "output", "error"}``. A
terminal ``AppendEvents`` or ``Terminate`` of an instance with a ``parent_id`` inserts it
in the same transaction (when the parent is still active). Creating a child whose id is
taken by an instance of another parent (or other input) inserts one at once with status
``failed``."""


def child_outcome(rec: InstanceRecord) -> dict[str, JSON]:
    """The payload of the message a child's terminal transition leaves for its parent."""
    return {"status": rec.status, "output": rec.output, "error": rec.error}


def child_id_taken(child_id: str) -> dict[str, JSON]:
    """The payload telling a parent that its child's id belongs to another instance."""
    return {
        "status": "failed",
        "output": None,
        "error": {
            "type": "WorkflowAlreadyStartedError",
            "message": f"workflow id {child_id!r} is already used by another instance",
        },
    }


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The result of one operation in a write batch.

    ``error`` is ``None`` on success, else one of ``"conflict"`` (fenced or stale),
    ``"not_found"``, ``"closed"`` (the instance already ended), ``"not_suspended"``,
    ``"not_parked"`` (Reopen of an instance that does not need intervention) or
    ``"duplicate"`` (CreateInstance whose ``dedup_key`` an active instance holds; ``record``
    is that instance).
    ``record`` is the instance after the operation, where the operation reads it.
    """

    ok: bool
    error: str | None = None
    record: InstanceRecord | None = None
    created: bool = False
    message_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What an adapter supports, declared as data (tests select on it)."""

    durable: bool
    multi_process: bool
    extra: dict[str, bool] = field(default_factory=dict)


class Store(Protocol):
    """The storage port. Every method is one atomic operation."""

    capabilities: StoreCapabilities

    async def open(self) -> None:
        """Connect and apply pending schema migrations (safe under concurrency)."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...

    def now(self) -> float:
        """The store's clock (epoch seconds); leases and due times are judged by it."""
        ...

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Apply ``ops`` in one transaction, each isolated; one outcome per op, in order."""
        ...

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance, or ``None``."""
        ...

    async def load_history(self, instance_id: str, run_id: str) -> list[HistoryEvent]:
        """Every event of a run, in order."""
        ...

    async def list_instances(
        self, flt: ListFilter, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Instances matching ``flt``, newest first, paged by an opaque cursor."""
        ...

    async def fetch_inbox(self, instance_id: str, after_id: int = 0) -> list[InboxMessage]:
        """Inbox messages with id greater than ``after_id``, oldest first."""
        ...

    async def claim(
        self,
        worker_id: str,
        names: Sequence[str],
        *,
        limit: int = 100,
        versions: Mapping[str, Sequence[int]] | None = None,
        queues: Mapping[str, QueueLimits] | None = None,
        suspects: int | None = None,
    ) -> list[Claim]:
        """Claim runnable instances and report owned ones that are due.

        An instance started on a queue is claimed the first time only within that queue's
        limits (``queues``): started-and-unfinished instances below ``concurrency``, starts
        in the last ``rate_period`` below ``rate_limit``; higher ``priority`` first.

        Claimable: active, of a served name (and, when ``versions`` is given, of a served
        version of that name), and either unowned and due, or owned by a worker whose
        lease expired. Claiming bumps the epoch (fencing the old owner). Taking an
        instance over from a dead worker adds one to its ``recoveries``; every committed
        step (``AppendEvents``) sets it back to 0, so it counts takeovers without progress.

        ``suspects``: when given, instances with ``recoveries > 0`` (suspected of killing
        their workers) are claimed at most this many at a time and reported with
        ``suspect=True``; the others are claimed as usual. A worker runs suspects one by
        one, so when a poison workflow kills it again, the suspects still waiting are not
        owned by it and are not blamed. ``None``: no distinction.
        """
        ...

    async def next_wake(
        self, names: Sequence[str], *, versions: Mapping[str, Sequence[int]] | None = None
    ) -> float | None:
        """The earliest due time of an unowned active instance of the served workflows."""
        ...

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a worker incarnation and its lease."""
        ...

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker and hand its instances back (unowned, due now)."""
        ...

    async def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker."""
        ...

    async def expire_worker(self, worker_id: str) -> None:
        """Mark a worker's lease expired now (it is known to be dead)."""
        ...

    async def claim_tasks(
        self,
        worker_id: str,
        queues: Mapping[str, QueueLimits],
        limits: Mapping[str, int],
        *,
        held: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Claim ready tasks of the given queues (at most ``limits[queue]`` each).

        Ready: ``not_before`` passed, or running but owned by a worker whose lease expired.
        Highest priority first, then oldest. A queue's ``concurrency`` (tasks running) and
        rate limit (tasks started in the last ``rate_period``) hold across all workers.

        ``held``: the ids of the tasks the caller is running. Tasks of these queues that it
        owns but does not hold (claimed by a commit whose acknowledgement was lost) are
        returned again, whatever the limits (they already count against them), so a lost
        reply never leaves a task running under a live owner that knows nothing of it.
        ``None`` skips that check.
        """
        ...

    async def queue_stats(self, queue: str) -> dict[str, int]:
        """Counts of the queue's tasks by status (``ready``, ``running``, ``done``)."""
        ...

    def heartbeat_session(self) -> HeartbeatSession:
        """A synchronous connection for renewing leases from a dedicated thread."""
        ...


class HeartbeatSession(Protocol):
    """Renews a worker's lease from its own thread, independent of the event loop."""

    def renew(self, worker_id: str, ttl: float) -> bool:
        """Extend the lease to now + ttl; False if the worker row is gone or expired."""
        ...

    def close(self) -> None:
        """Close the session's connection."""
        ...


def new_instance_record(op: CreateInstance, now: float) -> InstanceRecord:
    """The record of the instance ``op`` creates at ``now`` (what a read of it returns)."""
    return InstanceRecord(
        id=op.id,
        name=op.name,
        version=op.version,
        status="pending",
        run_id=op.run_id,
        input=op.input,
        output=None,
        error=None,
        created_at=now,
        updated_at=now,
        owner=op.owner,
        epoch=op.epoch,
        wake_at=None if op.owner else now,
        history_len=1 + len(op.prefix),
        parent_id=op.parent_id,
        queue=op.queue,
        priority=op.priority,
        dedup_key=op.dedup_key,
    )
