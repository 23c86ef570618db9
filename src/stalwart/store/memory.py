"""In-memory store: the reference adapter for tests (``memory://``).

It implements exactly the semantics of the SQL adapters, in plain Python structures, and
passes the same conformance suite. Nothing survives the process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stalwart._engine.events import TERMINAL_EVENTS, HistoryEvent, WorkflowStarted
from stalwart.store.base import (
    ACTIVE_STATUSES,
    CHILD_MESSAGE,
    TASK_MESSAGE,
    TERMINAL_STATUSES,
    AppendEvents,
    Claim,
    CompleteTask,
    CreateInstance,
    EnqueueTask,
    InboxMessage,
    InstanceRecord,
    ListFilter,
    Page,
    QueueLimits,
    Reopen,
    Resume,
    SendMessage,
    StoreCapabilities,
    Suspend,
    TaskRecord,
    Terminate,
    WorkerRecord,
    WriteOp,
    WriteOutcome,
    child_id_taken,
    child_outcome,
    new_instance_record,
)
from stalwart.store.cursor import decode_cursor, encode_cursor


@dataclass(slots=True)
class _Instance:
    rec: InstanceRecord
    runs: dict[str, list[HistoryEvent]] = field(default_factory=dict)
    inbox: list[InboxMessage] = field(default_factory=list)

    @property
    def history(self) -> list[HistoryEvent]:
        return self.runs.setdefault(self.rec.run_id, [])


TASK_RETENTION = 3600.0
"""Seconds a finished task is kept (rate limits count recent starts)."""


class MemoryStore:
    """A store held in process memory (thread-safe; one lock)."""

    capabilities = StoreCapabilities(durable=False, multi_process=False)

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._tasks: dict[str, TaskRecord] = {}
        self._next_message = 0

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    def now(self) -> float:
        """The store's clock."""
        return self._clock()

    # -- writes ------------------------------------------------------------------------
    async def write(self, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Apply each op atomically (a refused op changes nothing)."""
        with self._lock:
            return [self._apply(op) for op in ops]

    def _apply(self, op: WriteOp) -> WriteOutcome:
        now = self._clock()
        if isinstance(op, CreateInstance):
            return self._create(op, now)
        if isinstance(op, EnqueueTask):
            return self._enqueue(op, now)
        if isinstance(op, CompleteTask):
            return self._complete(op, now)
        inst = self._instances.get(op.instance_id)
        if inst is None:
            return WriteOutcome(False, "not_found")
        if isinstance(op, AppendEvents):
            return self._append(inst, op, now)
        if isinstance(op, SendMessage):
            return self._send(inst, op, now)
        if isinstance(op, Terminate):
            return self._terminate(inst, op, now)
        if isinstance(op, Suspend):
            return self._suspend(inst, op, now)
        if isinstance(op, Reopen):
            return self._reopen(inst, now)
        return self._resume(inst, op, now)

    def _reopen(self, inst: _Instance, now: float) -> WriteOutcome:
        rec = inst.rec
        if rec.status != "failed" or not rec.needs_intervention:
            return WriteOutcome(False, "not_parked", record=rec)
        self._next_message += 1
        inst.inbox.append(InboxMessage(self._next_message, "intervention", "", None, now))
        inst.rec = dataclasses.replace(
            rec,
            status="compensating",
            needs_intervention=False,
            owner=None,
            wake_at=now,
            updated_at=now,
            error=None,
        )
        return WriteOutcome(True, record=inst.rec)

    def _create(self, op: CreateInstance, now: float) -> WriteOutcome:
        existing = self._instances.get(op.id)
        if existing is None and op.dedup_key is not None:
            holder = next(
                (
                    i.rec
                    for i in self._instances.values()
                    if i.rec.dedup_key == op.dedup_key and i.rec.status in ACTIVE_STATUSES
                ),
                None,
            )
            if holder is not None:
                return WriteOutcome(False, "duplicate", record=holder)
        if existing is not None:
            if op.parent_id is not None and (
                existing.rec.parent_id != op.parent_id or existing.rec.input != op.input
            ):
                self._notify_parent(op.parent_id, op.id, now, child_id_taken(op.id))
            elif op.parent_id is not None and existing.rec.status in TERMINAL_STATUSES:
                # The same child, already ended: its outcome will not be sent again.
                self._notify_parent(op.parent_id, op.id, now, child_outcome(existing.rec))
            return WriteOutcome(True, record=existing.rec, created=False)
        rec = new_instance_record(op, now)
        events = [HistoryEvent(0, now, op.started)]
        events += [HistoryEvent(i + 1, t, e) for i, (t, e) in enumerate(op.prefix)]
        self._instances[op.id] = _Instance(rec, {op.run_id: events})
        return WriteOutcome(True, record=rec, created=True)

    def _append(self, inst: _Instance, op: AppendEvents, now: float) -> WriteOutcome:
        rec = inst.rec
        if (
            rec.owner != op.owner
            or rec.epoch != op.epoch
            or rec.history_len != op.expected_seq
            or rec.status not in ACTIVE_STATUSES
        ):
            return WriteOutcome(False, "conflict", record=rec)
        seq = rec.history_len
        for when, event in op.events:
            inst.history.append(HistoryEvent(seq, when, event))
            seq += 1
        inst.inbox = [m for m in inst.inbox if m.id > op.inbox_upto]
        wake_at = now if inst.inbox and op.status is None else op.wake_at
        if op.new_run is not None:
            started = op.new_run
            assert isinstance(started, WorkflowStarted)
            inst.runs[started.run_id] = [HistoryEvent(0, now, started)]
            inst.rec = dataclasses.replace(
                rec,
                run_id=started.run_id,
                input=started.input,
                history_len=1,
                updated_at=now,
                wake_at=now if inst.inbox else None,
                current_step=None,
                status="running",
                recoveries=0,
                search_attributes=(
                    op.search_attributes
                    if op.search_attributes is not None
                    else rec.search_attributes
                ),
            )
            self._apply_effects(op, now)
            return WriteOutcome(True, record=inst.rec)
        status = (
            op.status or op.active_status or ("running" if rec.status == "pending" else rec.status)
        )
        inst.rec = dataclasses.replace(
            rec,
            status=status,
            output=op.output if op.status else rec.output,
            error=op.error if op.status else rec.error,
            updated_at=now,
            owner=None if op.release or status in TERMINAL_STATUSES else rec.owner,
            wake_at=None if status in TERMINAL_STATUSES else wake_at,
            history_len=seq,
            current_step=op.current_step,
            search_attributes=(
                op.search_attributes if op.search_attributes is not None else rec.search_attributes
            ),
            needs_intervention=op.needs_intervention and status == "failed",
            recoveries=0,
        )
        self._apply_effects(op, now)
        parked = op.needs_intervention
        if status in TERMINAL_STATUSES and rec.parent_id is not None and not parked:
            self._notify_parent(rec.parent_id, rec.id, now, child_outcome(inst.rec))
        return WriteOutcome(True, record=inst.rec)

    def _apply_effects(self, op: AppendEvents, now: float) -> None:
        for effect in op.effects:
            self._apply(effect)

    def _notify_parent(
        self, parent_id: str, child_id: str, now: float, payload: dict[str, Any]
    ) -> None:
        parent = self._instances.get(parent_id)
        if parent is None or parent.rec.status in TERMINAL_STATUSES:
            return
        self._next_message += 1
        parent.inbox.append(InboxMessage(self._next_message, CHILD_MESSAGE, child_id, payload, now))
        parent.rec = dataclasses.replace(parent.rec, wake_at=now, updated_at=now)

    def _send(self, inst: _Instance, op: SendMessage, now: float) -> WriteOutcome:
        rec = inst.rec
        if rec.status in TERMINAL_STATUSES:
            return WriteOutcome(False, "closed", record=rec)
        self._next_message += 1
        inst.inbox.append(InboxMessage(self._next_message, op.kind, op.name, op.payload, now))
        inst.rec = dataclasses.replace(rec, wake_at=now, updated_at=now)
        return WriteOutcome(True, record=inst.rec, message_id=self._next_message)

    def _terminate(self, inst: _Instance, op: Terminate, now: float) -> WriteOutcome:
        rec = inst.rec
        if rec.status in TERMINAL_STATUSES:
            return WriteOutcome(False, "closed", record=rec)
        inst.history.append(HistoryEvent(rec.history_len, now, op.event))
        inst.inbox.clear()
        inst.rec = dataclasses.replace(
            rec,
            status=TERMINAL_EVENTS[type(op.event)],
            owner=None,
            epoch=rec.epoch + 1,
            wake_at=None,
            history_len=rec.history_len + 1,
            updated_at=now,
            error={"type": op.event.kind, "message": getattr(op.event, "reason", "")},
        )
        if rec.parent_id is not None:
            self._notify_parent(rec.parent_id, rec.id, now, child_outcome(inst.rec))
        return WriteOutcome(True, record=inst.rec)

    def _suspend(self, inst: _Instance, op: Suspend, now: float) -> WriteOutcome:
        rec = inst.rec
        if rec.owner != op.owner or rec.epoch != op.epoch or rec.status not in ACTIVE_STATUSES:
            return WriteOutcome(False, "conflict", record=rec)
        inst.rec = dataclasses.replace(
            rec, status="suspended", owner=None, wake_at=None, error=op.error, updated_at=now
        )
        return WriteOutcome(True, record=inst.rec)

    def _resume(self, inst: _Instance, op: Resume, now: float) -> WriteOutcome:
        rec = inst.rec
        if rec.status != "suspended":
            return WriteOutcome(False, "not_suspended", record=rec)
        inst.rec = dataclasses.replace(
            rec,
            status="running",
            owner=None,
            wake_at=now,
            error=None,
            updated_at=now,
            recoveries=0,
        )
        return WriteOutcome(True, record=inst.rec)

    # -- reads -------------------------------------------------------------------------
    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance, or ``None``."""
        with self._lock:
            inst = self._instances.get(instance_id)
            return inst.rec if inst else None

    async def load_history(self, instance_id: str, run_id: str) -> list[HistoryEvent]:
        """Every event of the run, in order."""
        with self._lock:
            inst = self._instances.get(instance_id)
            if inst is None:
                return []
            return list(inst.runs.get(run_id, ()))

    async def list_instances(
        self, flt: ListFilter, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Instances matching ``flt``, newest first."""
        after = decode_cursor(cursor)
        with self._lock:
            recs = [i.rec for i in self._instances.values() if flt.matches(i.rec)]
        recs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        if after is not None:
            recs = [r for r in recs if (r.created_at, r.id) < after]
        items = recs[:limit]
        more = len(recs) > limit
        return Page(items, encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def fetch_inbox(self, instance_id: str, after_id: int = 0) -> list[InboxMessage]:
        """Inbox messages newer than ``after_id``, oldest first."""
        with self._lock:
            inst = self._instances.get(instance_id)
            return [m for m in inst.inbox if m.id > after_id] if inst else []

    # -- work distribution -------------------------------------------------------------
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
        """Claim runnable instances; report owned, due ones."""
        serves = _serves(names, versions)
        with self._lock:
            now = self._clock()
            me = self._workers.get(worker_id)
            # Only a worker whose own lease holds may take over from expired ones: after an
            # outage two live workers with lapsed leases would otherwise take each other's.
            expired = (
                {w.id for w in self._workers.values() if w.expires_at < now and w.id != worker_id}
                if me is not None and me.expires_at >= now
                else set()
            )
            room = self._queue_room(queues or {}, now)
            claims: list[Claim] = []
            candidates = sorted(
                (
                    i
                    for i in self._instances.values()
                    if i.rec.status in ACTIVE_STATUSES and serves(i.rec)
                ),
                key=lambda i: (-i.rec.priority, i.rec.wake_at or 0.0, i.rec.id),
            )
            suspect_room = suspects
            for inst in candidates:
                if len(claims) >= limit:
                    break
                rec = inst.rec
                due = rec.wake_at is not None and rec.wake_at <= now
                if rec.owner == worker_id:
                    if due:
                        claims.append(Claim(rec.id, rec.run_id, rec.epoch, False))
                elif (rec.owner is None and due) or rec.owner in expired:
                    suspect = suspect_room is not None and rec.recoveries > 0
                    if suspect:
                        assert suspect_room is not None
                        if suspect_room <= 0:
                            continue
                        suspect_room -= 1
                    first = rec.started_at is None
                    if first and rec.queue in room:
                        if room[rec.queue] <= 0:
                            continue
                        room[rec.queue] -= 1
                    inst.rec = dataclasses.replace(
                        rec,
                        owner=worker_id,
                        epoch=rec.epoch + 1,
                        updated_at=now,
                        started_at=now if first else rec.started_at,
                        recoveries=rec.recoveries + (1 if rec.owner in expired else 0),
                    )
                    claims.append(Claim(rec.id, rec.run_id, rec.epoch + 1, True, suspect))
            return claims

    def _queue_room(self, queues: Mapping[str, QueueLimits], now: float) -> dict[str, int]:
        """How many more instances each limited queue may start now."""
        room: dict[str, int] = {}
        for name, limits in queues.items():
            started = [
                i.rec
                for i in self._instances.values()
                if i.rec.queue == name and i.rec.started_at is not None
            ]
            free = 1 << 30
            if limits.concurrency is not None:
                running = sum(1 for r in started if r.status in ACTIVE_STATUSES)
                free = min(free, limits.concurrency - running)
            if limits.rate_limit is not None:
                recent = sum(
                    1 for r in started if r.started_at and r.started_at > now - limits.rate_period
                )
                free = min(free, limits.rate_limit - recent)
            room[name] = max(0, free)
        return room

    # -- task queues -------------------------------------------------------------------
    async def claim_tasks(
        self,
        worker_id: str,
        queues: Mapping[str, QueueLimits],
        limits: Mapping[str, int],
        *,
        held: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Claim ready tasks of the served queues within their limits."""
        with self._lock:
            now = self._clock()
            expired = {w.id for w in self._workers.values() if w.expires_at < now}
            claimed: list[TaskRecord] = []
            if held is not None:
                claimed += [
                    t
                    for t in self._tasks.values()
                    if t.queue in limits
                    and t.status == "running"
                    and t.owner == worker_id
                    and t.id not in held
                ]
            for queue, want in limits.items():
                rules = queues.get(queue, QueueLimits())
                tasks = [t for t in self._tasks.values() if t.queue == queue]
                room = want
                if rules.concurrency is not None:
                    running = sum(
                        1 for t in tasks if t.status == "running" and t.owner not in expired
                    )
                    room = min(room, rules.concurrency - running)
                if rules.rate_limit is not None:
                    recent = sum(
                        1
                        for t in tasks
                        if t.started_at is not None and t.started_at > now - rules.rate_period
                    )
                    room = min(room, rules.rate_limit - recent)
                ready = sorted(
                    (
                        t
                        for t in tasks
                        if (t.status == "ready" and t.not_before <= now)
                        or (t.status == "running" and t.owner in expired)
                    ),
                    key=lambda t: (-t.priority, t.not_before, t.created_at, t.id),
                )
                for task in ready[: max(0, room)]:
                    taken = dataclasses.replace(
                        task, status="running", owner=worker_id, started_at=now
                    )
                    self._tasks[task.id] = taken
                    claimed.append(taken)
            self._tasks = {
                k: t
                for k, t in self._tasks.items()
                if t.status != "done" or (t.started_at or 0) > now - TASK_RETENTION
            }
            return claimed

    async def queue_stats(self, queue: str) -> dict[str, int]:
        """Counts of the queue's tasks by status."""
        with self._lock:
            counts = {"ready": 0, "running": 0, "done": 0}
            for task in self._tasks.values():
                if task.queue == queue:
                    counts[task.status] += 1
            return counts

    def _enqueue(self, op: EnqueueTask, now: float) -> WriteOutcome:
        if op.id not in self._tasks:
            self._tasks[op.id] = TaskRecord(
                op.id,
                op.queue,
                op.instance_id,
                op.run_id,
                op.cmd,
                op.attempt,
                op.name,
                op.input,
                op.options,
                op.priority,
                op.not_before,
                now,
                None,
                None,
                "ready",
            )
        return WriteOutcome(True)

    def _complete(self, op: CompleteTask, now: float) -> WriteOutcome:
        task = self._tasks.get(op.task_id)
        if task is None:
            return WriteOutcome(False, "not_found")
        if task.status != "running" or task.owner != op.owner:
            return WriteOutcome(False, "conflict")
        self._tasks[op.task_id] = dataclasses.replace(task, status="done")
        inst = self._instances.get(task.instance_id)
        if inst is not None and inst.rec.status not in TERMINAL_STATUSES:
            self._next_message += 1
            inst.inbox.append(
                InboxMessage(self._next_message, TASK_MESSAGE, str(task.cmd), op.outcome, now)
            )
            inst.rec = dataclasses.replace(inst.rec, wake_at=now, updated_at=now)
        return WriteOutcome(True)

    async def next_wake(
        self, names: Sequence[str], *, versions: Mapping[str, Sequence[int]] | None = None
    ) -> float | None:
        """Earliest due time of an unowned active instance."""
        serves = _serves(names, versions)
        with self._lock:
            times = [
                i.rec.wake_at
                for i in self._instances.values()
                if i.rec.status in ACTIVE_STATUSES
                and serves(i.rec)
                and i.rec.owner is None
                and i.rec.wake_at is not None
            ]
        return min(times) if times else None

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a worker incarnation."""
        with self._lock:
            self._workers[worker.id] = worker

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove the worker and hand its instances back."""
        with self._lock:
            now = self._clock()
            self._workers.pop(worker_id, None)
            for task_id, task in list(self._tasks.items()):
                if task.owner == worker_id and task.status == "running":
                    self._tasks[task_id] = dataclasses.replace(task, status="ready", owner=None)
            for inst in self._instances.values():
                if inst.rec.owner == worker_id:
                    inst.rec = dataclasses.replace(inst.rec, owner=None, wake_at=now)

    async def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker."""
        with self._lock:
            return list(self._workers.values())

    async def expire_worker(self, worker_id: str) -> None:
        """Mark the worker's lease expired."""
        with self._lock:
            w = self._workers.get(worker_id)
            if w is not None:
                # As of now, not 0: a long-expired row is forgotten at the next liveness pass.
                expires = min(w.expires_at, self._clock() - 0.001)
                self._workers[worker_id] = dataclasses.replace(w, expires_at=expires)

    def heartbeat_session(self) -> _MemoryHeartbeat:
        """Lease renewal usable from another thread."""
        return _MemoryHeartbeat(self)

    def _renew(self, worker_id: str, ttl: float) -> bool:
        with self._lock:
            w = self._workers.get(worker_id)
            now = self._clock()
            if w is None or w.expires_at < now:
                return False
            self._workers[worker_id] = dataclasses.replace(w, expires_at=now + ttl)
            return True


def _serves(
    names: Sequence[str], versions: Mapping[str, Sequence[int]] | None
) -> Callable[[InstanceRecord], bool]:
    wanted = set(names)
    if versions is None:
        return lambda rec: rec.name in wanted
    keys = {(n, v) for n in wanted for v in versions.get(n, ())}
    return lambda rec: (rec.name, rec.version) in keys


class _MemoryHeartbeat:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def renew(self, worker_id: str, ttl: float) -> bool:
        return self._store._renew(worker_id, ttl)

    def close(self) -> None:
        return None
