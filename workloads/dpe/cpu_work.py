"""CPU work of many concurrent samples (decoding, hashing and encoding pictures), run in worker threads
in the order of the samples' rank rather than in the order it arrives.

With a hundred samples in flight, their downloads land together, and a first-come queue (asyncio's
default executor) makes every sample wait for every other sample's pictures before it can make its
next remote call, so the endpoint idles while they all wait. Ranked by the sample's start order
(`SAMPLE_RANK`), the oldest samples' pictures go first and their calls start while the younger
samples' pictures are still being processed.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

SAMPLE_RANK: contextvars.ContextVar[int] = contextvars.ContextVar("dpe_sample_rank", default=0)
"""Rank of the sample whose CPU work this is (lower goes first): the generation scheduler sets it to
each sample's start order. A context variable, which asyncio copies into every task a sample
spawns, so no call site has to pass it along."""

WORKERS = min(32, (os.cpu_count() or 1) + 4)
"""Worker threads, as many as asyncio's default executor has: the work releases the interpreter
lock in the image libraries for much of its time."""


class RankedThreads:
    """A thread pool whose queue hands out the lowest priority first (first come first among equals).

    Threads start on first use and live as daemons for the rest of the process.
    """

    def __init__(self, workers: int = WORKERS):
        self._workers = workers
        self._queue: list[tuple[int, int, Future[Any], Callable[[], Any]]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []

    def submit(self, priority: int, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            heapq.heappush(self._queue, (priority, next(self._order), future, call))
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name=f"dpe-cpu-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                _, _, future, call = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting while it queued
            try:
                future.set_result(call())
            except BaseException as error:  # handed to the awaiting caller, which raises it
                future.set_exception(error)


RANKED = RankedThreads()


async def run_ranked(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread, queued by the calling sample's rank."""
    return await asyncio.wrap_future(RANKED.submit(SAMPLE_RANK.get(), lambda: function(*args)))
