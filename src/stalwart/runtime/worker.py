"""The worker: owns instances through leases and drives them to completion.

* A worker incarnation registers a lease (renewed by a thread, see ``heartbeat.py``).
* The claim loop takes runnable instances from the store: unowned ones that are due, and
  those whose owner's lease expired (a same-host owner whose process is gone is expired
  at once). It wakes on in-process kicks, on the next known due time, or on a slow poll.
* Each owned instance is driven by :meth:`Worker._drive` while it has work: incoming
  events are applied to the replayed run, and the resulting events are committed in one
  compare-and-set write (group-committed with other instances' writes). Only after that
  write is durable are new activities started and timers armed.
* Blocked instances stay in memory (sticky) up to ``max_cached``; instances blocked on a
  far timer are released to the store and reloaded by replay when due.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stalwart import faults
from stalwart._engine import events as ev
from stalwart.codec import TypeConverter
from stalwart.decorators import Registry, WorkflowDefinition
from stalwart.errors import (
    EncodingError,
    NonDeterminismError,
    StoreError,
    error_info,
)
from stalwart.runtime import gc_tuning
from stalwart.runtime.activity_exec import execute_attempt
from stalwart.runtime.clock import Clock
from stalwart.runtime.committer import GroupCommitter
from stalwart.runtime.heartbeat import HeartbeatThread
from stalwart.runtime.instance import LiveInstance, build_instance
from stalwart.runtime.options import WorkerOptions
from stalwart.runtime.slots import Slots
from stalwart.runtime.tasks import TaskRunner
from stalwart.store.base import (
    ACTIVE_STATUSES,
    CHILD_MESSAGE,
    TASK_MESSAGE,
    AppendEvents,
    Claim,
    CreateInstance,
    EnqueueTask,
    InboxMessage,
    SendMessage,
    Store,
    Suspend,
    Terminate,
    WorkerRecord,
    WriteOp,
)

logger = logging.getLogger("stalwart.runtime")
FORGET_DEAD_WORKERS_AFTER = 3600.0
"""Seconds after its lease expired that a dead worker's row is deleted."""


