"""Features composed with a SIGKILL: child workflows, continue-as-new, updates, heartbeats.

Each test runs a worker process (``app.py``) on a SQLite file, SIGKILLs it while the
feature is mid-flight, restarts it, and checks that everything completes with the right
result and that no recorded activity ran again: only executions in flight at the kill
may be repeated (``harness.check_invariants``). The restarted worker is on the same host,
so it sees at once that the dead worker's pid is gone and takes over its instances.
``STALWART_TEST_SEED=<n>`` replays the kill moments of a failed run.

* children: a parent starts ``kr_sum`` children with ``ctx.start_child(..., id=...)``
  and with ``await kr_sum(...)`` under ``asyncio.gather``; every child is created once
  and reported once to the parent.
* continue-as-new: ``kc_loop`` runs one activity per iteration and continues as new
  every few; no iteration is recorded twice across the chain of runs.
* updates: ``kc_account`` applies ``add(key)`` updates through an activity; updates that
  time out while the worker is down are retried by the client with the same key (the
  handler deduplicates keys), and each key counts once; validator-rejected updates
  leave no trace in the history.
* heartbeats: ``kc_copy`` heartbeats its progress; a retry after a failure resumes from
  the recorded heartbeat details (also after the kill), and an attempt in flight at the
  kill is re-run by the new worker and completes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from stalwart import (
    Engine,
    HistoryEvent,
    UpdateFailedError,
    WorkerOptions,
    WorkflowContext,
    activity,
    workflow,
)

from . import app
from .harness import (
    Kill,
    Pair,
    StepRecord,
    WorkerProcess,
    assert_clean_log,
    check_invariants,
    count_side,
    env_seed,
    expected_sum,
    histories,
    init_side,
    kill,
    read_progress,
    read_side,
    sqlite_url,
    step_value,
    steps_of,
    wait_until,
)

LEASE = 2.0
POLL = 0.1
CONCURRENCY = 8

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Cluster:
    """The store, the side file, and the worker processes of one test (one at a time)."""

    def __init__(self, tmp_path: Path, **worker_options: Any) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "store.db"
        self.side = tmp_path / "side.db"
        init_side(self.side)
        self.worker_options = worker_options
        self.workers: list[WorkerProcess] = []
        seed = env_seed()
        print(f"STALWART_TEST_SEED={seed}")
        self.rng = random.Random(seed)

    def client(self) -> Engine:
        """A client engine that knows the workflows (typed results, update validation)."""
        return Engine(
            sqlite_url(self.db), worker=False, workflows=app.WORKFLOWS, activities=app.ACTIVITIES
        )

    async def spawn(self, engine: Engine) -> WorkerProcess:
        """Start a worker and wait until it has registered."""
        worker = WorkerProcess(
            self.db,
            self.side,
            self.tmp_path / f"worker-{len(self.workers)}.log",
            lease=LEASE,
            poll=POLL,
            concurrency=CONCURRENCY,
            **self.worker_options,
        )
        self.workers.append(worker)
        await worker.wait_ready(engine)
        return worker

    @property
    def current(self) -> WorkerProcess:
        """The most recently started worker."""
        return self.workers[-1]

    def check_alive(self) -> None:
        """Fail fast if the current worker died on its own."""
        w = self.current
        assert w.alive(), f"worker {w.pid} died on its own:\n{w.log_text()}"

    async def kill(self, engine: Engine) -> Kill:
        """SIGKILL the current worker, a random instant (up to 30 ms) from now."""
        await asyncio.sleep(self.rng.uniform(0.0, 0.03))
        return await kill(engine, self.current)

    async def wait_completed(self, engine: Engine, ids: Iterable[str], timeout: float) -> None:
        """Wait until every instance in ``ids`` completed (failing fast on a dead worker)."""
        wanted = set(ids)

        async def done() -> bool:
            items = (await engine.list(status="completed", limit=10_000)).items
            return wanted <= {d.id for d in items}

        await wait_until(done, timeout, f"{sorted(wanted)} to complete", check=self.check_alive)

    async def stop(self) -> None:
        """Stop the current worker gracefully; every worker's log must be clean."""
        assert await self.current.terminate() == 0, self.current.log_text()
        for w in self.workers:
            assert_clean_log(w)

    def cleanup(self) -> None:
        """Kill whatever still runs."""
        for w in self.workers:
            w.cleanup()


