"""Queued requests for an endpoint are served in the order they came, whichever sample sent them,
moved ahead by a bounded lead for the steps of its work the caller has done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dpe.llm import EndpointLimiter

Call = Callable[[str], Awaitable[None]]


def served_in_turn(arrivals: Callable[[Call], Awaitable[list[asyncio.Task[None]]]], late: tuple[str, ...] = ()) -> list[str]:
    """With the only slot of an endpoint held, `arrivals` queues named calls (returning their tasks);
    then the slot is freed, and its holder asks again at once for each of the `late` names (before the
    woken waiter has run). The names in the order the calls got the slot."""

    async def scenario() -> list[str]:
        limiter = EndpointLimiter(max_concurrency=1)
        served: list[str] = []
        release = asyncio.Event()

        async def call(name: str) -> None:
            async with limiter.slot(10):
                served.append(name)
                if name == "holder":
                    await release.wait()
            if name == "holder":
                for newcomer in late:
                    await call(newcomer)

        holder = asyncio.create_task(call("holder"))
        await asyncio.sleep(0)
        queued = await arrivals(call)
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, *queued, return_exceptions=True), timeout=5)
        return served[1:]

    return asyncio.run(scenario())


def test_queued_calls_are_served_first_come_first_served() -> None:
    async def arrivals(call: Call) -> list[asyncio.Task[None]]:
        tasks = []
        for name in ("5", "3", "9", "1"):
            tasks.append(asyncio.create_task(call(name)))
            await asyncio.sleep(0)
        return tasks

    assert served_in_turn(arrivals) == ["5", "3", "9", "1"]


def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    async def arrivals(call: Call) -> list[asyncio.Task[None]]:
        doomed = asyncio.create_task(call("doomed"))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        return [doomed, asyncio.create_task(call("next"))]

    assert served_in_turn(arrivals) == ["next"]


def test_a_newcomer_does_not_pass_a_waiter_when_a_slot_frees() -> None:
    async def arrivals(call: Call) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(call("queued"))]

    assert served_in_turn(arrivals, late=("late",)) == ["queued", "late"]


def test_a_request_further_along_passes_earlier_arrivals_by_at_most_its_lead() -> None:
    async def scenario(gap: float) -> list[str]:
        now = [0.0]
        limiter = EndpointLimiter(max_concurrency=1, clock=lambda: now[0])
        async with limiter.slot(10):
            now[0] += 10.0  # one finished request sets the typical hold: 10 s
        assert limiter.queue_lead(0) == 0.0
        assert limiter.queue_lead(2) == 10.0, "half a typical hold per step"
        served: list[str] = []
        release = asyncio.Event()

        async def call(name: str, progress: int) -> None:
            async with limiter.slot(10, progress=progress):
                served.append(name)
                if name == "holder":
                    await release.wait()

        holder = asyncio.create_task(call("holder", 0))
        await asyncio.sleep(0)
        first_step = asyncio.create_task(call("first step", 0))
        await asyncio.sleep(0)
        now[0] += gap
        third_step = asyncio.create_task(call("third step", 2))
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, first_step, third_step), timeout=5)
        return served[1:]

    assert asyncio.run(scenario(9.0)) == ["third step", "first step"], "within its lead: served first"
    assert asyncio.run(scenario(11.0)) == ["first step", "third step"], "beyond its lead: waits its turn"


def test_without_a_finished_request_there_is_no_lead() -> None:
    limiter = EndpointLimiter(max_concurrency=4)
    assert limiter.queue_lead(4) == 0.0
