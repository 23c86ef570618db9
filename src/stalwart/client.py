"""The engine (client and, optionally, worker) and workflow handles."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import inspect
import logging
import signal
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from stalwart._engine.events import (
    HistoryEvent,
    UpdateCompleted,
    UpdateRejected,
    WorkflowContinuedAsNew,
    WorkflowStarted,
    WorkflowTerminated,
)
from stalwart._engine.run import WorkflowRun
from stalwart.codec import Codec, TypeConverter
from stalwart.decorators import (
    ActivityDefinition,
    Registry,
    WorkflowDefinition,
    WorkflowInvocation,
    default_registry,
)
from stalwart.errors import (
    ConfigurationError,
    EncodingError,
    StalwartError,
    UnknownHandlerError,
    UpdateFailedError,
    WorkflowAlreadyStartedError,
    WorkflowClosedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowNotRegisteredError,
)
from stalwart.ids import validate_instance_id
from stalwart.operations import CompatReport, bulk, check_compat, fork
from stalwart.queues import Queue
from stalwart.retry import RetryPolicy
from stalwart.runtime.clock import Clock, RealClock
from stalwart.runtime.committer import GroupCommitter
from stalwart.runtime.instance import build_instance
from stalwart.runtime.options import WorkerOptions
from stalwart.runtime.worker import Ending, Worker, update_key
from stalwart.saga import ALERT_ACTIVITY
from stalwart.steps import StepInfo, steps_from_history
from stalwart.store import open_store
from stalwart.store.base import (
    ALL_STATUSES,
    TERMINAL_STATUSES,
    CreateInstance,
    InstanceRecord,
    ListFilter,
    Reopen,
    Resume,
    SendMessage,
    Store,
    Terminate,
    WorkerRecord,
)
from stalwart.webhook import post_json

R = TypeVar("R")
logger = logging.getLogger("stalwart")


@dataclass(frozen=True, slots=True)
class WorkflowDescription:
    """What ``handle.describe()`` and ``engine.list()`` report about an instance."""

    id: str
    name: str
    version: int
    status: str
    run_id: str
    created_at: datetime
    updated_at: datetime
    current_step: str | None
    error: dict[str, Any] | None
    owner: str | None
    history_length: int
    wake_at: datetime | None
    needs_intervention: bool = False
    parent_id: str | None = None
    children: list[str] = dataclasses.field(default_factory=list)
    search_attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Ids of child workflows (the 100 newest), filled in by ``describe()``."""
    unserved: str | None = None
    """Set when the instance waits for a worker that does not exist: no live worker runs
    its workflow name and version (for example after a deploy removed that version)."""

    @classmethod
    def from_record(
        cls, rec: InstanceRecord, workers: Sequence[WorkerRecord] = ()
    ) -> WorkflowDescription:
        """Build from a stored instance record (``workers``: the live workers)."""
        return cls(
            id=rec.id,
            name=rec.name,
            version=rec.version,
            status=rec.status,
            run_id=rec.run_id,
            created_at=_dt(rec.created_at),
            updated_at=_dt(rec.updated_at),
            current_step=rec.current_step,
            error=rec.error,
            owner=rec.owner,
            history_length=rec.history_len,
            wake_at=_dt(rec.wake_at) if rec.wake_at is not None else None,
            parent_id=rec.parent_id,
            needs_intervention=rec.needs_intervention,
            search_attributes=dict(rec.search_attributes or {}),
            unserved=_unserved(rec, workers),
        )


def _unserved(rec: InstanceRecord, workers: Sequence[WorkerRecord]) -> str | None:
    if rec.status in TERMINAL_STATUSES:
        return None
    if any(f"{rec.name}@{rec.version}" in w.serves for w in workers):
        return None
    others = sorted({s for w in workers for s in w.serves if s.startswith(f"{rec.name}@")})
    where = f"; live workers serve {', '.join(others)}" if others else ""
    return f"no live worker serves {rec.name!r} version {rec.version}{where}"


@dataclass(frozen=True, slots=True)
class WorkflowList:
    """A page of instances; pass ``next_cursor`` to ``engine.list`` for the next page."""

    items: list[WorkflowDescription]
    next_cursor: str | None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@dataclass(frozen=True, slots=True)
