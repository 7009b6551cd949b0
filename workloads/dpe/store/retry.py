"""Bounded retries of transient store failures: exponential backoff with full jitter.

The policy is ours, not the HTTP library's, so a dead endpoint fails after a known number of
attempts and a known time. Sleep, clock and randomness are injected so tests run without waiting.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dpe.store.errors import TransientStoreError, Unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and for how long a transient failure is retried."""

    max_attempts: int = 5
    """Attempts in all, the first included."""
    base_delay: float = 0.25
    """Backoff cap before the second attempt, in seconds; it doubles for each further attempt."""
    max_delay: float = 4.0
    """Upper bound of the backoff cap, in seconds."""
    max_elapsed: float = 30.0
    """No further attempt starts once this many seconds have passed since the first."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_elapsed < 0:
            raise ValueError("retry delays and max_elapsed must not be negative")

    def backoff_cap(self, failures: int) -> float:
        """The longest wait after `failures` failed attempts; the actual wait is uniform below it."""
        return min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))


DEFAULT_RETRY = RetryPolicy()


class Retrier:
    """Runs an operation, retrying it while it raises TransientStoreError, within a RetryPolicy."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def call(self, operation: Callable[[], T], *, subject: str) -> T:
        """Return operation(); after the last failed attempt raise one error that tells the story.

        `subject` names what failed, e.g. "S3 endpoint 127.0.0.1:8333"; it must hold no secret.
        Errors other than TransientStoreError pass through at once.
        """
        start = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except TransientStoreError as error:
                elapsed = self._clock() - start
                delay = self._rng.uniform(0.0, self.policy.backoff_cap(attempt))
                if attempt >= self.policy.max_attempts or elapsed + delay > self.policy.max_elapsed:
                    verdict = "unreachable" if isinstance(error, Unreachable) else "unavailable"
                    attempts = "attempt" if attempt == 1 else "attempts"
                    raise type(error)(
                        f"{subject} {verdict} after {attempt} {attempts} over {elapsed:.1f} s: {error}"
                    ) from error
                log.warning(
                    "%s failed (%s); attempt %d of %d, retrying in %.2f s",
                    subject,
                    error,
                    attempt,
                    self.policy.max_attempts,
                    delay,
                )
                self._sleep(delay)
