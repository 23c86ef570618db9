"""Sagas under SIGKILL: 300 money transfers, 30% failing at their last step, five kills.

300 transfers between 20 accounts of the bank of ``examples/money_transfer.py`` run as
sagas (debit the source, compensated by crediting it back; credit the destination) in a
worker process on SQLite. A random 30% of them are refused at the credit, their last
step, so they compensate. Meanwhile the worker is SIGKILLed five times at random moments
and restarted each time (the new worker sees at once that the old pid is gone).

Afterwards: every saga ended ``completed`` (exactly the transfers not refused) or
``compensated`` (exactly the refused ones); the sum of all balances is unchanged; each
account's balance is its opening balance plus the entries the bank applied, and those
are exactly the effects of the completed transfers (plus debit and credit-back pairs
of the compensated ones). The bank's audit trail of executions, written by the
activities outside the engine, proves that no call (in particular no compensation) ran
twice except one in flight at a kill (``support.check_executions``).

``STALWART_TEST_SEED=<n>`` replays the transfers, the refusals and the kill moments.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from examples.money_transfer import (
    Transfer,
    add_fault,
    balances,
    count_executions,
    entries,
    executions,
    open_bank,
    transfer_money,
)

from stalwart import Engine

from .support import (
    Kill,
    WorkerProcess,
    all_histories,
    check_executions,
    env_seed,
    sqlite_url,
    wait_until,
)

N_TRANSFERS = 300
N_ACCOUNTS = 20
FAILING_SHARE = 0.30
OPENING = 5_000_000
"""Opening balance of each account, in cents: more than any run of debits can take."""
MAX_AMOUNT = 10_000
N_KILLS = 5
KILL_WINDOWS = ((0.04, 0.18), (0.22, 0.36), (0.40, 0.54), (0.58, 0.72), (0.76, 0.90))
"""Each kill happens once a random fraction (in its window) of the expected executions
is recorded in the bank's audit trail, plus a random delay of up to 40 ms, and once a
saga is in flight (running or compensating)."""
CONCURRENCY = 8
BATCH, BATCH_INTERVAL = 15, 0.1
"""The transfers are started 15 at a time every 0.1 s: a little faster than the worker
finishes them, so it is never idle at a kill, but compensations do not wait long."""
WORKER = {"before": 0.006, "after": 0.006, "lease": 5.0, "poll": 0.1}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def make_transfers(rng: random.Random) -> tuple[list[Transfer], set[str]]:
    """The transfers, and the ids of those the bank will refuse at the credit."""
    accounts = [f"acct-{n:02d}" for n in range(N_ACCOUNTS)]
    transfers = []
    for n in range(N_TRANSFERS):
        source, destination = rng.sample(accounts, 2)
        transfers.append(Transfer(f"tr-{n:03d}", source, destination, rng.randint(1, MAX_AMOUNT)))
    refused = {t.id for t in rng.sample(transfers, round(FAILING_SHARE * N_TRANSFERS))}
    return transfers, refused


async def place(client: Engine, transfers: list[Transfer]) -> None:
    """Start the transfers as a steady stream (customers keep sending money), so that
    forward steps and compensations are interleaved rather than queued in one burst."""
    for n in range(0, len(transfers), BATCH):
        batch = transfers[n : n + BATCH]
        await asyncio.gather(*(transfer_money.start(client, t, id=t.id) for t in batch))
        await asyncio.sleep(BATCH_INTERVAL)


async def test_transfers_survive_five_sigkills_with_balances_conserved(tmp_path: Path) -> None:
    seed = env_seed()
    print(f"STALWART_TEST_SEED={seed}")
    rng = random.Random(seed)
    began = time.monotonic()
    db, bank = tmp_path / "store.db", tmp_path / "bank.db"
    transfers, refused = make_transfers(rng)
    opening = {f"acct-{n:02d}": OPENING for n in range(N_ACCOUNTS)}
    open_bank(bank, opening)
    for transfer_id in sorted(refused):
        add_fault(bank, transfer_id, "credit", "refuse")
    # debit + credit for each transfer, + a credit-back for each refused one
    expected_executions = 2 * N_TRANSFERS + len(refused)
    targets = [int(rng.uniform(lo, hi) * expected_executions) for lo, hi in KILL_WINDOWS]
    delays = [rng.uniform(0.0, 0.04) for _ in KILL_WINDOWS]
    workers: list[WorkerProcess] = []
    kills: list[Kill] = []

    def spawn() -> WorkerProcess:
        log = tmp_path / f"worker-{len(workers)}.log"
        worker = WorkerProcess(db, bank, log, concurrency=CONCURRENCY, **WORKER)
        workers.append(worker)
        return worker

    try:
        async with Engine(sqlite_url(db), worker=False, workflows=[transfer_money]) as client:
            worker = spawn()
            await worker.wait_ready(client)
            placing = asyncio.create_task(place(client, transfers))

            async def in_flight() -> bool:
                page = await client.list(limit=10_000)
                return any(d.status in ("running", "compensating") for d in page.items)

            for target, delay in zip(targets, delays, strict=True):
                running = worker

                async def reached(target: int = target) -> bool:
                    return count_executions(bank) >= target

                await wait_until(reached, 60, f"{target} executions", check=running.check_alive)
                await asyncio.sleep(delay)
                # A worker that caught up with the stream is idle for a moment: wait for
                # a saga in flight, so that every kill interrupts something.
                await wait_until(in_flight, 60, "a saga in flight", check=running.check_alive)
                running.check_alive()
                kills.append(Kill(running.pid, await running.kill()))
                worker = spawn()
                await worker.wait_ready(client)

            await placing
            last = worker

            async def all_ended() -> bool:
                page = await client.list(limit=10_000)
                return sum(d.status in ("completed", "compensated") for d in page.items) == len(
                    transfers
                )

            await wait_until(all_ended, 60, "every saga to end", check=last.check_alive)
            statuses = {d.id: d.status for d in (await client.list(limit=10_000)).items}
            assert await last.terminate() == 0, last.log_text()
            final = await all_histories(client)
    finally:
        for w in workers:
            w.cleanup()

    # Every saga ended completed or compensated: exactly the refused ones compensated.
    expected = {t.id: "compensated" if t.id in refused else "completed" for t in transfers}
    wrong = {i: (statuses.get(i), want) for i, want in expected.items() if statuses.get(i) != want}
    assert not wrong, f"(got, expected) statuses: {dict(list(wrong.items())[:10])}"

    # Money is conserved, and each balance is its opening plus the applied entries,
    # which are exactly the effects of the sagas' outcomes.
    closing = balances(bank)
    assert sum(closing.values()) == sum(opening.values())
    applied = entries(bank)
    by_account: dict[str, int] = defaultdict(int)
    for entry in applied:
        by_account[entry.account] += entry.delta
    assert closing == {a: opening[a] + by_account[a] for a in opening}
    want_balance = dict(opening)
    for t in transfers:
        if t.id not in refused:
            want_balance[t.source] -= t.amount
            want_balance[t.destination] += t.amount
    assert closing == want_balance
    ops: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in applied:
        ops[entry.transfer_id][entry.operation] += 1
    for t in transfers:
        want_ops = {"debit": 1, "credit_back": 1} if t.id in refused else {"debit": 1, "credit": 1}
        assert ops[t.id] == want_ops, f"{t.id}: entries {dict(ops[t.id])}, want {want_ops}"

    # The audit trail against the histories: re-runs only at kills (compensations too).
    report = check_executions(executions(bank), final, kills)
    assert len(kills) == N_KILLS
    for k in kills:
        assert k.in_flight, f"the kill of {k.pid} found nothing in flight"
    for w in workers:
        assert not w.log_errors(), f"worker {w.pid} logged errors:\n{w.log_text()[-4000:]}"
    print(
        f"{N_TRANSFERS} sagas ({len(refused)} compensated), {N_KILLS} kills in "
        f"{time.monotonic() - began:.1f}s: {report.executions} executions, "
        f"{report.reruns} re-runs (per kill {report.per_kill}), of which "
        f"{report.compensation_reruns} compensations; compensations in flight at the kills "
        f"{report.compensations_in_flight}; {report.duplicates_absorbed} re-runs found their "
        "idempotency key and applied nothing"
    )