async def activity_in_flight(engine: Engine) -> bool:
    """Whether some current run has an activity scheduled but not completed."""
    return any(
        rec.scheduled and not rec.completions
        for steps in (await histories(engine)).values()
        for rec in steps.values()
    )


def events(history: Iterable[HistoryEvent], kind: str) -> list[dict[str, Any]]:
    """The data of the events of one kind."""
    return [item.event.to_data() for item in history if item.kind == kind]


def contiguous(items: list[int]) -> bool:
    """Whether the (sorted) items are consecutive integers."""
    return items == list(range(items[0], items[0] + len(items))) if items else True


# ----------------------------------------------------------------------------- children
N_AWAITED = 3
N_HANDLES = 3
CHILD_STEPS = 8


async def test_child_workflows_survive_a_kill(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, step_seconds=0.08)
    n_children = N_AWAITED + N_HANDLES
    total = n_children * CHILD_STEPS
    target = cluster.rng.uniform(0.2, 0.6) * total
    try:
        async with cluster.client() as engine:
            await cluster.spawn(engine)
            parent = await engine.start(
                app.kc_parent.invoke(N_AWAITED, N_HANDLES, CHILD_STEPS), id="parent"
            )

            async def children_busy() -> bool:
                # Every child exists, some steps are recorded, some are running.
                children = (await engine.list(parent="parent", limit=100)).items
                return (
                    len(children) == n_children
                    and count_side(cluster.side) >= target
                    and await activity_in_flight(engine)
                )

            await wait_until(children_busy, 30, "children running", check=cluster.check_alive)
            the_kill = await cluster.kill(engine)
            await cluster.spawn(engine)
            await cluster.wait_completed(engine, ["parent"], 60)
            result = await parent.result(timeout=10)
            history = await parent.history()
            children = (await engine.list(parent="parent", limit=100)).items
            final = await histories(engine)
            await cluster.stop()
    finally:
        cluster.cleanup()

    assert result == [expected_sum(i, CHILD_STEPS) for i in range(n_children)]

    started = [e["child_id"] for e in events(history, "ChildWorkflowStarted")]
    reported = [e["child_id"] for e in events(history, "ChildWorkflowCompleted")]
    assert len(started) == n_children, started
    assert Counter(started) == Counter(set(started)), f"a child started twice: {started}"
    assert Counter(reported) == Counter(started), f"children reported: {reported}"
    assert [c for c in started if c.startswith("parent-h")] == [
        f"parent-h{j}" for j in range(N_HANDLES)
    ]
    child_ids = [c.id for c in children]
    assert sorted(child_ids) == sorted(started), (child_ids, started)
    assert {c.status for c in children} == {"completed"}
    assert {c.parent_id for c in children} == {"parent"}

    # Children were running at the kill: some of their steps were done, others not yet.
    report = check_invariants(
        expected_pairs={(c, s) for c in started for s in range(CHILD_STEPS)},
        executions=read_side(cluster.side),
        final=final,
        kills=[the_kill],
        concurrency=CONCURRENCY,
    )
    assert the_kill.in_flight, "the kill found no child step in flight"
    assert 0 < len(the_kill.done) < total
    print(
        f"children: {len(the_kill.done)}/{total} steps done at the kill, "
        f"{len(the_kill.in_flight)} in flight, {report.duplicates} re-executed"
    )


# ----------------------------------------------------------------------------- continue-as-new
LOOPS = 3
ITERATIONS = 24
PER_RUN = 4


