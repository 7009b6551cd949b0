"""Retries of transient failures: the back-off policy, which HTTP statuses are worth repeating, the
wait a server asks for, and the loops (sync and async) that apply them.

The store, the tools, the chat client and the operator all retry through here, so they agree on
what a policy means. A loop retries only what its caller's `is_transient` accepts, waits as long
as the failed attempt's server asked (an error's `retry_after`, in seconds) or else a jittered,
capped exponential back-off, and re-raises the last error once the attempts or the time are spent.
Sleep, clock and random source are injected so tests run the waits without waiting.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]
WallClock = Callable[[], datetime]
IsTransient = Callable[[Exception], bool]

SERVER_ERROR_STATUSES = frozenset(range(500, 600))
TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 429}) | SERVER_ERROR_STATUSES
"""Statuses that describe a passing condition rather than a bad request: request timeout, conflict
(a lock that timed out, for OpenAI-compatible APIs), rate limit, and every server error."""

_RANDOM = random.Random()


def is_transient_status(status: int, transient: Collection[int] = TRANSIENT_HTTP_STATUSES) -> bool:
    """Whether repeating a request that got `status` may succeed; callers with other rules pass theirs."""
    return status in transient


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def retry_after_seconds(headers: Mapping[str, str], *, now: WallClock = _utc_now) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date.

    Header names match in any case. A time in the past means no wait (0.0); a value that is neither
    a number nor a date, or no header at all, gives None. `now` is the wall clock dates are read against.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    milliseconds = _seconds(lowered.get("retry-after-ms", ""))
    if milliseconds is not None:
        return milliseconds / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # RFC 5322's "-0000" zone parses as naive; HTTP dates are always GMT.
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


@dataclass(frozen=True)
class Backoff:
    """How often and for how long transient failures are retried. The first bound reached ends it.

    The defaults suit quick calls to a nearby service (the artifact store); slow remote APIs pass
    their own values.
    """

    max_attempts: int = 5
    """Attempts in all, the first included."""
    base_delay: float = 0.25
    """Cap of the wait after the first failure, in seconds; it doubles with each further failure..."""
    max_delay: float = 4.0
    """...up to this many seconds."""
    max_elapsed: float = 30.0
    """No retry starts that would begin more than this many seconds after the first failure. The
    first attempt, bounded by its own timeout, does not count; retried attempts and waits do."""
    jitter: float = 1.0
    """Share of each wait drawn at random: 1.0 waits uniformly between 0 and the cap ("full jitter",
    so many clients that failed together do not retry together), 0.0 waits exactly the cap."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_elapsed < 0:
            raise ValueError("retry delays and max_elapsed must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def cap(self, failures: int) -> float:
        """The longest wait after `failures` failed attempts."""
        return min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after `failures` failed attempts: uniform in the top `jitter` share of the cap."""
        cap = self.cap(failures)
        return rng.uniform(cap * (1.0 - self.jitter), cap)


@dataclass(frozen=True)
class FailedAttempt:
    """A failed attempt as the loop saw it, handed to the `on_retry` and `on_give_up` hooks."""

    number: int
    """Attempts made so far, this one included."""
    elapsed: float
    """Seconds since the first failure."""
    delay: float
    """The wait before the next attempt (when giving up: the wait that did not fit)."""


OnFailure = Callable[[Exception, FailedAttempt], None]


class _Tally:
    """The state one loop keeps between attempts, and its decision after each failure."""

    def __init__(self, backoff: Backoff, clock: Clock, rng: random.Random):
        self.backoff = backoff
        self.clock = clock
        self.rng = rng
        self.attempts = 0
        self.first_failure: float | None = None

    def failed(self, error: Exception) -> tuple[FailedAttempt, bool]:
        """The attempt just made raised `error`: what comes next, and whether another attempt may start.

        An error with a `retry_after` (seconds, or None) asks for that wait instead of the back-off:
        the server knows when it will take requests again.
        """
        now = self.clock()
        if self.first_failure is None:
            self.first_failure = now
        asked: float | None = getattr(error, "retry_after", None)
        delay = asked if asked is not None else self.backoff.delay(self.attempts, self.rng)
        attempt = FailedAttempt(self.attempts, now - self.first_failure, delay)
        again = attempt.number < self.backoff.max_attempts and attempt.elapsed + delay <= self.backoff.max_elapsed
        return attempt, again


def retry_call(
    fn: Callable[[], T],
    *,
    backoff: Backoff,
    is_transient: IsTransient,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    rng: random.Random = _RANDOM,
    on_retry: OnFailure | None = None,
    on_give_up: OnFailure | None = None,
) -> T:
    """`fn()`, called again after each failure `is_transient` accepts, within `backoff`.

    Other errors pass through at once. `on_retry` runs before each wait; `on_give_up` runs when the
    policy is spent, inside the handler of the last error, which is re-raised after it unless the
    hook raises an error of its own (`raise ... from error` then chains the two).
    """
    tally = _Tally(backoff, clock, rng)
    while True:
        tally.attempts += 1
        try:
            return fn()
        except Exception as error:
            if not is_transient(error):
                raise
            attempt, again = tally.failed(error)
            if not again:
                if on_give_up is not None:
                    on_give_up(error, attempt)
                raise
            if on_retry is not None:
                on_retry(error, attempt)
        # Outside the handler, so the wait holds no reference to the error and its traceback.
        sleep(attempt.delay)


async def retry_call_async(
    fn: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    is_transient: IsTransient,
    sleep: AsyncSleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    rng: random.Random = _RANDOM,
    on_retry: OnFailure | None = None,
    on_give_up: OnFailure | None = None,
) -> T:
    """`await fn()` under the same rules as `retry_call`; the waits are awaited."""
    tally = _Tally(backoff, clock, rng)
    while True:
        tally.attempts += 1
        try:
            return await fn()
        except Exception as error:
            if not is_transient(error):
                raise
            attempt, again = tally.failed(error)
            if not again:
                if on_give_up is not None:
                    on_give_up(error, attempt)
                raise
            if on_retry is not None:
                on_retry(error, attempt)
        await sleep(attempt.delay)