class _Flow:
    queue: str | None = None
    priority: int = 0
    dedup_key: str | None = None


def _timestamp(value: datetime | None, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ConfigurationError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.timestamp()


class Engine:
    """Starts, inspects and (unless ``worker=False``) runs durable workflows.

    ``url`` picks the store: ``sqlite:///path.db`` (the default is ``./stalwart.db``) or
    ``memory://``. Use it as an async context manager::

        async with Engine("sqlite:///app.db") as engine:
            receipt = await process_order.run(engine, order, id="order-1")

    ``workflows`` / ``activities`` restrict the engine to explicit definitions; by
    default it serves everything decorated in imported modules.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        worker: bool = True,
        workflows: Sequence[WorkflowDefinition[Any, Any]] | None = None,
        activities: Sequence[ActivityDefinition[Any, Any]] | None = None,
        codec: Codec | None = None,
        options: WorkerOptions | None = None,
        clock: Clock | None = None,
        alert_hook: Callable[[dict[str, Any]], Any] | None = None,
        alert_webhook: str | None = None,
        queues: Sequence[Queue] = (),
    ) -> None:
        self.url = url
        self.alert_hook = alert_hook
        self.alert_webhook = alert_webhook
        self.registry = _build_registry(workflows, activities)
        self.registry.replace_activity(
            ActivityDefinition(
                self._fire_alert,
                name=ALERT_ACTIVITY,
                retry=RetryPolicy(max_attempts=5, initial_interval=1.0),
            )
        )
        self.options = options or WorkerOptions()
        if queues:
            served = {q.name: q for q in (*self.options.queues, *queues)}
            self.options = dataclasses.replace(self.options, queues=tuple(served.values()))
        self.converter = TypeConverter(
            max_bytes=self.options.max_payload_bytes, warn_bytes=self.options.warn_payload_bytes
        )
        self.clock: Clock = clock or RealClock()
        self._codec = codec
        self._want_worker = worker
        self._store: Store | None = None
        self._committer: GroupCommitter | None = None
        self.worker: Worker | None = None
        self._closed_events: dict[str, _ClosedSignal] = {}
        self._stop_requested: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store (applying migrations) and start the worker if enabled."""
        if self._store is not None:
            return
        # With the real clock the store keeps its own (PostgreSQL: the database's clock).
        store_clock = time.time if isinstance(self.clock, RealClock) else self.clock.now
        store = open_store(self.url, codec=self._codec, clock=store_clock)
        await store.open()
        self._store = store
        self._committer = GroupCommitter(store, max_batch=self.options.commit_batch)
        self._committer.start()
        if self._want_worker:
            self.worker = Worker(
                store=store,
                committer=self._committer,
                registry=self.registry,
                converter=self.converter,
                clock=self.clock,
                options=self.options,
                on_closed=self._instance_closed,
            )
            await self.worker.start()

    async def close(self) -> None:
        """Stop the worker gracefully (handing back unfinished work) and close the store."""
        if self._store is None:
            return
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        if self._committer is not None:
            await self._committer.close()
        await self._store.close()
        self._store = None

    @property
    def codec(self) -> Codec | None:
        """The codec given to the engine (``None``: the default JSON codec)."""
        return self._codec

    @property
    def store(self) -> Store:
        """The open store (raises if the engine is not open)."""
        if self._store is None:
            raise StalwartError("the engine is not open: use 'async with Engine(...)'")
        return self._store

    @property
    def committer(self) -> GroupCommitter:
        """The group committer shared by the client and the worker."""
        if self._committer is None:
            raise StalwartError("the engine is not open: use 'async with Engine(...)'")
        return self._committer

    async def run_worker(self) -> None:
        """Run the worker until SIGINT/SIGTERM or :meth:`request_stop`."""
        if not self._want_worker:
            raise ConfigurationError("this engine was created with worker=False")
        # Handlers first: a SIGTERM while the store opens (migrations, registration) is a
        # graceful stop too, not the default action that kills the process.
        self._stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop_requested.set)
        try:
            await self.open()
            await self._stop_requested.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        """Ask :meth:`run_worker` to return (the engine then closes gracefully)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    # -- starting ----------------------------------------------------------------------
    async def start(
        self,
        invocation: WorkflowInvocation[R],
        *,
        id: str | None = None,
        version: int | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
    ) -> WorkflowHandle[R]:
        """Start ``wf(args...)`` (idempotent on ``id``) and return its typed handle.

        The instance runs the definition's version, or ``version`` when given (another
        registered version of the same name). With ``queue`` it waits for that queue's
        concurrency and rate limits before it first runs (``priority``: higher first);
        ``dedup_key`` refuses the start while another active instance holds the same key.
        """
        defn = invocation.workflow
        if version is not None and version != defn.version:
            pinned = self.registry.workflow(defn.name, version)
            if pinned is None:
                raise WorkflowNotRegisteredError(defn.name, version)
            defn = pinned
        data = defn.signature.encode_args(self.converter, invocation.args, invocation.kwargs)
        return await self._create(
            defn.name,
            defn.version,
            data,
            defn.timeout,
            id,
            defn,
            flow=_Flow(queue, priority, dedup_key),
        )

    async def start_by_name(
        self,
        name: str,
        input: list[Any],
        *,
        id: str | None = None,
        version: int | None = None,
    ) -> WorkflowHandle[Any]:
        """Start a workflow by name with JSON arguments (used by the CLI).

        New instances take the latest registered version unless ``version`` pins one.
        When the workflow is registered here its arguments are checked against its
        parameter types; otherwise they are stored as given for a worker that knows it.
        """
        if not isinstance(input, list):
            raise EncodingError("workflow input must be a JSON list of arguments")
        defn = self.registry.workflow(name, version)
        if defn is None:
            if version is not None and self.registry.versions(name):
                raise WorkflowNotRegisteredError(name, version)
            data = self.converter.to_data(input, list[Any], path=f"{name} input")
            return await self._create(name, version or 1, data, None, id, None)
        values = defn.signature.decode_args(self.converter, input)
        data = defn.signature.encode_args(self.converter, values, {})
        return await self._create(name, defn.version, data, defn.timeout, id, defn)

    async def _create(
        self,
        name: str,
        version: int,
        data: list[Any],
        timeout: float | None,
        instance_id: str | None,
        defn: WorkflowDefinition[Any, Any] | None,
        flow: _Flow | None = None,
    ) -> WorkflowHandle[Any]:
        flow = flow or _Flow()
        instance_id = (
            validate_instance_id(instance_id) if instance_id is not None else (uuid.uuid4().hex)
        )
        run_id = uuid.uuid4().hex
        started = WorkflowStarted(
            name=name, version=version, input=data, run_id=run_id, timeout=timeout
        )
        if defn is not None and defn.deprecated:
            warnings.warn(
                f"workflow {name!r} version {version} is deprecated; start another version",
                DeprecationWarning,
                stacklevel=3,
            )
        worker = self.worker
        local = (
            worker is not None
            and defn is not None
            and self.registry.workflow(name, version) is defn
            and flow.queue is None  # queued starts wait for a claim within the queue's limits
        )
        outcome = await self.committer.submit(
            CreateInstance(
                instance_id,
                name,
                version,
                run_id,
                data,
                started,
                owner=worker.id if local and worker is not None else None,
                queue=flow.queue,
                priority=flow.priority,
                dedup_key=flow.dedup_key,
            )
        )
        rec = outcome.record
        assert rec is not None
        if outcome.error == "duplicate":
            raise WorkflowAlreadyStartedError(
                instance_id,
                f"instance {rec.id!r} is active with deduplication key {flow.dedup_key!r}",
            )
        if not outcome.created:
            if rec.name != name:
                raise WorkflowAlreadyStartedError(
                    instance_id, f"it is a {rec.name!r} workflow, not {name!r}"
                )
            if rec.input != data:
                raise WorkflowAlreadyStartedError(instance_id, "it was started with other input")
        elif local and worker is not None and defn is not None:
            worker.adopt_new(instance_id, run_id, rec.epoch, defn, started, rec.created_at)
        elif worker is not None:
            worker.kick()
        return WorkflowHandle(self, instance_id, defn)

    # -- inspecting --------------------------------------------------------------------
    def get_handle(self, instance_id: str) -> WorkflowHandle[Any]:
        """A handle to an existing instance (its result is decoded if the workflow is
        registered here)."""
        return WorkflowHandle(self, instance_id, None)

    async def list(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        version: int | None = None,
        parent: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        search: dict[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> WorkflowList:
        """Instances, newest first, filtered by name, status, version, parent and creation
        time (``created_after`` inclusive, ``created_before`` exclusive), paged by cursor."""
        if status is not None and status not in ALL_STATUSES:
            raise ConfigurationError(
                f"unknown status {status!r}; expected one of {', '.join(ALL_STATUSES)}"
            )
        if not isinstance(limit, int) or limit < 1 or limit > 10_000:
            raise ConfigurationError(f"limit must be between 1 and 10000, got {limit!r}")
        flt = ListFilter(
            name=name,
            status=status,
            version=version,
            parent_id=parent,
            created_after=_timestamp(created_after, "created_after"),
            created_before=_timestamp(created_before, "created_before"),
            search=dict(search) if search else None,
        )
        page = await self.store.list_instances(flt, limit=limit, cursor=cursor)
        workers = await self.live_workers()
        return WorkflowList(
            [WorkflowDescription.from_record(r, workers) for r in page.items], page.next_cursor
        )

    async def check_compat(self, *, name: str | None = None) -> builtins.list[CompatReport]:
        """Replay every in-flight instance (pending, running, suspended) on this engine's
        code and report each one that would diverge, with the event index and the call
        that differs. Run it against the new code before a deploy."""
        return await check_compat(self, name=name)

    async def bulk(
        self,
        action: str,
        *,
        name: str | None = None,
        status: str | None = None,
        version: int | None = None,
        reason: str = "",
        from_step: int = 0,
    ) -> builtins.list[str]:
        """``resume``, ``cancel`` or ``fork`` every instance matching the filter."""
        flt = ListFilter(name=name, status=status, version=version)
        return await bulk(self, action, flt, reason=reason, from_step=from_step)

    async def live_workers(self) -> Sequence[WorkerRecord]:
        """Workers whose lease has not expired."""
        now = self.store.now()
        return [w for w in await self.store.list_workers() if w.expires_at >= now]

    async def _fire_alert(self, alert: dict[str, Any]) -> None:
        """Run the saga alert hooks (the ``stalwart.saga_alert`` activity of this engine)."""
        if self.alert_hook is not None:
            outcome = self.alert_hook(alert)
            if inspect.isawaitable(outcome):
                await outcome
        if self.alert_webhook is not None:
            await asyncio.to_thread(post_json, self.alert_webhook, alert)
        if self.alert_hook is None and self.alert_webhook is None:
            logger.error(
                "saga %s needs intervention: compensation %r of step #%s failed: %s",
                alert.get("instance_id"),
                alert.get("compensation"),
                alert.get("step"),
                (alert.get("error") or {}).get("message"),
            )

    # -- internal notifications ----------------------------------------------------------
    def _instance_closed(self, instance_id: str, ending: Ending | None = None) -> None:
        event = self._closed_events.get(instance_id)
        if event is not None:
            if ending is not None:
                event.ending = ending
            event.set()

    def _closed_event(self, instance_id: str) -> _ClosedSignal:
        event = self._closed_events.get(instance_id)
        if event is None:
            event = self._closed_events[instance_id] = _ClosedSignal()
        return event


class _ClosedSignal(asyncio.Event):
    """Set when an instance (or an update) may have closed; carries the run's ending
    when this process's worker committed it, so waiters need not read it back."""

    def __init__(self) -> None:
        super().__init__()
        self.ending: Ending | None = None