async def chain_steps(
    engine: Engine, instance_id: str, runs: list[str]
) -> tuple[dict[int, StepRecord], list[list[HistoryEvent]]]:
    """The steps of all runs of an instance, merged, and each run's history."""
    loaded = [await engine.store.load_history(instance_id, run_id) for run_id in runs]
    merged: dict[int, StepRecord] = defaultdict(StepRecord)
    for history in loaded:
        for step, rec in steps_of(history).items():
            merged[step].scheduled += rec.scheduled
            merged[step].completions += rec.completions
    return merged, loaded


async def test_continue_as_new_survives_a_kill(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, step_seconds=0.04)
    ids = [f"loop-{i}" for i in range(LOOPS)]
    total = LOOPS * ITERATIONS
    target = cluster.rng.uniform(0.25, 0.65) * total
    try:
        async with cluster.client() as engine:
            await cluster.spawn(engine)
            handles = [
                await engine.start(app.kc_loop.invoke(i, ITERATIONS, PER_RUN, 0, 0, []), id=wf_id)
                for i, wf_id in enumerate(ids)
            ]

            async def mid_chain() -> bool:
                return count_side(cluster.side) >= target and await activity_in_flight(engine)

            await wait_until(mid_chain, 30, "the loops to be mid-way", check=cluster.check_alive)
            the_kill = await cluster.kill(engine)
            await cluster.spawn(engine)
            await cluster.wait_completed(engine, ids, 60)
            results = [await h.result(timeout=10) for h in handles]
            current_runs = [(await h.describe()).run_id for h in handles]
            final: dict[str, dict[int, StepRecord]] = {}
            run_histories: dict[str, list[list[HistoryEvent]]] = {}
            for wf_id, res in zip(ids, results, strict=True):
                final[wf_id], run_histories[wf_id] = await chain_steps(engine, wf_id, res["runs"])
            await cluster.stop()
    finally:
        cluster.cleanup()

    n_runs = -(-ITERATIONS // PER_RUN)
    for i, (wf_id, res) in enumerate(zip(ids, results, strict=True)):
        assert res["sum"] == expected_sum(i, ITERATIONS), (wf_id, res)
        runs = res["runs"]
        assert len(runs) == n_runs and len(set(runs)) == n_runs, runs
        assert runs[-1] == current_runs[i]
        for r, history in enumerate(run_histories[wf_id]):
            # Each run did its own iterations, once, and handed over to the next run.
            assert history[0].kind == "WorkflowStarted"
            assert history[0].event.to_data()["input"][3] == r * PER_RUN
            iterations = sorted(steps_of(history))
            assert iterations == list(range(r * PER_RUN, min((r + 1) * PER_RUN, ITERATIONS)))
            last = history[-1]
            if r < n_runs - 1:
                assert last.kind == "WorkflowContinuedAsNew", last
                assert last.event.to_data()["new_run_id"] == runs[r + 1]
            else:
                assert last.kind == "WorkflowCompleted", last
            ends = [h.kind for h in history].count(last.kind)
            assert ends == 1, f"run {r} of {wf_id} ended {ends} times"

    report = check_invariants(
        expected_pairs={(wf_id, s) for wf_id in ids for s in range(ITERATIONS)},
        executions=read_side(cluster.side),
        final=final,
        kills=[the_kill],
        concurrency=CONCURRENCY,
    )
    assert the_kill.in_flight, "the kill found no iteration in flight"
    # Mid-way through the chains: past the first run somewhere, and before the last.
    assert max(step for _, step in the_kill.done) >= PER_RUN, the_kill.done
    assert len(the_kill.done) < total
    print(
        f"continue-as-new: {len(the_kill.done)}/{total} iterations done at the kill, "
        f"{len(the_kill.in_flight)} in flight, {report.duplicates} re-executed"
    )


# ----------------------------------------------------------------------------- updates
ACCOUNT = "account"
ACCOUNT_NO = 5
KEYS = 12
SENDERS = 4
UPDATE_TIMEOUT = 1.5


async def test_updates_survive_a_kill(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, step_seconds=0.4)
    calls: Counter[int] = Counter()
    timeouts: Counter[int] = Counter()
    returned: dict[int, list[int]] = defaultdict(list)
    rejected = 0
    target = cluster.rng.randint(2, 6)

    async def add_until_done(handle: Any, key: int, deadline: float) -> None:
        # A call that timed out is not withdrawn: its request is durable and will be
        # applied. Retrying with the same key is safe because the handler dedupes keys.
        while True:
            calls[key] += 1
            try:
                returned[key].append(await handle.update("add", key, timeout=UPDATE_TIMEOUT))
                return
            except TimeoutError:
                timeouts[key] += 1
                assert time.monotonic() < deadline, f"update {key} never went through"

    async def sender(handle: Any, keys: list[int]) -> None:
        deadline = time.monotonic() + 60
        for key in keys:
            await add_until_done(handle, key, deadline)

    async def refused(handle: Any) -> None:
        nonlocal rejected
        with pytest.raises(UpdateFailedError) as info:
            await handle.update("add", -1, timeout=10)
        assert info.value.rejected, info.value
        rejected += 1

    try:
        async with cluster.client() as engine:
            await cluster.spawn(engine)
            handle = await engine.start(app.kc_account.invoke(ACCOUNT_NO), id=ACCOUNT)
            await refused(handle)
            senders = [
                asyncio.create_task(sender(handle, list(range(s, KEYS, SENDERS))))
                for s in range(SENDERS)
            ]

            async def updates_running() -> bool:
                for task in senders:
                    if task.done():
                        task.result()  # surface a sender's failure
                if count_side(cluster.side) < target:
                    return False
                # In flight = scheduled, not completed in history, AND its body not yet
                # finished (the side row is written at the end of the body): a body that
                # just finished may have its result committed before the kill lands.
                finished = {(e.instance, e.step) for e in read_side(cluster.side)}
                return any(
                    rec.scheduled and not rec.completions and (instance, step) not in finished
                    for instance, steps in (await histories(engine)).items()
                    for step, rec in steps.items()
                )

            await wait_until(updates_running, 30, "updates in flight", check=cluster.check_alive)
            the_kill = await cluster.kill(engine)
            # While no worker runs, the validator still refuses bad requests (by replay,
            # in this process), and pending updates time out: wait for one to.
            await refused(handle)

            async def one_timed_out() -> bool:
                return sum(timeouts.values()) > 0

            await wait_until(one_timed_out, 30, "an update to time out")
            await cluster.spawn(engine)
            await asyncio.wait_for(asyncio.gather(*senders), 60)
            await refused(handle)
            await handle.signal("finish")
            await cluster.wait_completed(engine, [ACCOUNT], 30)
            result = await handle.result(timeout=10)
            history = await handle.history()
            final = await histories(engine)
            await cluster.stop()
    finally:
        cluster.cleanup()

    # Every call that returned got its key's value, and the state counts each key once.
    values = {key: step_value(ACCOUNT_NO, key) for key in range(KEYS)}
    assert set(returned) == set(values)
    wrong = {k: v for k, v in returned.items() if v != [values[k]]}
    assert not wrong, f"updates that returned another value (key: returned): {wrong}"
    assert result == {"total": sum(values.values()), "keys": list(range(KEYS))}, result

    # Every call that passed validation was accepted exactly once, timed out or not, and
    # completed exactly once; refused calls left nothing in the history.
    accepted = events(history, "UpdateAccepted")
    completed = events(history, "UpdateCompleted")
    assert Counter(e["args"][0] for e in accepted) == calls, (accepted, calls)
    accepted_ids = [e["update_id"] for e in accepted]
    completed_ids = [e["update_id"] for e in completed]
    assert len(set(accepted_ids)) == len(accepted_ids)
    assert Counter(completed_ids) == Counter(accepted_ids)
    by_id = {e["update_id"]: e["args"][0] for e in accepted}
    bad = [
        e
        for e in completed
        if e["error"] is not None or e["result"] != values[by_id[e["update_id"]]]
    ]
    assert not bad, f"updates completed wrongly: {bad}"
    assert rejected == 3
    assert not events(history, "UpdateRejected")
    assert all(e["args"][0] >= 0 for e in accepted)

    report = check_invariants(
        expected_pairs={(ACCOUNT, key) for key in range(KEYS)},
        executions=read_side(cluster.side),
        final=final,
        kills=[the_kill],
        concurrency=CONCURRENCY,
    )
    assert the_kill.in_flight, "the kill found no update's activity in flight"
    print(
        f"updates: {sum(calls.values())} calls for {KEYS} keys, "
        f"{sum(timeouts.values())} timed out and retried; "
        f"{len(the_kill.done)} keys done at the kill, {len(the_kill.in_flight)} in flight, "
        f"{report.duplicates} re-executed"
    )


# ----------------------------------------------------------------------------- heartbeats
ITEMS = 40
FAIL_AT = 10


async def test_heartbeating_activities_survive_a_kill(tmp_path: Path) -> None:
    """``hb-retry`` fails its first attempt at item ``FAIL_AT``; the retry resumes from
    the heartbeat details and is killed mid-way. ``hb-kill`` never fails and is killed
    mid-way through its first attempt."""
    cluster = Cluster(tmp_path, item_seconds=0.04)
    target = cluster.rng.randint(2, 15)
    try:
        async with cluster.client() as engine:
            await cluster.spawn(engine)
            retry = await engine.start(app.kc_copier.invoke(1, ITEMS, FAIL_AT), id="hb-retry")
            fresh = await engine.start(app.kc_copier.invoke(2, ITEMS, -1), id="hb-kill")

            async def retry_running() -> bool:
                rows = read_progress(cluster.side)
                return sum(r.instance == "hb-retry" and r.attempt == 2 for r in rows) >= target

            await wait_until(retry_running, 30, "the retry to progress", check=cluster.check_alive)
            the_kill = await cluster.kill(engine)
            old_pid = the_kill.pid
            new = await cluster.spawn(engine)
            await cluster.wait_completed(engine, ["hb-retry", "hb-kill"], 60)
            results = [await retry.result(timeout=10), await fresh.result(timeout=10)]
            retry_history = await retry.history()
            fresh_history = await fresh.history()
            final = await histories(engine)
            await cluster.stop()
    finally:
        cluster.cleanup()

    assert results == [1000 + ITEMS, 2000 + ITEMS]
    progress = read_progress(cluster.side)
    assert not [p for p in progress if p.pid == old_pid and p.at > the_kill.dead_at]

    def items(instance: str, pid: int, attempt: int) -> list[int]:
        return sorted(
            p.item
            for p in progress
            if p.instance == instance and p.pid == pid and p.attempt == attempt
        )

    # hb-retry: attempt 1 did the items before FAIL_AT and failed, recording its last
    # heartbeat; attempt 2 resumed from it, and after the kill the new worker resumed
    # attempt 2 from the recorded details again, never redoing items before FAIL_AT.
    failed = events(retry_history, "ActivityAttemptFailed")
    assert len(failed) == 1, failed
    assert failed[0]["attempt"] == 1 and failed[0]["details"] == FAIL_AT, failed
    assert failed[0]["error"]["type"] == "ConnectionError"
    done = events(retry_history, "ActivityCompleted")
    assert len(done) == 1 and done[0]["attempt"] == 2, done
    assert items("hb-retry", old_pid, 1) == list(range(FAIL_AT))
    before = items("hb-retry", old_pid, 2)
    resumed = items("hb-retry", new.pid, 2)
    assert before and before[0] == FAIL_AT and contiguous(before) and before[-1] < ITEMS - 1
    assert resumed and contiguous(resumed) and resumed[-1] == ITEMS - 1, resumed
    assert FAIL_AT <= resumed[0] <= before[-1] + 1, (before, resumed)
    assert not items("hb-retry", new.pid, 1)

    # hb-kill: in flight at the kill, re-run (same attempt) by the new worker, complete.
    assert not events(fresh_history, "ActivityAttemptFailed")
    done = events(fresh_history, "ActivityCompleted")
    assert len(done) == 1 and done[0]["attempt"] == 1, done
    before = items("hb-kill", old_pid, 1)
    rerun = items("hb-kill", new.pid, 1)
    assert before and before[0] == 0 and contiguous(before) and before[-1] < ITEMS - 1, before
    assert rerun and contiguous(rerun) and rerun[-1] == ITEMS - 1, rerun
    assert rerun[0] <= before[-1] + 1, (before, rerun)

    # Only the successful end of each call is in the executions table: once each, by the
    # new worker, both calls having been in flight at the kill.
    executions = read_side(cluster.side)
    pairs: set[Pair] = {("hb-retry", 0), ("hb-kill", 0)}
    check_invariants(
        expected_pairs=pairs,
        executions=executions,
        final=final,
        kills=[the_kill],
        concurrency=CONCURRENCY,
    )
    assert the_kill.in_flight == pairs
    assert {ex.pid for ex in executions} == {new.pid}
    print(
        f"heartbeats: after the kill hb-retry resumed at item {resumed[0]}, "
        f"hb-kill re-ran {len(rerun)} of {ITEMS} items"
    )


# ----------------------------------------------------------------------------- regression
PROBE_CALLS: list[int] = []


@activity(name="kc_probe_double")
async def probe_double(x: int) -> int:
    PROBE_CALLS.append(x)
    return 2 * x


@workflow(name="kc_probe_account")
async def probe_account(ctx: WorkflowContext) -> int:
    total = 0
    done = False

    @ctx.update_handler("add")
    async def add(x: int) -> int:
        nonlocal total
        total += await probe_double(x)  # the plain call form, as in workflow code
        return total

    @ctx.signal_handler("stop")
    def stop() -> None:
        nonlocal done
        done = True

    ctx.set_query_handler("total", lambda: total)
    await ctx.wait_condition(lambda: done)
    return total


async def test_plain_activity_call_in_update_handler_is_recorded(tmp_path: Path) -> None:
    """``await activity_fn(x)`` in an update handler is a durable call, as in workflow code.

    Handlers used to run in a task without the workflow context, where the plain call
    form ran the body inline, unrecorded, and again on every replay."""
    PROBE_CALLS.clear()
    url = sqlite_url(tmp_path / "probe.db")
    async with Engine(url, workflows=[probe_account], activities=[probe_double]) as engine:
        handle = await engine.start(probe_account.invoke(), id="probe")
        assert await handle.update("add", 21, timeout=10) == 42
        await handle.signal("stop")
        assert await handle.result(timeout=10) == 42
        kinds = [item.kind for item in await handle.history()]
        assert await handle.query("total") == 42  # answered by replaying the history
    assert PROBE_CALLS == [21], "the activity ran unrecorded, or again on replay"
    assert kinds.count("ActivityScheduled") == 1, kinds


@workflow(name="kc_probe_batches")
async def probe_batches(ctx: WorkflowContext, count: int) -> int:
    seen = 0

    @ctx.update_handler("bump")
    def bump() -> int:
        nonlocal seen
        seen += 1
        return count + seen

    await ctx.wait_condition(lambda: seen > 0)
    ctx.continue_as_new(count + seen)


async def test_update_completed_before_continue_as_new_returns(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "probe.db")
    options = WorkerOptions(poll_interval=0.05)
    # The caller has no worker: with one in the same engine, the same bug makes the
    # caller spin on the in-process event and ignore its timeout (Python 3.11 wait_for).
    async with (
        Engine(url, workflows=[probe_batches], activities=[], options=options),
        Engine(url, worker=False, workflows=[probe_batches], activities=[]) as client,
    ):
        handle = await client.start(probe_batches.invoke(0), id="batches")
        assert await handle.update("bump", timeout=3) == 1
