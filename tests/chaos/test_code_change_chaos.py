"""1,000 in-flight instances when a deploy swaps two steps: they park, then a patch saves them.

``cc_order`` (``outage_app``) v1 runs steps 1 and 2, waits for the signal ``go``, then
runs step 3. 1,000 instances (100 in ``make test``) are started on a v1 worker (SQLite)
and all reach the wait, with steps 1 and 2 in their histories. The worker is stopped
gracefully (it hands every instance back) and a worker with a careless in-place change
starts: steps 2 and 3 swapped, same name and version. Every instance is signalled.

* Every instance must park as ``suspended``, its error a ``NonDeterminismError`` naming
  ``cc_step2`` (what history holds) and ``cc_step3`` (what the code asked for); no step
  ran again and step 3 never ran (audit log).
* Then the swapped worker is stopped and a worker with the safe change starts: the swap
  guarded by ``ctx.patched("swap-steps-2-3")``. Every parked instance is resumed, and
  10 % more instances are started and signalled on the new code. All must complete: old
  histories replay v1's branch (result ``[1, 2, 3]``, no patch marker), new instances
  take the new one (``[1, 3, 2]``, with the marker). Over the whole scenario each step
  of each instance ran exactly once, in its branch's order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from stalwart import Engine
from tests.chaos.report import long_runs, record

from . import outage_oracle
from .outage_app import PATCH, SIGNAL
from .outage_support import (
    AppProcess,
    Verdict,
    all_instances,
    check_calls,
    check_statuses,
    count_status,
    load_histories,
    row_on_abort,
    settled,
    wait_until,
)
from .support import sqlite_url

SCENARIO = "in-flight instances when two steps are swapped"

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]

BATCH = 100
T = TypeVar("T")


async def in_batches(coros: Sequence[Awaitable[T]], size: int = BATCH) -> list[T]:
    """Await ``coros`` ``size`` at a time (a thousand at once would only queue)."""
    out: list[T] = []
    for first in range(0, len(coros), size):
        out += await asyncio.gather(*coros[first : first + size])
    return out


async def test_swapped_steps_park_in_flight_instances_and_a_patch_completes_them(
    tmp_path: Path,
) -> None:
    n_old = 1_000 if long_runs() else 100
    with row_on_abort(SCENARIO, "sqlite", n_old):
        n_new = n_old // 10
        old = [f"old-{i:04d}" for i in range(n_old)]
        new = [f"new-{i:04d}" for i in range(n_new)]
        url = sqlite_url(tmp_path / "store.db")
        oracle = tmp_path / "oracle.db"
        outage_oracle.init(oracle)
        verdict = Verdict()
        procs: list[AppProcess] = []
        timings: dict[str, float] = {}

        def spawn(app: str) -> AppProcess:
            proc = AppProcess(
                url=url,
                oracle=oracle,
                app=app,
                log=tmp_path / f"{app}.log",
                poll=0.1,
                concurrency=16,
            )
            procs.append(proc)
            return proc

        def alive() -> None:
            assert procs[-1].alive(), f"worker died:\n{procs[-1].log_text()[-4000:]}"

        try:
            async with Engine(url, worker=False, workflows=[], activities=[]) as client:
                # 1. The deployed code: every instance waits for `go` after steps 1 and 2.
                began = time.monotonic()
                v1 = spawn("code-v1")
                await v1.wait_ready(client)
                await in_batches(
                    [client.start_by_name("cc_order", [i], id=wf) for i, wf in enumerate(old)]
                )

                async def all_waiting() -> bool:
                    items = (await all_instances(client)).values()
                    return sum(d.history_length >= 5 for d in items) >= n_old

                await wait_until(
                    all_waiting, 300, "every instance to wait for the signal", check=alive
                )
                assert await v1.terminate() == 0, v1.log_text()[-4000:]
                timings["v1"] = time.monotonic() - began

                # 2. The careless deploy: steps 2 and 3 swapped in place; signal everyone.
                began = time.monotonic()
                swapped = spawn("code-swapped")
                await swapped.wait_ready(client)
                await in_batches([client.get_handle(wf).signal(SIGNAL) for wf in old])

                async def all_parked() -> bool:
                    return await count_status(client, "suspended") >= n_old

                await wait_until(all_parked, 300, "every instance to park", check=alive)
                parked = await all_instances(client)
                for wf in old:
                    d = parked[wf]
                    error = d.error or {}
                    message = str(error.get("message", ""))
                    if d.status != "suspended" or error.get("type") != "NonDeterminismError":
                        verdict.add(f"{wf} is {d.status} with error {error}")
                    elif not all(part in message for part in ("event #3", "cc_step2", "cc_step3")):
                        verdict.add(f"{wf}: the divergence is not named: {message!r}")
                ran = outage_oracle.read(oracle)
                if len(ran) != 2 * n_old or any(ex.step == 3 for ex in ran):
                    per_step = Counter(ex.step for ex in ran)
                    verdict.add(
                        f"while parked: executions per step {dict(per_step)} (want 1, 2 only)"
                    )
                assert await swapped.terminate() == 0, swapped.log_text()[-4000:]
                timings["swapped"] = time.monotonic() - began

                # 3. The fix: the swap behind ctx.patched(); resume the parked, start new ones.
                began = time.monotonic()
                patched = spawn("code-patched")
                await patched.wait_ready(client)
                resumed = await in_batches([client.get_handle(wf).resume() for wf in old])
                if not all(resumed):
                    verdict.add(f"{resumed.count(False)} parked instances could not be resumed")
                await in_batches(
                    [client.start_by_name("cc_order", [i], id=wf) for i, wf in enumerate(new)]
                )

                async def new_waiting() -> bool:
                    done = {ex.instance for ex in outage_oracle.read(oracle) if ex.step == 3}
                    return all(wf in done for wf in new)

                await wait_until(new_waiting, 300, "new instances to run step 3", check=alive)
                await in_batches([client.get_handle(wf).signal(SIGNAL) for wf in new])

                async def all_done() -> bool:
                    return await settled(client, n_old + n_new)

                await wait_until(all_done, 300, "every instance to complete", check=alive)
                timings["patched"] = time.monotonic() - began
                final = await all_instances(client)
                verdict.merge(check_statuses(final, [*old, *new]))
                ended = [wf for wf in [*old, *new] if final[wf].status == "completed"]
                results = await in_batches(
                    [client.get_handle(wf).result(timeout=30) for wf in ended]
                )
                histories = await load_histories(client, [*old, *new])
                assert await patched.terminate() == 0, patched.log_text()[-4000:]
        finally:
            for proc in procs:
                proc.cleanup()

        executions = outage_oracle.read(oracle)
        verdict.merge(
            check_calls(
                {wf: {1, 2, 3} for wf in [*old, *new]},
                histories,
                executions,
                unfinished={*old, *new} - set(ended),
            )
        )
        want = {**{wf: [1, 2, 3] for wf in old}, **{wf: [1, 3, 2] for wf in new}}
        for wf, got in zip(ended, results, strict=True):
            if got != want[wf]:
                verdict.add(f"{wf} returned {got}, expected {want[wf]}")
        order: dict[str, list[int]] = defaultdict(list)
        for ex in sorted(executions, key=lambda ex: ex.started_at):
            order[ex.instance].append(ex.step)
        for wf, steps in order.items():
            if steps != want[wf]:
                verdict.add(f"{wf} ran its steps in the order {steps}, expected {want[wf]}")
        for wf, history in histories.items():
            marked = any(
                h.kind == "MarkerRecorded" and PATCH in str(h.event.to_data().get("name"))
                for h in history
            )
            if marked != wf.startswith("new-"):
                verdict.add(f"{wf}: patch marker {'present' if marked else 'missing'}")
        tracebacks = [line for p in procs for line in p.log_lines("Traceback")]
        if tracebacks:
            verdict.add(f"{len(tracebacks)} tracebacks in the worker logs")

        detail = (
            f"{n_old} parked by the swap and resumed on the patch, {n_new} new; "
            f"{len(executions)} executions for {3 * (n_old + n_new)} steps; phases "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        )
        print(detail)
    record(
        SCENARIO,
        "sqlite",
        runs=n_old + n_new,
        violations=verdict.violations,
        detail=detail,
    )
    assert verdict.violations == 0, verdict.summary()
