"""Why chat calls fail, as the exceptions callers catch and the kinds the ledger counts."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class FailureKind(StrEnum):
    """Why one request failed; the ledger counts failures by kind."""

    rate_limited = "rate_limited"
    server_error = "server_error"
    timeout = "timeout"
    connection = "connection"
    permanent = "permanent"
    invalid_reply = "invalid_reply"
    oversized = "oversized"
    """The response body passed `dpe.llm.client.MAX_REPLY_BYTES`; reading stopped there."""


class LLMError(Exception):
    """A chat call failed for good. Callers that can live without one reply catch this."""


class PermanentLLMError(LLMError):
    """The server refused the request itself (4xx other than 408/409/429), or answered with a reply
    over the size cap (`status` 200); repeating the request cannot help."""

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


class RetriesExhausted(LLMError):
    """Transient failures (rate limits, 5xx, timeouts, ...) outlasted the retry policy."""

    def __init__(self, message: str, *, kind: FailureKind, attempts: int, status: int | None):
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts
        self.status = status


class InvalidReply(LLMError):
    """No reply of a role could be turned into the expected structure within the allowed attempts."""

    def __init__(self, role: str, reasons: Sequence[str]):
        super().__init__(f"{role}: no usable reply in {len(reasons)} attempts ({'; '.join(reasons)})")
        self.role = role
        self.reasons = list(reasons)


class BudgetExceeded(Exception):
    """The spend limit is reached; no further calls are made. Not an `LLMError`, on purpose."""

    def __init__(self, spent_usd: float, limit_usd: float):
        super().__init__(f"agent spend ${spent_usd:.4f} reached the budget of ${limit_usd:.4f}")
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd

