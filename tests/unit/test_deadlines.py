"""One timer for every call in flight (worker/delivery/deadlines.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from worker.delivery.deadlines import RESOLUTION, Deadlines


async def call(deadlines: Deadlines, seconds: float) -> str:
    task = deadlines.enter()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if not deadlines.leave(task) or task.uncancel() > 0:
            raise
        return "deadline"
    else:
        return "answered"
    finally:
        deadlines.leave(task)


def test_calls_end_at_their_deadline_and_fast_ones_are_untouched() -> None:
    async def go() -> tuple[list[str], float, int]:
        deadlines = Deadlines(0.3)
        started = time.monotonic()
        results = await asyncio.gather(call(deadlines, 0.05), call(deadlines, 10), call(deadlines, 0.1))
        return list(results), time.monotonic() - started, deadlines.in_flight

    results, elapsed, left = asyncio.run(go())
    assert results == ["answered", "deadline", "answered"]
    assert 0.3 <= elapsed < 0.3 + RESOLUTION + 0.5
    assert left == 0


def test_a_cancellation_that_is_not_the_deadline_propagates() -> None:
    async def go() -> None:
        deadlines = Deadlines(30)
        task = asyncio.create_task(call(deadlines, 10))
        await asyncio.sleep(0.05)
        task.cancel()  # shutdown, not the deadline
        with pytest.raises(asyncio.CancelledError):
            await task
        assert deadlines.in_flight == 0

    asyncio.run(go())


def test_the_timer_runs_only_while_calls_are_in_flight() -> None:
    async def go() -> bool:
        deadlines = Deadlines(1)
        await call(deadlines, 0.01)
        await asyncio.sleep(RESOLUTION * 2)  # its one pending check runs and does not re-arm
        return deadlines._timer is None

    assert asyncio.run(go())
