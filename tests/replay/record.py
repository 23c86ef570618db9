"""Record golden histories into tests/replay/histories/ (run by hand, never in the suite).

    .venv/bin/python -m tests.replay.record

Each file is one run's history exported with ``history_to_json``. Fixtures are part of the
compatibility contract: never edit an old one; when the event schema or command order
changes on purpose, add new fixtures next to the old ones.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

from examples.orders import LineItem, Order, process_order
from examples.user_trial import DAY, disable_trial_features, send_trial_email, user_trial

from stalwart import Engine
from stalwart._engine.events import history_to_json
from stalwart.testing import TestEngine

HERE = Path(__file__).parent / "histories"


async def record_order() -> None:
    import os
    import tempfile

    ledger = Path(tempfile.mkdtemp()) / "ledger.db"
    os.environ["ORDER_DEMO_LEDGER"] = str(ledger)
    from examples.orders import init_ledger

    init_ledger(str(ledger))
    async with Engine("memory://", workflows=[process_order]) as engine:
        order = Order("golden-1", "ada@example.com", [LineItem("book", 2, Decimal("12.50"))])
        handle = await process_order.start(engine, order, id="golden-order")
        await handle.result(timeout=30)
        save("process_order_v1_completed", await handle.history())


async def record_trial() -> None:
    async with TestEngine(
        workflows=[user_trial],
        activities=[send_trial_email, disable_trial_features],
        mocks={send_trial_email: lambda u, k: None, disable_trial_features: lambda u: None},
    ) as env:
        handle = await user_trial.start(env, "golden-user", id="golden-trial")
        await env.sleep(9 * DAY)
        await handle.signal("extend")
        await env.sleep(6 * DAY)
        await handle.signal("upgrade", "pro")
        await handle.result(timeout=30)
        save("user_trial_v1_extended_upgraded", await handle.history())


def save(name: str, history: list[object]) -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(history_to_json(history), indent=1) + "\n")  # type: ignore[arg-type]
    print("wrote", path)


async def main() -> None:
    await record_order()
    await record_trial()


if __name__ == "__main__":
    asyncio.run(main())
