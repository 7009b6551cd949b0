"""Errors of the tools and the one retry loop they share.

A provider's answer falls in one of three cases: success; a refusal that repeating cannot change
(4xx such as a bad key or a malformed request: `PermanentToolError`, raised at once); or a passing
condition (429, 5xx, timeouts, dropped connections) that is retried with capped exponential backoff
and full jitter, waiting at least as long as a Retry-After header asks. The reference retried every
failure alike; telling them apart keeps a wrong key from burning minutes of backoff.

Sleep, clock and random source are injected so tests run the waits without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from dpe.store.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""Client-error statuses that describe a passing condition rather than a bad request."""
SERVER_ERROR_MIN = 500


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth repeating the request for."""
    return status in RETRYABLE_STATUSES or status >= SERVER_ERROR_MIN


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The delay a Retry-After (seconds) or retry-after-ms header asks for, if it carries a number."""
    milliseconds = headers.get("retry-after-ms")
    seconds = headers.get("retry-after")
    try:
        if milliseconds is not None:
            return max(float(milliseconds) / 1000.0, 0.0)
        if seconds is not None:
            return max(float(seconds), 0.0)
    except ValueError:
        return None
    return None


class ToolError(Exception):
    """A tool call failed for good. The agents treat it as "no result" for this step."""


class PermanentToolError(ToolError):
    """The provider refused the request itself; repeating it cannot help."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class ToolUnavailable(ToolError):
    """Passing failures (rate limits, server errors, timeouts) outlasted the retry policy."""

    def __init__(self, message: str, *, attempts: int, reason: str):
        super().__init__(message)
        self.attempts = attempts
        self.reason = reason


class Transient(Exception):
    """Raised by an operation to ask for another attempt; `reason` says what went wrong."""

    def __init__(self, reason: str, *, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


@dataclass
class Retrying:
    """Runs async operations under a RetryPolicy, retrying while they raise `Transient`."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Sleep = asyncio.sleep
    clock: Clock = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    async def call(self, operation: Callable[[], Awaitable[T]], *, subject: str) -> T:
        """Return the operation's result, or raise ToolUnavailable once the policy is spent.

        `subject` names what is being called in messages (never a URL with a key in it).
        """
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await operation()
            except Transient as failure:
                delay = self.rng.uniform(0.0, self.policy.backoff_cap(attempt))
                if failure.retry_after is not None:
                    delay = max(delay, failure.retry_after)
                spent = self.clock() - start
                if attempt >= self.policy.max_attempts or spent + delay > self.policy.max_elapsed:
                    raise ToolUnavailable(
                        f"{subject} failed {attempt} time(s) in {spent:.1f} s; last: {failure.reason}",
                        attempts=attempt,
                        reason=failure.reason,
                    ) from None
                log.info("%s: %s; attempt %d again in %.2f s", subject, failure.reason, attempt + 1, delay)
                await self.sleep(delay)
