"""A worker whose event loop is blocked for longer than its lease is not taken over.

Worker ``blocky`` (lease 1 s) claims ``ch_blocker`` workflows whose middle step is an
*async* activity that blocks the worker's event loop for 3 s, with ``time.sleep`` or a
CPU loop, one after the other. Meanwhile worker ``steady`` (another host id, so it can
only judge ``blocky`` by its lease) runs a stream of other workflows. The lease is
renewed by a thread of its own (``runtime/heartbeat.py``), so ``blocky`` stays the
owner: ``steady`` never starts a duplicate of a blocked step (it would run it at once,
as the block only happens in ``blocky``, and the oracle would see two live executions
overlap). Checked: the oracle (no execution repeated, none overlapping), every step of
the blocked workflows ran in ``blocky`` under its first lease epoch, ``blocky``'s lease
never lapsed while sampled every 0.1 s, ``steady`` did work during the blocks, and every
workflow completed with the right result. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stalwart import Engine
from tests.chaos import oracle, report
from tests.chaos import scenarios_app as app

from .support import AppWorker, Stream, chaos_store

LEASE = 1.0
BLOCK = 3.0
HOWS = ("sleep", "spin")

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(600)]


def n_blocks() -> int:
    """How many 3 s blocks ``blocky`` goes through."""
    return 8 if report.long_runs() else 2


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_blocked_event_loop_keeps_its_lease(tmp_path: Path, store: str) -> None:
    log = tmp_path / "oracle.db"
    oracle.init(log)
    blocks = n_blocks()
    workers: list[AppWorker] = []
    verdict = oracle.Verdict()
    lapses: list[tuple[float, float]] = []
    steady_ids: list[str] = []

    def spawn(name: str) -> AppWorker:
        worker = AppWorker(
            url, log, tmp_path / f"{name}.log", name=name, host_id=f"host-{name}", lease=LEASE
        )
        workers.append(worker)
        return worker

    with chaos_store(store, tmp_path) as url:
        try:
            async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
                # The blocked workflows exist before ``blocky`` starts: it claims them all.
                blockers = [
                    await app.ch_blocker.start(
                        client, n, "blocky", BLOCK, HOWS[n % len(HOWS)], id=f"blocked-{n}"
                    )
                    for n in range(blocks)
                ]
                blocky = spawn("blocky")
                await blocky.wait_ready(client)

                async def blocking() -> bool:
                    return bool(oracle.running(log, "ch_block"))

                deadline = time.monotonic() + 30
                while not await blocking():
                    assert time.monotonic() < deadline, "no block started"
                    blocky.check_alive()
                    await asyncio.sleep(0.02)
                steady = spawn("steady")
                await steady.wait_ready(client)
                assert blocky.worker_id is not None and steady.worker_id is not None
                steady_ids.append(steady.worker_id)

                stream = Stream(lambda n: app.ch_steps.start(client, n, 3, id=f"steady-{n}"), 0.1)
                stream.begin()

                async def watch_lease() -> None:
                    while True:
                        now = client.store.now()
                        for w in await client.store.list_workers():
                            if w.id == blocky.worker_id and w.expires_at < now:
                                lapses.append((now, w.expires_at))
                        await asyncio.sleep(0.1)

                watching = asyncio.create_task(watch_lease())
                try:
                    for handle in blockers:
                        await asyncio.wait_for(handle.result(), BLOCK * blocks + 60)
                finally:
                    await stream.stop()
                    watching.cancel()  # a read only: nothing left behind
                    await asyncio.gather(watching, return_exceptions=True)

                async def all_done() -> bool:
                    items = (await client.list(limit=10_000)).items
                    return all(d.status in oracle.FINISHED_STATUSES for d in items)

                deadline = time.monotonic() + 60
                while not await all_done():
                    assert time.monotonic() < deadline, "the other workflows did not finish"
                    blocky.check_alive()
                    steady.check_alive()
                    await asyncio.sleep(0.05)
                items = (await client.list(limit=10_000)).items
                results = {
                    d.id: await client.get_handle(d.id).result(timeout=5)
                    for d in items
                    if d.status == "completed"
                }
                final = await oracle.load_timelines(client)
                for w in workers:
                    if await w.terminate() != 0:
                        verdict.fail(f"worker {w.name} did not stop cleanly")
        finally:
            for w in workers:
                w.cleanup()

    entries = oracle.read(log)
    found = oracle.check_oracle(entries, final, [])
    verdict.merge(found)
    verdict.add("workflows that did not complete", [d.id for d in items if d.status != "completed"])
    want = {
        d.id: sum(app.step_value(int(d.id.rsplit("-", 1)[1]), s) for s in range(3)) for d in items
    }
    verdict.add(
        "wrong results (id, got, expected)",
        [(i, results.get(i), v) for i, v in want.items() if results.get(i) != v],
    )
    verdict.add("moments blocky's lease had lapsed (now, expires_at)", lapses)
    blocked_runs = [e for e in entries if e.instance.startswith("blocked-")]
    first_epoch = {
        i: min(e.lease_epoch or 0 for e in blocked_runs if e.instance == i)
        for i in {e.instance for e in blocked_runs}
    }
    verdict.add(
        "steps of a blocked workflow run outside blocky's first lease",
        [
            e
            for e in blocked_runs
            if e.worker_id != blocky.worker_id or e.lease_epoch != first_epoch[e.instance]
        ],
    )
    verdict.add("errors in worker logs", [line for w in workers for line in w.log_errors()])

    # The scenario did what it says: blocks of 3 s, with the other worker busy meanwhile.
    spans = [
        (e.started_at, e.finished_at)
        for e in blocked_runs
        if e.activity == "ch_block" and e.finished_at is not None
    ]
    during = [
        e
        for e in entries
        if e.worker_id in steady_ids and any(a <= e.started_at <= b for a, b in spans)
    ]
    report.record(
        "b. event loop blocked 3 s > lease 1 s",
        store,
        runs=blocks,
        violations=verdict.count,
        detail=(
            f"{blocks} blocks ({'/'.join(HOWS)}) in one worker, lease {LEASE:g}s, "
            f"{len(during)} steps run meanwhile by the other worker, {len(items)} workflows; "
            f"{found.summary()}"
        ),
    )
    assert not verdict.found, verdict.text()
    assert len(spans) == blocks and all(b - a >= BLOCK * 0.95 for a, b in spans), spans
    assert during, "the other worker ran nothing while the loop was blocked"
