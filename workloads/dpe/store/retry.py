"""Bounded retries of transient store failures, and the one error that tells the story when they end.

The policy is ours, not the HTTP library's, so a dead endpoint fails after a known number of
attempts and a known time.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from dpe.retry import Backoff, Clock, FailedAttempt, Sleep, retry_call
from dpe.store.errors import TransientStoreError, Unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")


def _transient(error: Exception) -> bool:
    return isinstance(error, TransientStoreError)


class Retrier:
    """Runs an operation, retrying it while it raises TransientStoreError, within a Backoff."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def call(self, operation: Callable[[], T], *, subject: str) -> T:
        """Return operation(); after the last failed attempt raise one error that tells the story.

        `subject` names what failed, e.g. "S3 endpoint 127.0.0.1:8333"; it must hold no secret.
        Errors other than TransientStoreError pass through at once.
        """

        def retrying(error: Exception, attempt: FailedAttempt) -> None:
            log.warning(
                "%s failed (%s); attempt %d of %d, retrying in %.2f s",
                subject,
                error,
                attempt.number,
                self.backoff.max_attempts,
                attempt.delay,
            )

        def give_up(error: Exception, attempt: FailedAttempt) -> None:
            verdict = "unreachable" if isinstance(error, Unreachable) else "unavailable"
            attempts = "attempt" if attempt.number == 1 else "attempts"
            raise type(error)(
                f"{subject} {verdict} after {attempt.number} {attempts} over {attempt.elapsed:.1f} s: {error}"
            ) from error

        return retry_call(
            operation,
            backoff=self.backoff,
            is_transient=_transient,
            sleep=self._sleep,
            clock=self._clock,
            rng=self._rng,
            on_retry=retrying,
            on_give_up=give_up,
        )
