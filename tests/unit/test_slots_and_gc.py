"""The worker's FIFO slot semaphore and its garbage-collector threshold hold."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from stalwart import WorkerOptions
from stalwart.errors import ConfigurationError
from stalwart.runtime import gc_tuning
from stalwart.runtime.slots import Slots


async def test_slots_limit_holders_and_serve_waiters_in_order() -> None:
    slots = Slots(2)
    order: list[int] = []
    running = 0
    peak = 0

    async def user(i: int) -> None:
        nonlocal running, peak
        async with slots:
            running += 1
            peak = max(peak, running)
            order.append(i)
            await asyncio.sleep(0.001)
            running -= 1

    await asyncio.gather(*(user(i) for i in range(50)))
    assert peak == 2
    assert order == list(range(50))
    assert slots.free == 2


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release()
    assert slots.free == 1


async def test_a_waiter_cancelled_after_the_handover_passes_the_slot_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # hands the slot to `first`, whose task has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the slot went on to the next waiter
    slots.release()
    assert slots.free == 1


def test_slots_refuse_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)


@pytest.fixture
def default_threshold() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_gc_hold_raises_the_first_threshold_until_the_last_release(
    default_threshold: tuple[int, int, int],
) -> None:
    gc_tuning.hold(50_000)
    gc_tuning.hold(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)
    gc_tuning.release()
    assert gc.get_threshold() == (50_000, 10, 10)
    gc_tuning.release()
    assert gc.get_threshold() == default_threshold


def test_gc_release_keeps_a_threshold_someone_else_chose_meanwhile(
    default_threshold: tuple[int, int, int],
) -> None:
    gc_tuning.hold(50_000)
    gc.set_threshold(1234, 5, 5)
    gc_tuning.release()
    assert gc.get_threshold() == (1234, 5, 5)


def test_gc_hold_never_lowers_a_higher_threshold(
    default_threshold: tuple[int, int, int],
) -> None:
    gc.set_threshold(100_000, 10, 10)
    gc_tuning.hold(50_000)
    assert gc.get_threshold() == (100_000, 10, 10)
    gc_tuning.release()
    assert gc.get_threshold() == (100_000, 10, 10)


def test_gc_release_without_hold_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without a matching hold"):
        gc_tuning.release()


def test_worker_options_validate_the_gc_threshold() -> None:
    with pytest.raises(ConfigurationError, match="gc_threshold"):
        WorkerOptions(gc_threshold=0)
    assert WorkerOptions(gc_threshold=None).gc_threshold is None


async def test_a_running_engine_holds_the_threshold_and_gives_it_back(
    default_threshold: tuple[int, int, int],
) -> None:
    from stalwart import Engine

    async with Engine("memory://", workflows=[], activities=[]):
        assert gc.get_threshold()[0] == 50_000
    assert gc.get_threshold() == default_threshold
