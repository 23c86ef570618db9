"""Serving task queues: claiming remote activity tasks, running them, recording outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from stalwart._engine.run import PendingActivity
from stalwart.codec import TypeConverter
from stalwart.decorators import Registry
from stalwart.errors import StoreError
from stalwart.queues import Queue
from stalwart.runtime.activity_exec import execute_attempt
from stalwart.runtime.clock import Clock
from stalwart.runtime.committer import GroupCommitter
from stalwart.store.base import CompleteTask, Store, TaskRecord

logger = logging.getLogger("stalwart.runtime")
DEFAULT_WORKER_CONCURRENCY = 100
"""Tasks of one queue a worker runs at once when the queue sets no worker_concurrency."""


class TaskRunner:
    """Claims tasks of the queues this worker serves and runs them."""

    def __init__(
        self,
        *,
        worker_id: str,
        queues: list[Queue],
        store: Store,
        committer: GroupCommitter,
        registry: Registry,
        converter: TypeConverter,
        executor: Executor,
        clock: Clock,
        poll_interval: float,
        on_outcome: Callable[[str], None],
    ) -> None:
        self._worker_id = worker_id
        self._queues = {q.name: q for q in queues}
        self._limits = {q.name: q.limits() for q in queues}
        self._store = store
        self._committer = committer
        self._registry = registry
        self._converter = converter
        self._executor = executor
        self._clock = clock
        self._poll = poll_interval
        self._on_outcome = on_outcome
        self._running: dict[str, set[asyncio.Task[None]]] = {q: set() for q in self._queues}
        self._held: set[str] = set()
        """Ids of the tasks running here (given to ``claim_tasks`` to find lost claims)."""
        self._kick = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start claiming."""
        if self._queues:
            self._loop_task = asyncio.get_running_loop().create_task(self._claim_loop())

    def kick(self) -> None:
        """Look for tasks now (one was enqueued or a slot freed)."""
        self._kick.set()

    @property
    def busy(self) -> bool:
        """Whether tasks are running here."""
        return any(self._running.values())

    async def stop(self, grace: float) -> None:
        """Stop claiming; let running tasks finish for up to ``grace`` seconds."""
        self._stopping = True
        self._kick.set()
        if self._loop_task is not None:
            await self._loop_task
        tasks = [t for group in self._running.values() for t in group]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _claim_loop(self) -> None:
        failing = False
        while not self._stopping:
            self._kick.clear()
            wants = {name: self._free(name) for name in self._queues}
            wants = {name: n for name, n in wants.items() if n > 0}
            claimed: list[TaskRecord] = []
            if wants:
                try:
                    # ``held`` lets the store hand back claims whose reply was lost.
                    claimed = await self._store.claim_tasks(
                        self._worker_id, self._limits, wants, held=set(self._held)
                    )
                    if failing:
                        logger.info("task queues reachable again")
                        failing = False
                except StoreError as exc:
                    if not failing:
                        logger.warning("claiming tasks failed, retrying: %s", exc)
                        failing = True
            for task in claimed:
                self._launch(task)
            if claimed and any(self._free(n) > 0 for n in self._queues):
                continue  # there may be more
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._poll)

    def _free(self, queue: str) -> int:
        cap = self._queues[queue].worker_concurrency or DEFAULT_WORKER_CONCURRENCY
        return cap - len(self._running[queue])

    def _launch(self, task: TaskRecord) -> None:
        if task.id in self._held:
            return
        runner = asyncio.get_running_loop().create_task(self._run(task))
        group = self._running[task.queue]
        group.add(runner)
        self._held.add(task.id)
        runner.add_done_callback(group.discard)
        runner.add_done_callback(lambda _: self._held.discard(task.id))
        runner.add_done_callback(lambda _: self._kick.set())

    async def _run(self, task: TaskRecord) -> None:
        loop = asyncio.get_running_loop()
        act = PendingActivity(
            task.cmd,
            task.name,
            task.input,
            task.options,
            loop.create_future(),
            scheduled_at=float(task.options.get("scheduled_at", task.created_at)),
            attempt=task.attempt,
            heartbeat=task.options.get("heartbeat_details"),
        )
        event = await execute_attempt(
            self._registry.activity(task.name),
            act,
            instance_id=task.instance_id,
            run_id=task.run_id,
            converter=self._converter,
            executor=self._executor,
            now=self._clock.now,
            worker_id=self._worker_id,
        )
        outcome: dict[str, Any] = {"type": event.kind, **event.to_data()}
        delay = 0.1
        while True:
            try:
                result = await self._committer.submit(
                    CompleteTask(task.id, self._worker_id, outcome)
                )
                break
            except StoreError as exc:
                logger.warning("recording task %s failed, retrying: %s", task.id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if result.ok:
            self._on_outcome(task.instance_id)
        else:
            logger.info("task %s was taken over by another worker; its result is dropped", task.id)
