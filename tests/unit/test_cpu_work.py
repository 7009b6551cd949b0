"""CPU work runs in worker threads by the calling sample's rank, oldest sample first."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dpe import cpu_work
from dpe.cpu_work import SAMPLE_RANK, RankedThreads, run_ranked


def test_queued_work_goes_lowest_priority_first_and_first_come_among_equals() -> None:
    pool = RankedThreads(workers=1)
    gate = threading.Event()
    done: list[str] = []
    blocker = pool.submit(0, gate.wait)
    futures = [pool.submit(priority, lambda name=name: done.append(name)) for priority, name in ((5, "e"), (1, "a"), (3, "c"), (1, "b"))]
    gate.set()
    for future in (blocker, *futures):
        future.result(timeout=5)
    assert done == ["a", "b", "c", "e"]


def test_a_cancelled_waiter_skips_its_work_and_errors_reach_the_caller() -> None:
    pool = RankedThreads(workers=1)
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(0, gate.wait)
    skipped = pool.submit(1, lambda: ran.append("skipped"))
    failing = pool.submit(2, lambda: 1 / 0)
    assert skipped.cancel()
    gate.set()
    blocker.result(timeout=5)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    assert ran == []


def test_run_ranked_queues_by_the_callers_sample_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = RankedThreads(workers=1)
    monkeypatch.setattr(cpu_work, "RANKED", pool)
    gate = threading.Event()
    blocker = pool.submit(0, gate.wait)

    async def scenario() -> list[int]:
        order: list[int] = []

        async def sample(priority: int) -> None:
            SAMPLE_RANK.set(priority)
            await run_ranked(order.append, priority)

        jobs = [asyncio.ensure_future(sample(priority)) for priority in (3, 1, 2)]
        await asyncio.sleep(0.05)  # every sample has queued its work behind the blocker
        gate.set()
        await asyncio.gather(*jobs)
        return order

    assert asyncio.run(scenario()) == [1, 2, 3]
    blocker.result(timeout=5)
