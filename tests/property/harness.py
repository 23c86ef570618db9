"""Running programs on Stalwart: the settings, the engines and the crashes.

* :func:`run_program` starts a program on an open engine, sends its signals (``early``
  ones right after the start, the others once the ``waiting`` query names them), waits
  for the root's end and reads back every run of the root and of all its descendants
  (:func:`load_instances`), for ``checks.check_against_reference``;
* :class:`StoreOutage` fails chosen commits (the worker rebuilds from the store);
* :func:`run_on_sqlite` replaces the engine mid-run (graceful restart or takeover);
* :func:`run_with_process_kill` kills a worker process at an exact commit point.

Failures name the program as JSON: save it under ``fixtures/`` to keep it (see README).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from stalwart import (
    Engine,
    StalwartError,
    StoreError,
    WorkerOptions,
    WorkflowClosedError,
    WorkflowFailedError,
    WorkflowHandle,
)
from stalwart._engine import events as ev
from stalwart.faults import FaultPlan
from stalwart.store.base import ListFilter, Store

from .checks import History, Observed
from .interpreter import ACTIVITIES, prop_interp
from .program import Program, WaitSignal, program_json, signals, start_state
from .reference import expected

FIXTURES = Path(__file__).parent / "fixtures"
RESULT_TIMEOUT = 30.0
"""Seconds a program may take before the run is declared hung (real time)."""
VIRTUAL_TIMEOUT = 5.0
"""The same on the virtual clock, where every program ends in well under a second (a
hang found by Hypothesis costs this much per shrinking step)."""
SHRINK_TIMEOUT = 600
"""pytest-timeout of the Hypothesis tests: shrinking a hang takes a few minutes, and the
shrunk program is the useful part of the report."""


# ----------------------------------------------------------------------------- settings
def examples(share: float, floor: int = 1) -> int:
    """This test's share of the example budget: ``STALWART_PROPERTY_EXAMPLES`` (default 100)
    examples in all, split between the property tests by ``share``."""
    total = int(os.environ.get("STALWART_PROPERTY_EXAMPLES", "100"))
    return max(floor, round(total * share))


def property_settings(share: float, floor: int = 1) -> settings:
    """Fast, reproducible settings: no deadline (runs take real time) and no example
    database (fixtures keep failing programs). By default the examples are a fixed
    sequence (``derandomize``, stable in CI); a long run (``STALWART_PROPERTY_EXAMPLES``
    set) draws new ones each time, and a failure prints its program as JSON."""
    return settings(
        max_examples=examples(share, floor),
        deadline=None,
        derandomize="STALWART_PROPERTY_EXAMPLES" not in os.environ,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def features(program: Program) -> list[str]:
    """What a program exercises (reported by ``--hypothesis-show-statistics``)."""
    trace = expected(program, "p")
    labels = {f"root ends {trace.outcome[0]}"}
    todo = [trace]
    while todo:
        inst = todo.pop()
        todo += inst.children.values()
        for run in inst.runs:
            if run.end[0] == "continued":
                labels.add("continue-as-new")
            for command in run.commands:
                if command[0] == "compensate":
                    labels.add("compensation")
                elif command[0] == "child":
                    labels.add("child workflow")
                elif command[0] == "activity" and command[4][0] == "failed":
                    labels.add("call failed for good")
                elif command[0] == "activity" and command[4][1] > 1:
                    labels.add("call retried")
    for wait in signals(program):
        labels.add("early signal" if wait.early else "late signal")
    return sorted(labels)


# ----------------------------------------------------------------------------- running
HandleSource = Callable[[], WorkflowHandle[Any]]


async def send_signal(current: HandleSource, wait: WaitSignal) -> None:
    """Send a signal, retrying while the store refuses the write (injected outages). A
    workflow that already ended refuses it: it will never wait for it either."""
    for _ in range(200):
        try:
            await current().signal(wait.name, wait.payload)
            return
        except WorkflowClosedError:
            return
        except StalwartError:
            await asyncio.sleep(0.01)  # an outage (or an engine being replaced): retry
    raise AssertionError(f"could not send signal {wait.name!r}")


async def drive_late_signals(current: HandleSource, waits: Sequence[WaitSignal]) -> None:
    """Send each late signal once the workflow says it waits for it. (Some waits are
    never reached, e.g. after a failure in their saga, so not necessarily in order.)"""
    unsent = {wait.name: wait for wait in waits}
    while unsent:
        try:
            waiting = await current().query("waiting")
        except Exception:
            waiting = None  # not started yet, being rebuilt, or the engine swapped
        if waiting in unsent:
            await send_signal(current, unsent.pop(waiting))
        else:
            await asyncio.sleep(0.003)


async def start_program(engine: Engine, program: Program, instance_id: str, scale: float) -> None:
    """Start the root instance and send its early signals."""
    handle = await prop_interp.start(engine, start_state(program, scale=scale), id=instance_id)
    for wait in signals(program):
        if wait.early:
            await send_signal(lambda: handle, wait)


def late_signal_driver(current: HandleSource, program: Program) -> asyncio.Future[None]:
    """A task sending the program's late signals (cancel it when the program ended)."""
    late = [w for w in signals(program) if not w.early]
    return asyncio.ensure_future(drive_late_signals(current, late))