def host_identity() -> str:
    """This host (and pid namespace), so a worker can tell a same-host owner is dead."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return f"{socket.gethostname()}|{pidns}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie, killed but not reaped, is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


class Worker:
    """Runs workflows and their inline activities; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        committer: GroupCommitter,
        registry: Registry,
        converter: TypeConverter,
        clock: Clock,
        options: WorkerOptions,
        on_closed: Callable[[str, Ending | None], None],
    ) -> None:
        self.store = store
        self.committer = committer
        self.registry = registry
        self.converter = converter
        self.clock = clock
        self.options = options
        self._on_closed = on_closed
        self.name = options.name or f"{socket.gethostname()}:{os.getpid()}"
        self.id = f"{self.name}-{uuid.uuid4().hex[:12]}"
        self.host = options.host_id or host_identity()
        self.names = registry.workflow_names()
        self.versions = registry.served()
        self.live: dict[str, LiveInstance] = {}
        self._executor = ThreadPoolExecutor(
            options.activity_threads, thread_name_prefix="stalwart-activity"
        )
        self._activity_slots = Slots(options.max_concurrent_activities)
        self.queue_limits = {q.name: q.limits() for q in options.queues}
        self.tasks = TaskRunner(
            worker_id=self.id,
            queues=list(options.queues),
            store=store,
            committer=committer,
            registry=registry,
            converter=converter,
            executor=self._executor,
            clock=clock,
            poll_interval=options.poll_interval,
            on_outcome=self.notify,
        )
        self._load_slots = Slots(options.max_concurrent_loads)
        self._scan_kick = asyncio.Event()
        self._scan_task: asyncio.Task[None] | None = None
        self._loading: set[str] = set()
        self._isolating: str | None = None
        """A suspect (taken over without progress since) being run alone; see ``claim``."""
        self._isolated_at = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self._heartbeat: HeartbeatThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._draining = False
        self._store_failing = False
        self._gc_held = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Register the lease, start renewing it and start claiming work."""
        self._loop = asyncio.get_running_loop()
        await self._register()
        ttl = self.options.lease_seconds
        self._heartbeat = HeartbeatThread(
            self.store.heartbeat_session(),
            self.id,
            ttl=ttl,
            interval=ttl / 3,
            on_lost=self._lease_lost,
        )
        self._heartbeat.start()
        self._scan_task = self._loop.create_task(self._scan_loop(), name="stalwart-claims")
        self.tasks.start()
        wait_for_wake = getattr(self.store, "wait_for_wake", None)
        if callable(wait_for_wake):
            self._spawn(self._listen(wait_for_wake))
        if self.options.gc_threshold is not None and not self._gc_held:
            gc_tuning.hold(self.options.gc_threshold)
            self._gc_held = True

    async def _register(self) -> None:
        now = self.store.now()
        await self.store.register_worker(
            WorkerRecord(
                self.id,
                self.name,
                self.host,
                os.getpid(),
                now,
                now + self.options.lease_seconds,
                serves=tuple(f"{n}@{v}" for n, vs in self.versions.items() for v in vs),
            )
        )

    def _lease_lost(self) -> None:
        # Called from the heartbeat thread: re-register on the loop. Instances another
        # worker took over meanwhile are fenced: our next write to them is refused.
        loop = self._loop
        if loop is not None and not self._stopping:
            asyncio.run_coroutine_threadsafe(self._register(), loop)

    async def stop(self) -> None:
        """Stop claiming, let running activities finish (up to the grace period), hand back
        every instance still owned and release the lease."""
        if self._gc_held:  # first, so that a failing stop cannot keep it raised
            self._gc_held = False
            gc_tuning.release()
        self._stopping = True
        self._draining = True
        self._scan_kick.set()
        if self._scan_task is not None:
            await self._scan_task
        deadline = self.clock.now() + self.options.shutdown_grace
        while self.clock.now() < deadline and any(
            inst.activity_tasks or (inst.driving and not inst.driving.done())
            for inst in self.live.values()
        ):
            await asyncio.sleep(0.02)
        for inst in list(self.live.values()):
            self._drop(inst)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.tasks.stop(self.options.shutdown_grace)
        if self._heartbeat is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._heartbeat.stop)
        await self.store.deregister_worker(self.id)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- entry points used by the engine -------------------------------------------------
    def kick(self) -> None:
        """Look for claimable work now (something was started, signalled or resumed)."""
        self._scan_kick.set()

    def notify(self, instance_id: str) -> None:
        """The instance's inbox changed: deliver at once if it is here, else claim it."""
        inst = self.live.get(instance_id)
        if inst is None:
            self.kick()
            return
        inst.inbox_dirty = True
        self._kick(inst)

    def forget(self, instance_id: str) -> None:
        """The instance was ended from outside (terminated): drop it from memory."""
        inst = self.live.get(instance_id)
        if inst is not None:
            self._drop(inst)

    def adopt_new(
        self,
        instance_id: str,
        run_id: str,
        epoch: int,
        defn: WorkflowDefinition[Any, Any],
        started: ev.WorkflowStarted,
        start_time: float,
        *,
        inbox_cursor: int = 0,
    ) -> None:
        """Run an instance this process just created and owns (no store read needed)."""
        inst = build_instance(
            instance_id=instance_id,
            run_id=run_id,
            epoch=epoch,
            defn=defn,
            started=started,
            start_time=start_time,
            converter=self.converter,
        )
        inst.inbox_dirty = inbox_cursor > 0
        inst.inbox_cursor = inbox_cursor
        self.live[instance_id] = inst
        inst.unsaved = inst.run.start_fresh()
        self._kick(inst)

    # -- claiming ------------------------------------------------------------------------
    async def _scan_loop(self) -> None:
        next_liveness = 0.0
        while not self._stopping:
            self._scan_kick.clear()
            try:
                if self.clock.now() >= next_liveness:
                    await self._expire_dead_local_workers()
                    next_liveness = self.clock.now() + self.options.liveness_interval
                self._check_isolation()
                claims = await self.store.claim(
                    self.id,
                    self.names,
                    limit=self.options.claim_batch,
                    versions=self.versions,
                    queues=self.queue_limits,
                    suspects=0 if self._isolating is not None else 1,
                )
                for claim in claims:
                    self._on_claim(claim)
                if len(claims) >= self.options.claim_batch:
                    await asyncio.sleep(0)
                    continue
                wake = await self.store.next_wake(self.names, versions=self.versions)
                self._store_ok()
            except StoreError as exc:
                self._store_failed(exc)
                wake = None
            timeout = self.options.poll_interval
            if wake is not None:
                timeout = max(0.0, min(timeout, wake - self.clock.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scan_kick.wait(), timeout)

    async def _listen(self, wait_for_wake: Callable[[float], Awaitable[bool]]) -> None:
        """Wake the claim loops on the store's notifications (PostgreSQL LISTEN/NOTIFY):
        work made by other processes is picked up at once, not at the next poll."""
        while not self._stopping:
            try:
                woken = await wait_for_wake(self.options.poll_interval)
            except StoreError as exc:
                self._store_failed(exc)
                await asyncio.sleep(min(1.0, self.options.poll_interval))
                continue
            if woken:
                self.kick()
                self.tasks.kick()

    def _store_failed(self, exc: Exception) -> None:
        if not self._store_failing:
            logger.warning("store unavailable, retrying: %s", exc)
            self._store_failing = True

    def _store_ok(self) -> None:
        if self._store_failing:
            logger.info("store reachable again")
            self._store_failing = False

    async def _expire_dead_local_workers(self) -> None:
        now = self.store.now()
        for w in await self.store.list_workers():
            if w.id == self.id:
                continue
            if w.expires_at < now - FORGET_DEAD_WORKERS_AFTER:
                await self.store.deregister_worker(w.id)  # long dead: forget its row
            elif w.host == self.host and w.expires_at >= now and not _pid_alive(w.pid):
                logger.info("worker %s (pid %d) is gone; taking over its work", w.id, w.pid)
                await self.store.expire_worker(w.id)

    def _check_isolation(self) -> None:
        """End the isolation of a suspect that left (ended, parked, dropped, not loaded) or
        has been running longer than a lease (it keeps its count; others get a turn)."""
        suspect = self._isolating
        if suspect is None:
            return
        gone = suspect not in self.live and suspect not in self._loading
        if gone or time.monotonic() - self._isolated_at > self.options.lease_seconds:
            self._isolating = None

    def _on_claim(self, claim: Claim) -> None:
        if claim.suspect:
            # Taken over before without progress since: run it alone until it progresses,
            # so if it kills this worker, the suspects still waiting are not blamed.
            self._isolating = claim.instance_id
            self._isolated_at = time.monotonic()
        inst = self.live.get(claim.instance_id)
        if inst is not None and inst.epoch == claim.epoch:
            inst.inbox_dirty = True
            self._kick(inst)
            return
        if inst is not None:
            self._drop(inst)
        if claim.instance_id not in self._loading:
            self._loading.add(claim.instance_id)
            self._spawn(self._load(claim))

    async def _load(self, claim: Claim) -> None:
        try:
            async with self._load_slots:
                await self._load_claimed(claim)
        except StoreError as exc:
            self._store_failed(exc)
        finally:
            self._loading.discard(claim.instance_id)

    async def _load_claimed(self, claim: Claim) -> None:
        if claim.instance_id in self.live:
            return
        rec = await self.store.get_instance(claim.instance_id)
        if rec is None or rec.owner != self.id or rec.epoch != claim.epoch:
            return
        if rec.status not in ACTIVE_STATUSES:
            return
        defn = self.registry.workflow(rec.name, rec.version)
        if defn is None:
            return
        if rec.recoveries > self.options.max_recoveries:
            await self._park_poison(rec.id, rec.epoch, rec.recoveries)
            return
        history = await self.store.load_history(rec.id, rec.run_id)
        if len(history) != rec.history_len:
            # Read after another worker took it over and advanced it: this copy's epoch is
            # stale, and running it would repeat a step the new owner already recorded.
            return
        started = history[0].event
        assert isinstance(started, ev.WorkflowStarted)
        try:
            inst = build_instance(
                instance_id=rec.id,
                run_id=rec.run_id,
                epoch=rec.epoch,
                defn=defn,
                started=started,
                start_time=history[0].time,
                converter=self.converter,
            )
            inst.unsaved = inst.run.replay(history)
            inst.saved_search = dict(rec.search_attributes or {})
        except (NonDeterminismError, EncodingError) as exc:
            logger.error("suspending workflow %s: %s", rec.id, exc)
            await self.committer.submit(Suspend(rec.id, self.id, rec.epoch, error_info(exc)))
            return
        inst.seq = len(history)
        if rec.id in self.live:  # loaded meanwhile by another path: keep that copy
            inst.run.close()
            return
        self.live[rec.id] = inst
        self._kick(inst)

    async def _reload(self, instance_id: str, run_id: str, epoch: int) -> None:
        """Reload an instance we still own after a failed write, once the store answers."""
        delay = 0.1
        while not self._stopping:
            await asyncio.sleep(delay)
            if instance_id in self._loading or instance_id in self.live:
                return  # the claim loop got to it first
            self._loading.add(instance_id)
            try:
                await self._load_claimed(Claim(instance_id, run_id, epoch, False))
            except StoreError as exc:
                self._store_failed(exc)
                delay = min(delay * 2, 5.0)
                continue
            finally:
                self._loading.discard(instance_id)
            self._store_ok()
            return

    async def _park_poison(self, instance_id: str, epoch: int, recoveries: int) -> None:
        """Park an instance whose workers keep dying while running it (dead letter)."""
        message = (
            f"taken over {recoveries} times from workers that died while running it "
            f"(limit {self.options.max_recoveries}); parked so the others keep flowing. "
            "Fix the cause, then resume() it"
        )
        logger.error("suspending poison workflow %s: %s", instance_id, message)
        error = {"type": "PoisonWorkflow", "message": message, "traceback": ""}
        await self.committer.submit(Suspend(instance_id, self.id, epoch, error))

    async def _park(self, instance_id: str, epoch: int, exc: Exception) -> None:
        try:
            await self.committer.submit(Suspend(instance_id, self.id, epoch, error_info(exc)))
        except StoreError as store_exc:
            self._store_failed(store_exc)

    # -- driving one instance ------------------------------------------------------------
    def _kick(self, inst: LiveInstance) -> None:
        if inst.driving is None and not inst.closed:
            inst.driving = self._spawn(self._drive(inst))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _drive(self, inst: LiveInstance) -> None:
        # Whether the last successful commit dispatched the instance with nothing awaited
        # since: then the dispatch below would only repeat it (once per step otherwise).
        dispatched = False
        try:
            while not inst.closed:
                if inst.inbox_dirty:
                    inst.inbox_dirty = False
                    dispatched = False  # a wake-up timer may fire during the read
                    for msg in await self.store.fetch_inbox(inst.id, inst.inbox_cursor):
                        inst.inbox_cursor = msg.id
                        inst.incoming.append(inbox_event(msg))
                if inst.adopted is not None and (inst.incoming or inst.unsaved):
                    self._spawn_adopted(inst)  # more to commit first: do not hold it back
                if not await self._step(inst):
                    if inst.id == self._isolating and not inst.run.activities:
                        # A suspect that settled (waiting for a timer, a signal...) without
                        # killing this worker: an empty step clears its recoveries.
                        self._isolating = None
                        dispatched = await self._commit(inst, [], self.clock.now())
                    break
                dispatched = True  # _step is true only after _commit dispatched
        except StoreError as exc:
            # The write may or may not have landed: rebuild the instance from the store.
            self._store_failed(exc)
            self._drop(inst)
            self._spawn(self._reload(inst.id, inst.run_id, inst.epoch))
        except Exception as exc:  # a bug must park the instance, not lose it
            logger.exception("internal error while driving workflow %s; suspending it", inst.id)
            self._drop(inst)
            self._spawn(self._park(inst.id, inst.epoch, exc))
        finally:
            inst.driving = None
        if not inst.closed and not dispatched:
            self._dispatch(inst)

    async def _step(self, inst: LiveInstance) -> bool:
        """Apply what is waiting and commit it; False when there was nothing to do."""
        run = inst.run
        now = self.clock.now()
        incoming, inst.incoming = inst.incoming, []
        acks, inst.acks = inst.acks, []
        incoming += inst.due_timer_events(now)
        timed_out = inst.deadline is not None and now >= inst.deadline and run.outcome is None
        new, inst.unsaved = inst.unsaved, []
        if not incoming and not new and not timed_out:
            inst.acks[:0] = acks
            return False
        try:
            return await self._apply_and_commit(inst, incoming, new, now, timed_out)
        finally:
            for ack in acks:
                if not ack.done():
                    ack.set_result(None)

    async def _apply_and_commit(
        self,
        inst: LiveInstance,
        incoming: list[ev.Event],
        new: list[ev.Event],
        now: float,
        timed_out: bool,
    ) -> bool:
        run = inst.run
        for event in incoming:
            if isinstance(
                event, ev.ActivityCompleted | ev.ActivityFailed | ev.ActivityAttemptFailed
            ):
                inst.activity_tasks.pop(event.cmd, None)
            if isinstance(event, UpdateRequest) and event.update_id in run.seen_updates:
                continue  # a retry of a decided update: its outcome is already recorded
            if isinstance(event, UpdateRequest):
                # Validated against the state as of this point in the batch, live only:
                # the decision is what gets recorded, so replay never re-runs validators.
                error = run.validate_update(event.name, event.args)
                event = (
                    ev.UpdateAccepted(update_id=event.update_id, name=event.name, args=event.args)
                    if error is None
                    else ev.UpdateRejected(update_id=event.update_id, name=event.name, error=error)
                )
            if run.outcome is None:
                new += run.apply(event, now)
        if timed_out and run.outcome is None:
            new += run.apply(ev.WorkflowTimedOut(timeout=run.started.timeout or 0.0), now)
        return await self._commit(inst, new, now)

    async def _commit(self, inst: LiveInstance, new: list[ev.Event], now: float) -> bool:
        op = self._build_commit(inst, new, now)
        result = await self.committer.submit(op)
        if not result.ok:
            logger.info("workflow %s was taken over or ended elsewhere; dropping it", inst.id)
            self._drop(inst)
            return False
        if inst.id == self._isolating:  # it progressed (the store reset its recoveries)
            self._isolating = None
            self.kick()
        inst.seq += len(new)
        inst.run.mark_committed(len(new))
        if op.search_attributes is not None:
            inst.saved_search = dict(op.search_attributes)
        children = False
        for event in new:
            if isinstance(event, ev.UpdateCompleted | ev.UpdateRejected):
                self._on_closed(update_key(event.update_id), None)
            elif isinstance(event, ev.ChildWorkflowStarted):
                children = True
        self._warn_long_history(inst)
        if children:
            self.kick()  # the children are unowned and due now: claim them here
        if op.effects and any(isinstance(e, EnqueueTask) for e in op.effects):
            self.tasks.kick()
        outcome = inst.run.outcome
        if outcome is not None and op.new_run is not None:
            self._drop(inst)
            started = op.new_run
            assert isinstance(started, ev.WorkflowStarted)
            self.adopt_new(
                inst.id,
                started.run_id,
                inst.epoch,
                inst.defn,
                started,
                now,
                inbox_cursor=inst.inbox_cursor,
            )
            return False
        if op.status is not None:  # ended, or parked for an operator
            # Committed, so waiters in this process may take the outcome from here
            # rather than read it back (a parked failure they read: it is not over).
            ending = (
                None if op.needs_intervention else Ending(op.status, inst.defn, op.output, op.error)
            )
            self._on_closed(inst.id, ending)
            self._drop(inst)
            return False
        if op.release:
            redeliver = inst.inbox_dirty or bool(inst.incoming)
            self._drop(inst)
            if redeliver:
                self.kick()
            return False
        self._dispatch(inst)
        return True

    def _build_commit(self, inst: LiveInstance, new: list[ev.Event], now: float) -> AppendEvents:
        """The one compare-and-set write recording a step, with its effects on others."""
        run = inst.run
        events = [(now, e) for e in new]
        effects = self._effects(inst, new)
        outcome = run.outcome
        search = None
        if run.search_attributes != inst.saved_search:
            search = dict(run.search_attributes)
        if outcome is None and run.intervention is not None and not run.intervention.done():
            return self._parked_commit(inst, new, events, effects, search)
        if outcome is None and inst.seq + len(new) >= self.options.history_limit:
            reason = (
                f"the run's history reached the limit of {self.options.history_limit} events; "
                "long-running workflows should call ctx.continue_as_new()"
            )
            logger.error("terminating workflow %s: %s", inst.id, reason)
            return AppendEvents(
                inst.id,
                self.id,
                inst.epoch,
                inst.seq,
                [*events, (now, ev.WorkflowTerminated(reason=reason))],
                status="terminated",
                error={"type": "HistoryLimitExceeded", "message": reason},
                inbox_upto=inst.inbox_cursor,
                effects=effects + self._parent_close_effects(inst),
                search_attributes=search,
            )
        if outcome is None:
            wake = inst.next_wake()
            return AppendEvents(
                inst.id,
                self.id,
                inst.epoch,
                inst.seq,
                events,
                wake_at=wake,
                release=self._should_release(inst, wake, now),
                inbox_upto=inst.inbox_cursor,
                current_step=inst.current_step(),
                effects=effects,
                search_attributes=search,
                active_status="compensating" if run.compensating else "running",
            )
        effects += self._parent_close_effects(inst)
        if isinstance(outcome.event, ev.WorkflowContinuedAsNew):
            started = ev.WorkflowStarted(
                name=inst.defn.name,
                version=inst.defn.version,
                input=outcome.event.input,
                run_id=outcome.event.new_run_id,
                timeout=run.started.timeout,
                previous_run_id=inst.run_id,
            )
            return AppendEvents(
                inst.id,
                self.id,
                inst.epoch,
                inst.seq,
                events,
                inbox_upto=inst.inbox_cursor,
                effects=effects,
                new_run=started,
            )
        output = outcome.event.result if isinstance(outcome.event, ev.WorkflowCompleted) else None
        if isinstance(outcome.event, ev.WorkflowFailed):
            error: dict[str, Any] | None = outcome.event.error
        elif isinstance(outcome.event, ev.WorkflowCompleted):
            error = None
        else:
            reason = str(getattr(outcome.event, "reason", "")) or outcome.status
            error = {"type": outcome.event.kind, "message": reason}
        return AppendEvents(
            inst.id,
            self.id,
            inst.epoch,
            inst.seq,
            events,
            status=outcome.status,
            output=output,
            error=error,
            inbox_upto=inst.inbox_cursor,
            effects=effects,
            search_attributes=search,
        )

    def _parked_commit(
        self,
        inst: LiveInstance,
        new: list[ev.Event],
        events: list[tuple[float, ev.Event]],
        effects: list[WriteOp],
        search: dict[str, Any] | None,
    ) -> AppendEvents:
        """A saga whose compensation failed: status ``failed`` until an operator reopens it."""
        parked = [e for e in new if isinstance(e, ev.InterventionRequired)]
        details: dict[str, Any] = {"type": "CompensationFailed", "message": "compensation failed"}
        if parked:
            details = {**parked[-1].error, "step": parked[-1].step, "step_name": parked[-1].name}
        details["needs_intervention"] = True
        return AppendEvents(
            inst.id,
            self.id,
            inst.epoch,
            inst.seq,
            events,
            status="failed",
            error=details,
            needs_intervention=True,
            inbox_upto=inst.inbox_cursor,
            effects=effects,
            search_attributes=search,
        )

    def _effects(self, inst: LiveInstance, new: list[ev.Event]) -> list[WriteOp]:
        """Writes to other instances that the new commands ask for."""
        effects: list[WriteOp] = []
        for event in new:
            task = self._task_for(inst, event)
            if task is not None:
                effects.append(task)
            elif isinstance(event, ev.ChildWorkflowStarted):
                child = self.registry.workflow(event.name, event.version)
                started = ev.WorkflowStarted(
                    name=event.name,
                    version=event.version,
                    input=event.input,
                    run_id=uuid.uuid4().hex,
                    timeout=child.timeout if child else None,
                )
                effects.append(
                    CreateInstance(
                        event.child_id,
                        event.name,
                        event.version,
                        started.run_id,
                        event.input,
                        started,
                        parent_id=inst.id,
                    )
                )
            elif isinstance(event, ev.ExternalSignalSent):
                effects.append(SendMessage(event.target_id, "signal", event.name, event.payload))
            elif isinstance(event, ev.ExternalCancelRequested):
                effects.append(SendMessage(event.target_id, "cancel", "", event.reason))
        return effects

    def _task_for(self, inst: LiveInstance, event: ev.Event) -> EnqueueTask | None:
        """The queue task that a queued activity's schedule (or retry) event calls for."""
        if isinstance(event, ev.ActivityScheduled):
            cmd, attempt, not_before, details = event.cmd, 1, 0.0, None
        elif isinstance(event, ev.ActivityAttemptFailed):
            cmd, attempt, not_before = event.cmd, event.attempt + 1, event.retry_at
            details = event.details
        else:
            return None
        act = inst.run.activities.get(cmd)
        queue = act.options.get("queue") if act is not None else None
        if act is None or not queue:
            return None
        options = {**act.options, "scheduled_at": act.scheduled_at, "heartbeat_details": details}
        return EnqueueTask(
            f"{inst.run_id}:{cmd}:{attempt}",
            str(queue),
            inst.id,
            inst.run_id,
            cmd,
            attempt,
            act.name,
            act.input,
            options,
            int(act.options.get("priority") or 0),
            not_before,
        )

    def _parent_close_effects(self, inst: LiveInstance) -> list[WriteOp]:
        """What the parent-close policy does to children still running."""
        effects: list[WriteOp] = []
        reason = f"parent workflow {inst.id!r} ended"
        for child in inst.run.open_children():
            if child.parent_close == "terminate":
                effects.append(Terminate(child.child_id, ev.WorkflowTerminated(reason=reason)))
            elif child.parent_close == "cancel":
                effects.append(SendMessage(child.child_id, "cancel", "", reason))
        return effects

    def _warn_long_history(self, inst: LiveInstance) -> None:
        limit = self.options.history_warning
        if inst.seq >= limit and not inst.warned_long_history:
            inst.warned_long_history = True
            logger.warning(
                "workflow %s has %d events in its current run; consider ctx.continue_as_new() "
                "to bound replay time and memory",
                inst.id,
                inst.seq,
            )

    def _should_release(self, inst: LiveInstance, wake: float | None, now: float) -> bool:
        if inst.activity_tasks or inst.incoming or inst.inbox_dirty:
            return False
        horizon = now + self.options.sticky_seconds
        if any(
            (a.retry_at is None or a.retry_at <= horizon) and not a.options.get("queue")
            for a in inst.run.activities.values()
        ):
            return False
        if len(self.live) > self.options.max_cached:
            return True
        return wake is not None and wake > horizon

    def _dispatch(self, inst: LiveInstance) -> None:
        """Start activities that are durably scheduled and arm the wake-up timer."""
        if inst.closed or inst.unsaved:
            return
        run = inst.run
        if inst.activity_tasks:
            for cmd in [c for c in inst.activity_tasks if c not in run.activities]:
                task = inst.activity_tasks.pop(cmd)  # abandoned by the workflow
                if cmd == inst.adopted:
                    inst.adopted = None  # set aside by the task driving now: never started
                else:
                    task.cancel()
        if not self._draining and run.activities:
            now = self.clock.now()
            adopter = inst.adopter
            if adopter is not None and adopter is not asyncio.current_task():
                adopter = None
            for cmd, act in run.activities.items():
                if cmd in inst.activity_tasks or cmd in inst.retry_handles:
                    continue
                if act.options.get("queue"):
                    continue  # a task in its queue; its outcome arrives through the inbox
                if act.retry_at is not None and act.retry_at > now:
                    inst.retry_handles[cmd] = self.clock.call_at(
                        act.retry_at, functools.partial(self._retry_due, inst, cmd)
                    )
                elif adopter is not None and inst.adopted is None:
                    # The activity task driving this instance runs it once its drive
                    # ends: a sequential workflow needs no new task per step.
                    inst.adopted = cmd
                    inst.activity_tasks[cmd] = adopter
                else:
                    inst.activity_tasks[cmd] = self._spawn(self._run_activity(inst, cmd))
        if inst.wake_handle is not None:
            inst.wake_handle.cancel()
            inst.wake_handle = None
        if not run.timers and inst.deadline is None:
            return  # nothing to wake up for (most steps)
        timer_times = [t.fire_at for t in run.timers.values()]
        if inst.deadline is not None:
            timer_times.append(inst.deadline)
        inst.wake_handle = self.clock.call_at(min(timer_times), lambda: self._kick(inst))

    def _retry_due(self, inst: LiveInstance, cmd: int) -> None:
        inst.retry_handles.pop(cmd, None)
        act = inst.run.activities.get(cmd)
        if act is not None and not inst.closed:
            act.retry_at = None
            self._dispatch(inst)

    async def _run_activity(self, inst: LiveInstance, cmd: int) -> None:
        """Run activity ``cmd``, then any activity this task adopted while driving."""
        next_cmd: int | None = cmd
        while next_cmd is not None:
            next_cmd = await self._run_one_activity(inst, next_cmd)

    def _spawn_adopted(self, inst: LiveInstance) -> None:
        """Start the set-aside activity in a task of its own (the drive goes on)."""
        cmd, inst.adopted = inst.adopted, None
        if cmd is not None and inst.activity_tasks.get(cmd) is inst.adopter:
            inst.activity_tasks[cmd] = self._spawn(self._run_activity(inst, cmd))

    async def _run_one_activity(self, inst: LiveInstance, cmd: int) -> int | None:
        """Run one attempt and record it; returns an activity adopted meanwhile."""
        act = inst.run.activities.get(cmd)
        if act is None:
            return None
        # The slot is held until the outcome is committed, so a crash loses at most
        # ``max_concurrent_activities`` finished-but-unrecorded results.
        async with self._activity_slots:
            event = await execute_attempt(
                self.registry.activity(act.name),
                act,
                instance_id=inst.id,
                run_id=inst.run_id,
                converter=self.converter,
                executor=self._executor,
                now=self.clock.now,
                worker_id=self.id,
                lease_epoch=inst.epoch,
            )
            faults.point("activity.after_result")
            if inst.closed:
                return None
            inst.incoming.append(event)
            if inst.driving is not None:
                ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                inst.acks.append(ack)
                await ack
                return None
            # Drive the instance from this task rather than spawning another one: the
            # result is applied and committed without an extra trip through the loop.
            inst.driving = inst.adopter = asyncio.current_task()
            try:
                await self._drive(inst)
            finally:
                inst.adopter = None
        cmd_next, inst.adopted = inst.adopted, None
        if cmd_next is None or inst.closed or self._draining:
            if cmd_next is not None and not inst.closed:
                inst.activity_tasks.pop(cmd_next, None)  # shutting down: not started
            return None
        return cmd_next

    def _drop(self, inst: LiveInstance) -> None:
        if self.live.get(inst.id) is inst:
            del self.live[inst.id]
            # In-process waiters on a live instance read the store only when told: it
            # ended, or left this worker (evicted, fenced off) and must be watched there.
            self._on_closed(inst.id, None)
        if not inst.closed:
            inst.cancel_everything()


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ended, as its final write committed it (told to waiters in-process)."""

    status: str
    defn: WorkflowDefinition[Any, Any]
    output: Any
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UpdateRequest(ev.Event):
    """An update waiting in the inbox; validated into UpdateAccepted/Rejected when applied."""

    update_id: str
    name: str
    args: list[Any]


def update_key(update_id: str) -> str:
    """The key under which the engine announces an update's outcome in-process."""
    return f"update:{update_id}"


def inbox_event(msg: InboxMessage) -> ev.Event:
    """The history event that records an inbox message's delivery."""
    if msg.kind == TASK_MESSAGE:
        data = dict(msg.payload or {})
        return ev.event_from_data(str(data.pop("type")), data)
    if msg.kind == "intervention":
        return ev.InterventionResolved()
    if msg.kind == "update":
        payload = msg.payload or {}
        return UpdateRequest(
            update_id=str(payload.get("id", "")), name=msg.name, args=list(payload.get("args", []))
        )
    if msg.kind == "signal":
        return ev.SignalReceived(name=msg.name, payload=msg.payload)
    if msg.kind == CHILD_MESSAGE:
        payload = msg.payload or {}
        return ev.ChildWorkflowCompleted(
            child_id=msg.name,
            status=str(payload.get("status", "failed")),
            result=payload.get("output"),
            error=payload.get("error"),
        )
    return ev.CancelRequested(reason=str(msg.payload or ""))


def served_names(defs: Sequence[WorkflowDefinition[Any, Any]]) -> list[str]:
    """The workflow names a worker claims."""
    return sorted({d.name for d in defs})
