"""Queued requests for an endpoint are served in the order they came, whichever sample sent them."""

from __future__ import annotations

import asyncio

from dpe.llm import EndpointLimiter, FairSlots


def test_free_slots_go_to_waiters_in_the_order_they_came() -> None:
    async def scenario() -> list[int]:
        slots = FairSlots(1)
        await slots.acquire()
        served: list[int] = []

        async def wait(name: int) -> None:
            await slots.acquire()
            served.append(name)
            slots.release()

        waiters = []
        for name in (5, 3, 9, 1):
            waiters.append(asyncio.create_task(wait(name)))
            await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*waiters)
        return served

    assert asyncio.run(scenario()) == [5, 3, 9, 1]


def test_a_newcomer_does_not_pass_a_waiter_when_a_slot_frees() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(1)
        await slots.acquire()
        served: list[str] = []

        async def wait(name: str) -> None:
            await slots.acquire()
            served.append(name)
            slots.release()

        queued = asyncio.create_task(wait("queued"))
        await asyncio.sleep(0)
        slots.release()
        late = asyncio.create_task(wait("late"))
        await asyncio.gather(queued, late)
        return served

    assert asyncio.run(scenario()) == ["queued", "late"]


def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    async def scenario() -> bool:
        slots = FairSlots(1)
        await slots.acquire()
        doomed = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        slots.release()
        await asyncio.wait_for(slots.acquire(), timeout=1)
        return True

    assert asyncio.run(scenario())


def test_the_limiter_serves_queued_calls_first_come_first_served() -> None:
    async def scenario() -> list[int]:
        limiter = EndpointLimiter(max_concurrency=1)
        order: list[int] = []
        gate = asyncio.Event()

        async def call(name: int) -> None:
            async with limiter.slot(10):
                order.append(name)
                await gate.wait()

        tasks = []
        for name in (0, 7, 2, 4):
            tasks.append(asyncio.create_task(call(name)))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == [0, 7, 2, 4]
