"""Limits per endpoint: one `EndpointLimiter` per base URL, shared by every client that calls it.

A limiter caps the requests in flight and keeps token buckets for requests and tokens per minute,
so many concurrent callers stay inside the provider's quota instead of finding it by 429s. One
limiter may be used from successive event loops (each `asyncio.run`), one at a time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from dpe.retry import AsyncSleep, Clock
from dpe.spec import ModelEndpoint

SECONDS_PER_MINUTE = 60.0
# Providers enforce per-minute quotas over much shorter windows (OpenAI: per second), so a bucket
# holds one second's worth rather than a whole minute's burst, which would be refused at start-up.
BURST_SECONDS = 1.0
# Waits shorter than this are treated as done: float rounding must not leave a waiter stranded on
# a remainder too small to move the clock.
CLOCK_TOLERANCE_SECONDS = 1e-6


class TokenBucket:
    """A per-minute quota as a bucket refilled continuously, holding `BURST_SECONDS` worth.

    A take larger than the bucket waits for a full bucket and leaves it in debt, so big requests
    still pass and the long-run rate stays at the quota. `settle` corrects a take after the fact.
    Callers serialise `take` (the limiter's pacing lock), which makes waiting first-come first-served.
    """

    def __init__(self, per_minute: int, clock: Clock):
        self._rate = per_minute / SECONDS_PER_MINUTE
        self._capacity = max(1.0, self._rate * BURST_SECONDS)
        self._level = self._capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now

    async def take(self, amount: float, sleep: AsyncSleep) -> None:
        needed = min(amount, self._capacity)
        self._refill()
        while (wait := (needed - self._level) / self._rate) > CLOCK_TOLERANCE_SECONDS:
            await sleep(wait)
            self._refill()
        self._level -= amount

    def settle(self, extra: float) -> None:
        """Takes `extra` more (or gives back, when negative) once the real amount is known."""
        self._refill()
        self._level = min(self._capacity, self._level - extra)


LEAD_PER_STEP = 0.5
"""How far a request moves ahead in the queue for each step of its work its caller has done, in
typical request durations (the mean time a slot is held)."""
HOLD_SMOOTHING = 0.1
"""Weight of the newest slot hold in the running mean of hold times."""


class OrderedSlots:
    """A counting semaphore whose waiters get free slots in the order of a key (lowest first, ties in
    arrival order). A freed slot goes straight to the next waiter, so no newcomer passes a waiter,
    and a waiter cancelled just as it was handed a slot passes the slot on."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, key: float) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (key, next(self._arrivals), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():  # a cancelled waiter stays queued until it comes up, then is skipped
                waiter.set_result(None)
                return
        self._free += 1


@dataclass
class Permit:
    """One admitted request; the caller sets `used_tokens` from the reply's usage when it has one."""

    estimated_tokens: int
    used_tokens: int | None = None


class EndpointLimiter:
    """Concurrency cap and request/token rate limits of one endpoint, shared by all its clients.

    A rate-limited reply pauses the whole endpoint (`pause`), not only the request that got it:
    the quota is shared, so the other requests would be refused too.

    Queued requests get free slots in the order they came, each moved ahead by `LEAD_PER_STEP` of a
    typical request's duration for every step of its work its caller has done (`slot(progress=...)`;
    the agents pass their pipeline step). Served purely first come first served, every sample
    advances at the same pace, so they all reach the token-heavy picture rating together and the
    endpoint waits on its tokens-per-minute quota with slots free; a small lead for later steps
    mixes the steps without letting them starve the first ones, which a strict order by step did
    (the samples started last then ran alone at the end). Served oldest sample first, the samples
    started last starved likewise. Measured in `benchmarks/agents_throughput`.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        clock: Clock = time.monotonic,
        sleep: AsyncSleep = asyncio.sleep,
    ):
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._requests = TokenBucket(requests_per_minute, clock) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute, clock) if tokens_per_minute else None
        self._resume_at = clock()
        self._mean_hold = 0.0
        """Running mean of how long a request holds its slot (0 until one has finished)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: OrderedSlots | None = None
        self._pacing: asyncio.Lock | None = None

    @classmethod
    def for_endpoint(
        cls, endpoint: ModelEndpoint, *, clock: Clock = time.monotonic, sleep: AsyncSleep = asyncio.sleep
    ) -> EndpointLimiter:
        return cls(
            max_concurrency=endpoint.max_concurrency,
            requests_per_minute=endpoint.requests_per_minute,
            tokens_per_minute=endpoint.tokens_per_minute,
            clock=clock,
            sleep=sleep,
        )

    def _primitives(self) -> tuple[OrderedSlots, asyncio.Lock]:
        """The slots and lock of the running event loop (asyncio primitives bind to one loop)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._pacing is None or self._loop is not loop:
            self._loop = loop
            self._slots = OrderedSlots(self.max_concurrency)
            self._pacing = asyncio.Lock()
        return self._slots, self._pacing

    def pause(self, seconds: float) -> None:
        """Holds back every request of this endpoint for `seconds` from now."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)

    def queue_lead(self, progress: int) -> float:
        """Seconds a request of a caller `progress` steps into its work moves ahead in the queue."""
        return progress * LEAD_PER_STEP * self._mean_hold

    @asynccontextmanager
    async def slot(self, estimated_tokens: int, *, progress: int = 0) -> AsyncIterator[Permit]:
        """Admits one request: a free concurrency slot (in the queue's order, see the class), the
        end of any pause, and rate tokens. `progress` is how many steps of its work the caller has done."""
        slots, pacing = self._primitives()
        await slots.acquire(self._clock() - self.queue_lead(progress))
        granted = self._clock()
        try:
            async with pacing:
                while (wait := self._resume_at - self._clock()) > CLOCK_TOLERANCE_SECONDS:
                    await self._sleep(wait)
                if self._requests is not None:
                    await self._requests.take(1, self._sleep)
                if self._tokens is not None:
                    await self._tokens.take(estimated_tokens, self._sleep)
            permit = Permit(estimated_tokens)
            try:
                yield permit
            finally:
                if self._tokens is not None and permit.used_tokens is not None:
                    self._tokens.settle(permit.used_tokens - estimated_tokens)
        finally:
            held = self._clock() - granted
            self._mean_hold = held if self._mean_hold == 0 else self._mean_hold + HOLD_SMOOTHING * (held - self._mean_hold)
            slots.release()


def endpoint_key(endpoint: ModelEndpoint) -> str:
    """Endpoints with the same base URL share one quota, whatever the model."""
    return endpoint.base_url.rstrip("/")


def _strictest(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class LimiterRegistry:
    """One `EndpointLimiter` per base URL, built from every endpoint a process will call.

    Endpoints sharing a base URL may state different limits (one per role); the strictest of each
    applies to all of them, so the result does not depend on which role calls first. Build it before
    the first call and hand each client its `limiter(endpoint)`.
    """

    def __init__(
        self, endpoints: Iterable[ModelEndpoint], *, clock: Clock = time.monotonic, sleep: AsyncSleep = asyncio.sleep
    ):
        groups: dict[str, list[ModelEndpoint]] = {}
        for endpoint in endpoints:
            groups.setdefault(endpoint_key(endpoint), []).append(endpoint)
        self._limiters = {
            key: EndpointLimiter(
                max_concurrency=min(e.max_concurrency for e in group),
                requests_per_minute=_strictest(e.requests_per_minute for e in group),
                tokens_per_minute=_strictest(e.tokens_per_minute for e in group),
                clock=clock,
                sleep=sleep,
            )
            for key, group in groups.items()
        }

    def limiter(self, endpoint: ModelEndpoint) -> EndpointLimiter:
        key = endpoint_key(endpoint)
        if key not in self._limiters:
            raise KeyError(f"endpoint {key} was not given to the LimiterRegistry when it was built")
        return self._limiters[key]