def _build_registry(
    workflows: Sequence[WorkflowDefinition[Any, Any]] | None,
    activities: Sequence[ActivityDefinition[Any, Any]] | None,
) -> Registry:
    registry = Registry()
    for wf in workflows if workflows is not None else default_registry.workflows():
        if not isinstance(wf, WorkflowDefinition):
            raise ConfigurationError(f"workflows= takes @workflow functions, got {wf!r}")
        registry.add_workflow(wf)
    for act in activities if activities is not None else default_registry.activities():
        if not isinstance(act, ActivityDefinition):
            raise ConfigurationError(f"activities= takes @activity functions, got {act!r}")
        registry.add_activity(act)
    registry.check_unique()
    return registry


class WorkflowHandle(Generic[R]):
    """A reference to one workflow instance, by id."""

    def __init__(
        self, engine: Engine, instance_id: str, defn: WorkflowDefinition[Any, R] | None
    ) -> None:
        self.engine = engine
        self.id = instance_id
        self._defn = defn

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id!r}>"

    async def _record(self) -> InstanceRecord:
        rec = await self.engine.store.get_instance(self.id)
        if rec is None:
            raise WorkflowNotFoundError(self.id)
        return rec

    async def exists(self) -> bool:
        """Whether the instance exists."""
        return await self.engine.store.get_instance(self.id) is not None

    async def status(self) -> str:
        """The instance's status (``pending``, ``running``, ``suspended``, ``completed``...)."""
        return (await self._record()).status

    async def describe(self) -> WorkflowDescription:
        """Name, version, status, timestamps, current step and error of the instance."""
        rec = await self._record()
        desc = WorkflowDescription.from_record(rec, await self.engine.live_workers())
        children = await self.engine.store.list_instances(ListFilter(parent_id=rec.id), limit=100)
        return dataclasses.replace(desc, children=[c.id for c in children.items])

    async def history(self) -> list[HistoryEvent]:
        """The current run's events, in order."""
        rec = await self._record()
        return await self.engine.store.load_history(rec.id, rec.run_id)

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run to end and return its typed result.

        Raises :class:`WorkflowFailedError` if it failed, was cancelled, terminated or
        timed out, and :class:`TimeoutError` if ``timeout`` seconds pass first.
        """
        if timeout is None:
            status, defn, output, error = await self._wait_closed()
        else:
            status, defn, output, error = await asyncio.wait_for(self._wait_closed(), timeout)
        if status == "completed":
            if defn is None:
                value: R = output
                return value
            decoded: R = defn.signature.decode_result(self.engine.converter, output)
            return decoded
        err = error or {}
        raise WorkflowFailedError(
            self.id,
            status,
            str(err.get("message", "")),
            error_type=str(err.get("type", "")),
            traceback=str(err.get("traceback", "")),
        )

    async def _wait_closed(
        self,
    ) -> tuple[str, WorkflowDefinition[Any, R] | None, Any, dict[str, Any] | None]:
        """The run's end: status, definition (None: not registered here), output, error."""
        # An instance live in this process's worker announces in-process when it ends or
        # leaves the worker, so it is not polled (a re-read once per lease is the safety
        # net); when that worker committed the end, the announcement carries it. Others
        # are polled with a backoff.
        event = self.engine._closed_event(self.id)
        worker = self.engine.worker
        safety = max(self.engine.options.lease_seconds, self.engine.options.poll_interval)
        delay = 0.005
        read = worker is None or self.id not in worker.live
        try:
            while True:
                ending = event.ending
                if ending is not None:
                    return ending.status, self._defn or ending.defn, ending.output, ending.error
                if read:
                    rec = await self._record()
                    if rec.status in TERMINAL_STATUSES:
                        defn = self._defn or self.engine.registry.workflow(rec.name, rec.version)
                        return rec.status, defn, rec.output, rec.error
                read = True
                local = worker is not None and self.id in worker.live
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(safety if local else delay):
                        await event.wait()
                event.clear()
                delay = min(delay * 2, 0.5)
        finally:
            self.engine._closed_events.pop(self.id, None)

    async def signal(self, name: str, payload: Any = None) -> None:
        """Deliver a signal; once this returns the signal is durably accepted.

        Raises :class:`WorkflowNotFoundError` or :class:`WorkflowClosedError`.
        """
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ConfigurationError(f"signal name must be a non-empty string, got {name!r}")
        data = self.engine.converter.to_data(payload, Any, path=f"signal {name!r} payload")
        await self._send("signal", name, data)

    async def cancel(self, reason: str = "") -> None:
        """Ask the workflow to cancel: ``stalwart.Cancelled`` is raised at its current
        await. Cancelling an instance that already ended does nothing."""
        try:
            await self._send("cancel", "", reason)
        except WorkflowClosedError:
            return

    async def _send(self, kind: str, name: str, payload: Any) -> None:
        outcome = await self.engine.committer.submit(SendMessage(self.id, kind, name, payload))
        if outcome.error == "not_found":
            raise WorkflowNotFoundError(self.id)
        if outcome.error == "closed":
            status = outcome.record.status if outcome.record else "closed"
            raise WorkflowClosedError(self.id, status)
        if self.engine.worker is not None:
            self.engine.worker.notify(self.id)

    async def terminate(self, reason: str = "") -> None:
        """End the instance at once; no workflow code runs (already ended: no-op)."""
        outcome = await self.engine.committer.submit(
            Terminate(self.id, WorkflowTerminated(reason=reason))
        )
        if outcome.error == "not_found":
            raise WorkflowNotFoundError(self.id)
        if outcome.ok:
            if self.engine.worker is not None:
                self.engine.worker.forget(self.id)
            self.engine._instance_closed(self.id)

    async def query(self, name: str, *args: Any) -> Any:
        """Ask the workflow's query handler ``name``; nothing is recorded.

        Answered from the instance's current state: directly when this process runs it,
        otherwise by replaying its history here (the workflow must be registered in this
        engine). Raises :class:`UnknownHandlerError` for an unknown name.
        """
        data = [self.engine.converter.to_data(a, Any, path=f"query {name!r}") for a in args]
        async with self._current_run() as run:
            return run.query(name, data)

    async def update(
        self,
        name: str,
        *args: Any,
        timeout: float | None = None,
        update_id: str | None = None,
    ) -> Any:
        """Send an update and wait for the handler's result (or its error).

        The validator runs before anything is recorded: a refused update raises
        :class:`UpdateFailedError` with ``rejected=True``; a handler that raises gives
        ``rejected=False``. Unknown names raise :class:`UnknownHandlerError`.

        A ``TimeoutError`` does not withdraw the request. To retry safely, pass your own
        ``update_id``: a repeated id is applied once and returns the first call's outcome.
        """
        data = [self.engine.converter.to_data(a, Any, path=f"update {name!r}") for a in args]
        defn = self._defn
        rec = await self._record()
        if update_id is not None:
            validate_instance_id(update_id)
            done = await self._find_decided_update(update_id, rec.run_id)
            if done is not None:
                return self._update_result(name, done)
        if defn is not None or self.engine.registry.workflow(rec.name, rec.version) is not None:
            # Check the request against the current state first, so a bad request is
            # refused without touching the store.
            async with self._current_run() as run:
                error = run.validate_update(name, data)
            if error is not None:
                self._raise_update_error(name, error, rejected=True)
        update_id = update_id or uuid.uuid4().hex
        await self._send("update", name, {"id": update_id, "args": data})
        outcome = await asyncio.wait_for(self._wait_update(update_id, rec.run_id), timeout)
        return self._update_result(name, outcome)

    def _update_result(self, name: str, outcome: UpdateCompleted | UpdateRejected) -> Any:
        if isinstance(outcome, UpdateRejected):
            self._raise_update_error(name, outcome.error, rejected=True)
        assert isinstance(outcome, UpdateCompleted)
        if outcome.error is not None:
            self._raise_update_error(name, outcome.error, rejected=False)
        return outcome.result

    def _raise_update_error(self, name: str, error: dict[str, Any], *, rejected: bool) -> None:
        if error.get("type") == "UnknownHandlerError":
            raise UnknownHandlerError(str(error.get("message", "")))
        raise UpdateFailedError(
            self.id,
            name,
            str(error.get("type", "")),
            str(error.get("message", "")),
            rejected=rejected,
        )

    async def _wait_update(self, update_id: str, run_id: str) -> UpdateCompleted | UpdateRejected:
        key = update_key(update_id)
        event = self.engine._closed_event(key)
        delay = 0.005
        try:
            while True:
                found = await self._find_update(update_id, run_id)
                if found is not None:
                    return found
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await event.wait()
                event.clear()
                delay = min(delay * 2, 0.5)
        finally:
            self.engine._closed_events.pop(key, None)

    async def _find_decided_update(
        self, update_id: str, run_id: str, *, runs: int = 20
    ) -> UpdateCompleted | UpdateRejected | None:
        """An update decided in this run or one of the ``runs`` runs it continues."""
        return await self._search_runs(update_id, run_id, backward=True, runs=runs)

    async def _find_update(
        self, update_id: str, run_id: str
    ) -> UpdateCompleted | UpdateRejected | None:
        """The outcome of an update sent during run ``run_id``, following continue-as-new."""
        return await self._search_runs(update_id, run_id, backward=False, runs=1_000)

    async def _search_runs(
        self, update_id: str, run_id: str | None, *, backward: bool, runs: int
    ) -> UpdateCompleted | UpdateRejected | None:
        """Look for an update's outcome run by run, towards older or newer runs."""
        store = self.engine.store
        for _ in range(runs):
            if run_id is None:
                return None
            history = await store.load_history(self.id, run_id)
            for item in history:
                found = item.event
                if (
                    isinstance(found, UpdateCompleted | UpdateRejected)
                    and found.update_id == update_id
                ):
                    return found
            if not history:
                return None
            edge = history[0].event if backward else history[-1].event
            if backward:
                run_id = edge.previous_run_id if isinstance(edge, WorkflowStarted) else None
            else:
                run_id = edge.new_run_id if isinstance(edge, WorkflowContinuedAsNew) else None
        return None

    @contextlib.asynccontextmanager
    async def _current_run(self) -> AsyncIterator[WorkflowRun]:
        """The instance's run as of now: the live one here, or one rebuilt by replay."""
        worker = self.engine.worker
        live = worker.live.get(self.id) if worker is not None else None
        if live is not None and not live.closed:
            yield live.run
            return
        rec = await self._record()
        defn = self.engine.registry.workflow(rec.name, rec.version)
        if defn is None:
            raise WorkflowNotRegisteredError(rec.name, rec.version)
        history = await self.engine.store.load_history(rec.id, rec.run_id)
        started = history[0].event
        assert isinstance(started, WorkflowStarted)
        inst = build_instance(
            instance_id=rec.id,
            run_id=rec.run_id,
            epoch=rec.epoch,
            defn=defn,
            started=started,
            start_time=history[0].time,
            converter=self.engine.converter,
        )
        try:
            inst.run.replay(history)
            yield inst.run
        finally:
            inst.run.close()

    async def steps(self) -> builtins.list[StepInfo]:
        """Each step (activity call) of the current run with its status (``pending``,
        ``running``, ``completed``, ``failed``, ``compensating``, ``compensated``,
        ``skipped``), attempts, timings, result or error, and its compensation."""
        return steps_from_history(await self.history())

    async def retry_compensation(self) -> bool:
        """Resume a saga parked as ``failed`` with ``needs_intervention`` (after fixing the
        cause): its compensation is retried. False if it was not parked."""
        outcome = await self.engine.committer.submit(Reopen(self.id))
        if outcome.error == "not_found":
            raise WorkflowNotFoundError(self.id)
        if outcome.ok and self.engine.worker is not None:
            self.engine.worker.kick()
        return outcome.ok

    async def fork(
        self, from_step: int, *, id: str | None = None, version: int | None = None
    ) -> WorkflowHandle[R]:
        """Start a new instance that reuses this one's results before step ``from_step``
        (a command number, ``#n`` in the history) and re-executes the rest on the current
        code. Returns the new instance's handle."""
        handle: WorkflowHandle[R] = await fork(
            self.engine, self.id, from_step, new_id=id, version=version
        )
        return handle

    async def resume(self) -> bool:
        """Retry a ``suspended`` instance on the current code; False if it was not
        suspended."""
        outcome = await self.engine.committer.submit(Resume(self.id))
        if outcome.error == "not_found":
            raise WorkflowNotFoundError(self.id)
        if outcome.ok and self.engine.worker is not None:
            self.engine.worker.kick()
        return outcome.ok
