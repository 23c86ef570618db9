"""Sagas whose compensation keeps failing, sagas cancelled twice, and SIGKILLs meanwhile.

Two worker processes serve ``ch_order`` sagas (reserve, compensated by release; charge,
compensated by refund; then ship), SQLite:

* *broken* sagas: shipping fails, and their refund fails on every attempt (the marker
  ``broken:<id>``): after the refund's retries the saga must record
  ``CompensationFailed``, fire the alert once and park as ``failed`` with
  ``needs_intervention`` -- without undoing the older reservation meanwhile (LIFO). The
  operator then clears the marker and calls ``retry_compensation()``: refund, then
  release, and the saga ends ``compensated``;
* *cancelled* sagas: cancelled once while shipping (a slow step), which starts the
  rollback, and once more while a compensation runs, which must not interrupt it.

Meanwhile the worker running a compensation is SIGKILLed (and restarted at once), in
both phases. Checked: every saga ends ``compensated``; every completed step was undone
by exactly one successful compensation call, recorded by one ``CompensationStarted`` and
one ``StepCompensated``, in reverse order (never skipped, never twice); each broken saga
recorded exactly one ``CompensationFailed``, one intervention request and one
resolution, and ran no release before its refund succeeded; each cancelled saga recorded
both cancellations, the second one during its rollback; the oracle (one result per
call, repeats only of calls in flight at a kill, never two live executions at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from stalwart import Engine
from tests.chaos import oracle, report
from tests.chaos import scenarios_app as app

from .support import AppWorker, Fleet, env_seed, sqlite_url

WORKERS = 2
SHIP_SECONDS = 1.5
UNDO_SECONDS = 0.3
BROKEN_UNDO_SECONDS = 0.15
UNDOS = ("ch_refund", "ch_release")

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


def sizes() -> tuple[int, int]:
    """(sagas of each kind, kills per phase)."""
    return (12, 3) if report.long_runs() else (4, 1)


async def wait_for(
    what: str, condition: Callable[[], Awaitable[bool]], timeout: float, fleet: Fleet
) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds (or a dead worker)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        fleet.check_alive()
        await asyncio.sleep(0.01)


async def test_compensations_are_never_skipped_nor_repeated(tmp_path: Path) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    per_kind, kills_per_phase = sizes()
    url, log = sqlite_url(tmp_path / "store.db"), tmp_path / "oracle.db"
    oracle.init(log)
    broken = [f"broken-{n}" for n in range(per_kind)]
    cancelled = [f"cancel-{n}" for n in range(per_kind)]
    for i in broken:
        oracle.set_marker(log, f"broken:{i}")
    verdict = oracle.Verdict()
    retried: list[float] = []
    poisoned: list[tuple[str, object]] = []

    def make(slot: int, incarnation: int) -> AppWorker:
        return AppWorker(
            url, log, tmp_path / f"worker-{incarnation}.log", name=f"w{slot}", step_seconds=0.02
        )

    fleet = Fleet(make, WORKERS)

    async def kill_during_compensation(among: list[str]) -> None:
        """SIGKILL the worker running a compensation of one of ``among`` (restarted)."""
        victim: list[int] = []

        async def running_undo() -> bool:
            pids = {w.pid: s for s, w in enumerate(fleet.current)}
            hits = [
                pids[e.pid]
                for e in oracle.running(log)
                if e.activity in UNDOS and e.instance in among and e.pid in pids
            ]
            victim[:] = hits[:1]
            return bool(hits)

        await wait_for("a running compensation", running_undo, 30, fleet)
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        await fleet.kill(victim[0], client)
        await fleet.wait_ready(client)

    async def cancel_twice(instance: str) -> None:
        """Cancel while shipping, then again while a compensation runs."""

        async def running(activities: tuple[str, ...]) -> bool:
            return any(
                e.instance == instance and e.activity in activities for e in oracle.running(log)
            )

        await wait_for(f"{instance} shipping", lambda: running(("ch_ship",)), 30, fleet)
        await client.get_handle(instance).cancel("the customer changed their mind")
        await wait_for(f"{instance} compensating", lambda: running(UNDOS), 30, fleet)
        await client.get_handle(instance).cancel("the customer insists")

    async def statuses() -> dict[str, tuple[str, bool]]:
        items = (await client.list(limit=10_000)).items
        return {d.id: (d.status, d.needs_intervention) for d in items}

    async def settle(what: str, goal: Callable[[str, tuple[str, bool]], bool]) -> None:
        """Wait until every saga reached ``goal``. One parked as poison meanwhile is
        counted (nothing it ran killed a worker: a violation) and resumed."""

        async def settled() -> bool:
            now = await statuses()
            return all(goal(i, v) or v[0] == "suspended" for i, v in now.items())

        while True:
            await wait_for(what, settled, 60, fleet)
            stuck = [d for d in (await client.list(limit=10_000)).items if d.status == "suspended"]
            if not stuck:
                return
            for d in stuck:
                poisoned.append((d.id, (d.error or {}).get("type")))
                await client.get_handle(d.id).resume()

    try:
        async with Engine(url, worker=False, workflows=app.WORKFLOWS) as client:
            await fleet.start(client)
            for n, i in enumerate(broken):
                await app.ch_order.start(client, n, "fail", 0.0, BROKEN_UNDO_SECONDS, id=i)
            for n, i in enumerate(cancelled):
                await app.ch_order.start(client, n, "slow", SHIP_SECONDS, UNDO_SECONDS, id=i)
            cancels = asyncio.gather(*(cancel_twice(i) for i in cancelled))
            for _ in range(kills_per_phase):
                await kill_during_compensation(broken + cancelled)
            await cancels

            await settle(
                "the sagas to park or compensate",
                lambda i, v: v == ("failed", True) if i in broken else v[0] == "compensated",
            )
            parked = await oracle.load_timelines(client)
            early = [
                e for e in oracle.read(log) if e.instance in broken and e.activity == "ch_release"
            ]
            # The operator repairs the refund service and resumes every parked rollback.
            for i in broken:
                oracle.clear_marker(log, f"broken:{i}")
            reopened_at = time.time()
            reopened = [await client.get_handle(i).retry_compensation() for i in broken]
            for _ in range(kills_per_phase):
                await kill_during_compensation(broken)

            await settle("every saga to compensate", lambda i, v: v[0] == "compensated")
            retried.append(time.time() - reopened_at)
            final_statuses = await statuses()
            final = await oracle.load_timelines(client)
            exits = await fleet.terminate(client)
    finally:
        fleet.cleanup()

    entries = oracle.read(log)
    found = oracle.check_oracle(entries, final, fleet.kills)
    verdict.merge(found)
    verdict.add(
        "compensations skipped, repeated or out of order",
        oracle.check_compensations(final, app.UNDO_OF),
    )
    verdict.add(
        "sagas not compensated or still flagged (id, status, needs_intervention)",
        [(i, *v) for i, v in final_statuses.items() if v != ("compensated", False)],
    )
    verdict.add(
        "retry_compensation() refused",
        [i for i, ok in zip(broken, reopened, strict=True) if not ok],
    )
    verdict.add("releases run before the failed refund was repaired", early)
    for i in broken:
        kinds = final[i].kinds
        counts = [
            kinds.count(k)
            for k in ("CompensationFailed", "InterventionRequired", "InterventionResolved")
        ]
        if counts != [1, 1, 1]:
            verdict.fail(f"{i}: (failed, intervention required, resolved) recorded {counts}")
        alerts = [c for c in final[i].calls.values() if c.name == oracle.ALERT_ACTIVITY]
        if len(alerts) != 1 or len(alerts[0].outcomes) != 1:
            verdict.fail(f"{i}: the alert was not recorded once: {alerts}")
        if parked[i].undo_failed != {1: 1} or any(r.undone for r in parked[i].calls.values()):
            verdict.fail(f"{i}: parked with {dict(parked[i].undo_failed)} failures")
    for i in cancelled:
        t = final[i]
        if t.kinds.count("CancelRequested") != 2:
            verdict.fail(f"{i}: {t.kinds.count('CancelRequested')} cancellations recorded")
        ship = [cmd for cmd, c in t.calls.items() if c.name == "ch_ship"]
        if ship != sorted(t.abandoned):
            verdict.fail(f"{i}: the cancelled shipment {ship} is not the abandoned call")
    # Parking is logged as an error on purpose (an operator must act); counted above.
    verdict.add(
        "errors in worker logs",
        fleet.log_errors(expected=("needs intervention:", "suspending poison workflow")),
    )
    verdict.add("workers that did not stop cleanly (exit status)", [c for c in exits if c])
    # The scenario did what it says: the second cancel came during the rollback.
    during = [
        i
        for i in cancelled
        if final[i].kinds.index("CompensationStarted")
        < len(final[i].kinds) - 1 - final[i].kinds[::-1].index("CancelRequested")
        < len(final[i].kinds) - 1 - final[i].kinds[::-1].index("StepCompensated")
    ]
    report.record(
        "e. compensation fails / cancelled twice",
        "sqlite",
        runs=2 * per_kind,
        violations=verdict.count,
        recovery_seconds=retried,
        detail=(
            f"{per_kind} parked then retried, {per_kind} cancelled twice "
            f"({len(during)} during rollback), {len(fleet.kills)} kills during compensations; "
            f"{found.summary()}"
        ),
    )
    assert not verdict.found, verdict.text()
    assert len(during) == per_kind, "a second cancellation did not land during the rollback"
