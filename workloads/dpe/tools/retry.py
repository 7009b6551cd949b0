"""Errors of the tools and the retry glue they share.

A provider's answer falls in one of three cases: success; a refusal that repeating cannot change
(4xx such as a bad key or a malformed request: `PermanentToolError`, raised at once); or a passing
condition (`dpe.retry.TRANSIENT_HTTP_STATUSES`, timeouts, dropped connections) that is retried
under a `Backoff`, waiting as long as a Retry-After header asks. Telling them apart keeps a wrong
key from burning minutes of backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from dpe.retry import AsyncSleep, Backoff, Clock, FailedAttempt, retry_after_seconds, retry_call_async

log = logging.getLogger(__name__)

T = TypeVar("T")


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

    @classmethod
    def of_status(cls, status: int, headers: Mapping[str, str]) -> Transient:
        """A transient HTTP answer, waiting as long as its Retry-After header asks."""
        return cls(f"status {status}", retry_after=retry_after_seconds(headers), status=status)


def _transient(error: Exception) -> bool:
    return isinstance(error, Transient)


@dataclass
class Retrying:
    """Runs async operations under a Backoff, retrying while they raise `Transient`."""

    backoff: Backoff = field(default_factory=Backoff)
    sleep: AsyncSleep = asyncio.sleep
    clock: Clock = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    async def call(self, operation: Callable[[], Awaitable[T]], *, subject: str) -> T:
        """Return the operation's result, or raise ToolUnavailable once the backoff is spent.

        `subject` names what is being called in messages (never a URL with a key in it).
        """

        def retrying(failure: Exception, attempt: FailedAttempt) -> None:
            log.info("%s: %s; attempt %d again in %.2f s", subject, failure, attempt.number + 1, attempt.delay)

        def give_up(failure: Exception, attempt: FailedAttempt) -> None:
            raise ToolUnavailable(
                f"{subject} failed {attempt.number} time(s) in {attempt.elapsed:.1f} s; last: {failure}",
                attempts=attempt.number,
                reason=str(failure),
            ) from None

        return await retry_call_async(
            operation,
            backoff=self.backoff,
            is_transient=_transient,
            sleep=self.sleep,
            clock=self.clock,
            rng=self.rng,
            on_retry=retrying,
            on_give_up=give_up,
        )