async def await_outcome(
    current: HandleSource,
    program: Program,
    *,
    timeout: float = RESULT_TIMEOUT,
    driver: asyncio.Future[None] | None = None,
) -> tuple[Any, ...]:
    """Drive late signals (unless a ``driver`` already does) and wait for the root's end;
    diagnose a hang."""
    driver = driver or late_signal_driver(current, program)
    try:
        result = await current().result(timeout=timeout)
        return ("completed", result)
    except WorkflowFailedError as exc:
        return (exc.status,)
    except TimeoutError:
        where = await describe_all(current().engine.store)
        raise AssertionError(
            f"the program did not end within {timeout:g}s\nprogram: {program_json(program)}\n"
            f"{where}"
        ) from None
    finally:
        driver.cancel()
        await asyncio.gather(driver, return_exceptions=True)


async def run_program(
    engine: Engine,
    program: Program,
    instance_id: str = "p",
    *,
    scale: float = 1.0,
    timeout: float = RESULT_TIMEOUT,
) -> Observed:
    """Run ``program`` on an open engine and read back everything it recorded."""
    await start_program(engine, program, instance_id, scale)
    handle = engine.get_handle(instance_id)
    outcome = await await_outcome(lambda: handle, program, timeout=timeout)
    return Observed(outcome, await load_instances(engine.store, instance_id))


async def describe_all(store: Store) -> str:
    """Every instance's status and current step (for a hang report)."""
    lines = []
    cursor = None
    while True:
        page = await store.list_instances(ListFilter(), limit=100, cursor=cursor)
        for rec in page.items:
            lines.append(f"  {rec.id}: {rec.status} ({rec.current_step}) owner={rec.owner}")
        cursor = page.next_cursor
        if cursor is None:
            return "instances:\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- histories
async def load_runs(store: Store, instance_id: str) -> list[History]:
    """Every run of an instance, oldest first (following ``previous_run_id``)."""
    rec = await store.get_instance(instance_id)
    assert rec is not None, f"instance {instance_id!r} does not exist"
    runs: list[History] = []
    run_id: str | None = rec.run_id
    while run_id is not None:
        history = await store.load_history(instance_id, run_id)
        assert history, f"run {run_id} of {instance_id!r} has no history"
        runs.append(history)
        first = history[0].event
        assert isinstance(first, ev.WorkflowStarted)
        run_id = first.previous_run_id
    runs.reverse()
    return runs


async def load_instances(store: Store, root: str) -> dict[str, list[History]]:
    """The runs of ``root`` and of every descendant started by one of its runs."""
    found: dict[str, list[History]] = {}
    todo = [root]
    while todo:
        instance_id = todo.pop()
        runs = await load_runs(store, instance_id)
        found[instance_id] = runs
        for history in runs:
            todo += [
                h.event.child_id for h in history if isinstance(h.event, ev.ChildWorkflowStarted)
            ]
    return found


# ----------------------------------------------------------------------------- engines
def sqlite_engine(db: Path, **options: Any) -> Engine:
    """A worker engine on a SQLite file serving the interpreter."""
    opts = WorkerOptions(
        **{"poll_interval": 0.02, "shutdown_grace": 0.5, "lease_seconds": 30.0, **options}
    )
    return Engine(f"sqlite:///{db}", workflows=[prop_interp], activities=ACTIVITIES, options=opts)


class StoreOutage(FaultPlan):
    """Fail chosen hits of a commit point with a ``StoreError`` (a write that failed, or
    whose acknowledgement was lost, as in a database outage): the worker drops the
    instances of that batch and rebuilds them from the store by replay."""

    def __init__(self, point: str, hits: Sequence[int]) -> None:
        super().__init__()
        self.point = point
        self.hits_to_fail = set(hits)
        self.count = 0
        self.fired = 0

    def hit(self, name: str) -> None:
        if name != self.point:
            return
        self.count += 1
        if self.count in self.hits_to_fail:
            self.fired += 1
            raise StoreError(f"injected outage at {name} (hit {self.count})")


