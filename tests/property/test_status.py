"""The instance status around a saga compensation that the workflow caught.

Found while building the property tests: ``WorkflowRun.compensating`` is set by the first
``CompensationStarted`` and never cleared, so every later step write carries
``active_status="compensating"``. A workflow that caught ``CompensatedError`` and went on
(here: waits for a signal) still shows ``compensating`` in ``describe()`` and ``list()``.
Architecture: "*While* compensating, the step writes carry ``active_status="compensating"``".
"""

from __future__ import annotations

from stalwart.testing import TestEngine

from .harness import poll_until, start_program
from .interpreter import ACTIVITIES, prop_interp
from .program import Fail, Saga, Step, WaitSignal


async def test_status_is_running_again_once_a_caught_compensation_ended() -> None:
    program = (Saga((Step(1), Fail())), WaitSignal("s0", 7))
    async with TestEngine(workflows=[prop_interp], activities=ACTIVITIES) as env:
        await start_program(env, program, "p", 1.0)
        handle = env.get_handle("p")

        async def waiting() -> bool:
            return bool(await handle.query("waiting") == "s0")

        await poll_until(waiting, 10.0, "the workflow to wait for s0")
        kinds = [h.kind for h in await handle.history()]
        assert "StepCompensated" in kinds  # the rollback is over; the code went on
        described = await handle.describe()
        await handle.signal("s0", 7)
        await handle.result(timeout=10)
    assert described.status == "running", described.current_step
