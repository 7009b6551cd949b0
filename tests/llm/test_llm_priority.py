"""Queued requests for an endpoint are served oldest work first."""

from __future__ import annotations

import asyncio

from dpe.llm import REQUEST_PRIORITY, EndpointLimiter, PrioritySlots


def test_free_slots_go_to_the_lowest_priority_first() -> None:
    async def scenario() -> list[int]:
        slots = PrioritySlots(1)
        await slots.acquire(0)
        served: list[int] = []

        async def wait(priority: int) -> None:
            await slots.acquire(priority)
            served.append(priority)
            slots.release()

        waiters = [asyncio.create_task(wait(p)) for p in (5, 3, 9, 1)]
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*waiters)
        return served

    assert asyncio.run(scenario()) == [1, 3, 5, 9]


def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    async def scenario() -> bool:
        slots = PrioritySlots(1)
        await slots.acquire(0)
        doomed = asyncio.create_task(slots.acquire(1))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        slots.release()
        await asyncio.wait_for(slots.acquire(2), timeout=1)
        return True

    assert asyncio.run(scenario())


def test_the_limiter_reads_the_priority_of_the_calling_task() -> None:
    async def scenario() -> list[int]:
        limiter = EndpointLimiter(max_concurrency=1)
        order: list[int] = []
        gate = asyncio.Event()

        async def call(priority: int) -> None:
            REQUEST_PRIORITY.set(priority)
            async with limiter.slot(10):
                order.append(priority)
                await gate.wait()

        first = asyncio.create_task(call(0))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(call(p)) for p in (7, 2, 4)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *rest)
        return order

    assert asyncio.run(scenario()) == [0, 2, 4, 7]