async def poll_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.005
) -> None:
    """Wait (real time) until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


class EngineSwap:
    """The engine currently running a program on a SQLite file, replaced mid-run."""

    def __init__(self, engine: Engine, instance_id: str) -> None:
        self.engine = engine
        self.instance_id = instance_id

    def handle(self) -> WorkflowHandle[Any]:
        return self.engine.get_handle(self.instance_id)

    async def root_ended(self) -> bool:
        rec = await self.engine.store.get_instance(self.instance_id)
        return rec is not None and rec.status not in ("pending", "running", "compensating")

    async def restart(self, db: Path, mode: str, **options: Any) -> None:
        """Replace the engine by a new one on the same file.

        ``graceful``: close it (it hands its instances back), then open another.
        ``takeover``: open another, declare the first one's lease expired (as if its
        process had died: the new one claims its instances with a new epoch, fencing any
        write the old one still attempts), then close the old one.
        """
        old = self.engine
        if mode == "graceful":
            await old.close()
            self.engine = sqlite_engine(db, **options)
            await self.engine.open()
            return
        new = sqlite_engine(db, **options)
        await new.open()
        assert old.worker is not None and new.worker is not None
        await old.store.expire_worker(old.worker.id)
        new.worker.kick()
        new_id = new.worker.id

        async def moved() -> bool:
            rec = await new.store.get_instance(self.instance_id)
            return rec is None or rec.owner in (new_id, None) or await self.root_ended()

        await poll_until(moved, 10.0, "the new worker to take the instance over")
        self.engine = new
        await old.close()


async def run_on_sqlite(
    program: Program,
    db: Path,
    *,
    instance_id: str = "p",
    scale: float,
    restart: str | None = None,
    after_batches: int = 0,
    **options: Any,
) -> Observed:
    """Run a program on a SQLite file; with ``restart``, replace the engine once
    ``after_batches`` write batches were committed (a random kill point)."""
    swap = EngineSwap(sqlite_engine(db, **options), instance_id)
    await swap.engine.open()
    try:
        start_batches = swap.engine.committer.batches
        await start_program(swap.engine, program, instance_id, scale)
        driver = late_signal_driver(swap.handle, program)
        if restart is not None:

            async def reached() -> bool:
                done = swap.engine.committer.batches - start_batches >= after_batches
                return done or await swap.root_ended()

            await poll_until(reached, RESULT_TIMEOUT, "the kill point", every=0.0005)
            restarted = not await swap.root_ended()
            if restarted:
                await swap.restart(db, restart, **options)
        outcome = await await_outcome(swap.handle, program, driver=driver)
        instances = await load_instances(swap.engine.store, instance_id)
        return Observed(outcome, instances, restarted=restart is not None and restarted)
    finally:
        await swap.engine.close()


# ----------------------------------------------------------------------------- processes
REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``worker_proc.py`` as a separate OS process (``faults``: its STALWART_FAULTS plan)."""

    def __init__(self, db: Path, name: str, log: Path, faults: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "STALWART_FAULTS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if faults:
            env["STALWART_FAULTS"] = faults
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"{__package__}.worker_proc",
                    "--db",
                    str(db),
                    "--name",
                    name,
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.terminate()
            for _ in range(500):
                if not self.alive():
                    return
                await asyncio.sleep(0.01)
            self.proc.kill()
        self.proc.wait()


async def run_with_process_kill(
    program: Program, tmp: Path, fault: str, *, instance_id: str = "p", scale: float
) -> tuple[Observed, bool]:
    """Run a program on a worker process that dies (``os._exit``) at the fault point,
    then on a fresh worker process. Returns what was recorded and whether it died."""
    db = tmp / "kill.db"
    client = Engine(f"sqlite:///{db}", worker=False, workflows=[prop_interp], activities=[])
    workers: list[WorkerProcess] = []
    try:
        async with client:
            doomed = WorkerProcess(db, "doomed", tmp / "doomed.log", faults=fault)
            workers.append(doomed)

            async def registered() -> bool:
                return any(w.name == "doomed" for w in await client.live_workers())

            await poll_until(registered, 30.0, "the worker process to start")
            await start_program(client, program, instance_id, scale)
            handle = client.get_handle(instance_id)
            driver = late_signal_driver(lambda: handle, program)

            async def died_or_done() -> bool:
                rec = await client.store.get_instance(instance_id)
                done = rec is not None and rec.status in ("completed", "failed", "compensated")
                return done or not doomed.alive()

            await poll_until(died_or_done, RESULT_TIMEOUT, "the injected crash")
            died = not doomed.alive()
            if died:
                assert doomed.proc.returncode == 137, doomed.log.read_text()
                workers.append(WorkerProcess(db, "healthy", tmp / "healthy.log"))
            outcome = await await_outcome(lambda: handle, program, driver=driver)
            observed = Observed(outcome, await load_instances(client.store, instance_id))
            return observed, died
    finally:
        for worker in workers:
            await worker.stop()
