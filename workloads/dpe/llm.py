"""Chat calls to OpenAI-compatible endpoints: limits, retries, accounting, images and typed replies.

The agents and the judge talk to remote models through `ChatClient`. The reference implementation
waited on one call at a time, gave every call 60 seconds (too short for reasoning models), retried a
bad request exactly like a rate limit, and kept no account of spend. Here:

- every endpoint gets one `EndpointLimiter` (from a `LimiterRegistry`), shared by all clients that
  use its base URL: a cap on requests in flight and token buckets for requests and tokens per
  minute, so many concurrent callers stay inside the provider's quota instead of finding it by 429s;
- failures are told apart: rate limits wait as long as the server asks (Retry-After), server errors,
  timeouts and dropped connections back off with full jitter, and a request the server refuses
  (400, 401, 404, ...) fails at once with `PermanentLLMError`, since repeating it cannot help;
- each request may take `endpoint.timeout_seconds` (minutes, for reasoning models);
- a `UsageLedger` counts calls, failures, tokens and cost per role for the result files, and a
  `Budget` stops new calls once the spend limit is reached (`BudgetExceeded` is deliberately not an
  `LLMError`, so code that tolerates a failed call does not swallow the stop);
- `ask_json` turns a reply into a validated pydantic model, re-asking with the validation error
  when the reply does not parse.

The retries of the `openai` client itself are off (`max_retries=0`): the policy here decides.
Keys never appear in messages or logs: the client keeps the key to itself and error text coming back
from a server is passed through `dpe.secrets.redact` before it is raised.

Clock, sleep and random source are injected so tests exercise waits and backoff without waiting.
One client or limiter may be used from successive event loops (each `asyncio.run`), one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import heapq
import io
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, TypeVar

import openai
from PIL import Image
from pydantic import BaseModel, ValidationError

from dpe.secrets import redact
from dpe.spec import ModelEndpoint

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Message = Mapping[str, Any]
SchemaT = TypeVar("SchemaT", bound=BaseModel)

TOKENS_PER_MILLION = 1_000_000
SECONDS_PER_MINUTE = 60.0
# Prompt size is estimated before a call (for the token bucket) at this many characters per token,
# plus a fixed overhead per message and per image; the bucket is corrected with the real usage.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKEN_ESTIMATE = 1000
# Providers enforce per-minute quotas over much shorter windows (OpenAI: per second), so a bucket
# holds one second's worth rather than a whole minute's burst, which would be refused at start-up.
BURST_SECONDS = 1.0
# Waits shorter than this are treated as done: float rounding must not leave a waiter stranded on
# a remainder too small to move the clock.
CLOCK_TOLERANCE_SECONDS = 1e-6
# Statuses worth repeating: rate limits, request timeouts, conflicts, and every 5xx.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
SERVER_ERROR_MIN = 500
ERROR_TEXT_LIMIT = 300

DEFAULT_IMAGE_MAX_SIDE = 1024
DEFAULT_IMAGE_MAX_BYTES = 1_000_000
JPEG_QUALITIES = (90, 80, 70, 60, 50)
PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level: a data URL is sent once and decoded by the provider. For a 1024x768 photo
it costs a fifth of the CPU of `optimize=True` (50 ms against 330) at much the same size; flat
pictures (charts, diagrams) come out larger but still small (15 KB against 5 KB for a bar chart)."""
MIN_IMAGE_SIDE = 16

REPAIR_REQUEST = (
    "Your previous reply could not be used: {problem}\n"
    "Reply again with one JSON object and nothing else. It must match this JSON schema:\n{schema}"
)
MAX_SCHEMA_ERRORS = 10


class FailureKind(StrEnum):
    """Why one request failed; the ledger counts failures by kind."""

    rate_limited = "rate_limited"
    server_error = "server_error"
    timeout = "timeout"
    connection = "connection"
    permanent = "permanent"
    invalid_reply = "invalid_reply"


class LLMError(Exception):
    """A chat call failed for good. Callers that can live without one reply catch this."""


class PermanentLLMError(LLMError):
    """The server refused the request itself (4xx other than 408/409/429); repeating it cannot help."""

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


def _log(level: int, event: str, **fields: Any) -> None:
    """One structured log line: the fields go both into the text and onto the record."""
    text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    logger.log(level, "%s %s", event, text, extra=fields)


# ---------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------


@dataclass
class RoleUsage:
    """What one role has spent and suffered."""

    calls: int = 0
    """Requests answered successfully (a reply that later fails validation still counts)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed requests and unusable replies, by `FailureKind`."""
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    """Unusable replies by reason: no_json, bad_json, schema: <field>."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_seconds: float = 0.0
    """Sum of the latencies of successful requests."""


class UsageLedger:
    """Per-role counts of calls, failures, tokens and cost; safe to share across threads and tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, RoleUsage] = {}

    def _role(self, role: str) -> RoleUsage:
        return self._roles.setdefault(role, RoleUsage())

    def record_call(
        self, role: str, *, prompt_tokens: int, completion_tokens: int, cost_usd: float, latency_seconds: float
    ) -> None:
        with self._lock:
            usage = self._role(role)
            usage.calls += 1
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.cost_usd += cost_usd
            usage.latency_seconds += latency_seconds

    def record_failure(self, role: str, kind: FailureKind) -> None:
        with self._lock:
            failures = self._role(role).failures
            failures[kind.value] = failures.get(kind.value, 0) + 1

    def record_invalid(self, role: str, reason: str) -> None:
        """An answered request whose reply could not be used, with the reason."""
        with self._lock:
            usage = self._role(role)
            usage.failures[FailureKind.invalid_reply.value] = usage.failures.get(FailureKind.invalid_reply.value, 0) + 1
            usage.invalid_reasons[reason] = usage.invalid_reasons.get(reason, 0) + 1

    @property
    def total_cost_usd(self) -> float:
        with self._lock:
            return sum(u.cost_usd for u in self._roles.values())

    def role(self, role: str) -> RoleUsage:
        """A copy of one role's usage (zeros for a role never seen)."""
        with self._lock:
            usage = self._roles.get(role, RoleUsage())
            return RoleUsage(**asdict(usage))

    def snapshot(self) -> dict[str, Any]:
        """Plain data for result files: {"roles": {role: usage}, "total": totals}."""
        with self._lock:
            roles = {name: asdict(usage) for name, usage in sorted(self._roles.items())}
        total = {
            "calls": sum(r["calls"] for r in roles.values()),
            "failures": sum(sum(r["failures"].values()) for r in roles.values()),
            "prompt_tokens": sum(r["prompt_tokens"] for r in roles.values()),
            "completion_tokens": sum(r["completion_tokens"] for r in roles.values()),
            "cost_usd": sum(r["cost_usd"] for r in roles.values()),
        }
        return {"roles": roles, "total": total}


class Budget:
    """A spend limit in US dollars over every call charged to it.

    Calls already in flight when the limit is reached still complete and are charged, so the final
    spend can pass the limit by up to one call per request in flight.
    """

    def __init__(self, limit_usd: float, *, spent_usd: float = 0.0):
        self.limit_usd = limit_usd
        self._spent = spent_usd
        self._lock = threading.Lock()

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent

    @property
    def remaining_usd(self) -> float:
        with self._lock:
            return max(0.0, self.limit_usd - self._spent)

    @property
    def exceeded(self) -> bool:
        with self._lock:
            return self._spent >= self.limit_usd

    def charge(self, cost_usd: float) -> None:
        with self._lock:
            crossed = self._spent < self.limit_usd <= self._spent + cost_usd
            self._spent += cost_usd
            spent = self._spent
        if crossed:
            _log(logging.WARNING, "budget reached", spent_usd=spent, limit_usd=self.limit_usd)

    def check(self) -> None:
        """Raises `BudgetExceeded` once the limit is reached; clients call it before each completion."""
        with self._lock:
            spent = self._spent
        if spent >= self.limit_usd:
            raise BudgetExceeded(spent, self.limit_usd)


# ---------------------------------------------------------------------------------------------
# Limits per endpoint
# ---------------------------------------------------------------------------------------------


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

    async def take(self, amount: float, sleep: Sleep) -> None:
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


@dataclass
class Permit:
    """One admitted request; the caller sets `used_tokens` from the reply's usage when it has one."""

    estimated_tokens: int
    used_tokens: int | None = None


REQUEST_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("dpe_request_priority", default=0)
"""Rank of the work a request belongs to (lower goes first when requests queue for an endpoint).

The generation scheduler sets it to each sample's start order, so an endpoint serves the oldest
samples' calls first: samples then finish one after another like a conveyor instead of all
advancing together and finishing late. It lives in a context variable, which asyncio copies into
every task a sample spawns, so no call site has to pass it along.
"""


class PrioritySlots:
    """A counting semaphore that hands free slots to the lowest priority first (FIFO among equals)."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


class EndpointLimiter:
    """Concurrency cap and request/token rate limits of one endpoint, shared by all its clients.

    A rate-limited reply pauses the whole endpoint (`pause`), not only the request that got it:
    the quota is shared, so the other requests would be refused too.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ):
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._requests = TokenBucket(requests_per_minute, clock) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute, clock) if tokens_per_minute else None
        self._resume_at = clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: PrioritySlots | None = None
        self._pacing: asyncio.Lock | None = None

    @classmethod
    def for_endpoint(
        cls, endpoint: ModelEndpoint, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> EndpointLimiter:
        return cls(
            max_concurrency=endpoint.max_concurrency,
            requests_per_minute=endpoint.requests_per_minute,
            tokens_per_minute=endpoint.tokens_per_minute,
            clock=clock,
            sleep=sleep,
        )

    def _primitives(self) -> tuple[PrioritySlots, asyncio.Lock]:
        """The slots and lock of the running event loop (asyncio primitives bind to one loop)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._pacing is None or self._loop is not loop:
            self._loop = loop
            self._slots = PrioritySlots(self.max_concurrency)
            self._pacing = asyncio.Lock()
        return self._slots, self._pacing

    def pause(self, seconds: float) -> None:
        """Holds back every request of this endpoint for `seconds` from now."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[Permit]:
        """Admits one request: a free concurrency slot, the end of any pause, and rate tokens."""
        slots, pacing = self._primitives()
        await slots.acquire(REQUEST_PRIORITY.get())
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
        self, endpoints: Iterable[ModelEndpoint], *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
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


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How long transient failures are retried. Both bounds apply; the first reached ends it."""

    max_attempts: int = 6
    """Requests per call, the first included."""
    base_delay_seconds: float = 1.0
    """Backoff scale: the n-th retry waits a random time up to base * 2**(n-1)..."""
    max_delay_seconds: float = 60.0
    """...capped here."""
    max_retry_seconds: float = 900.0
    """Time from the first failure after which no further retry starts (waits included)."""

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff before retry number `retry` (1-based)."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (retry - 1))
        return rng.uniform(0.0, ceiling)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a server asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def classify_status(status: int) -> FailureKind:
    """The failure kind of an HTTP error status; `permanent` means do not retry."""
    if status == 429:
        return FailureKind.rate_limited
    if status == 408:
        return FailureKind.timeout
    if status >= SERVER_ERROR_MIN or status in RETRYABLE_STATUSES:
        return FailureKind.server_error
    return FailureKind.permanent


class _Failed(Exception):
    """One request failed; carries what the retry loop needs to decide."""

    def __init__(
        self, kind: FailureKind, *, status: int | None = None, retry_after: float | None = None, detail: str = ""
    ):
        super().__init__(kind.value)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


def _server_message(error: openai.APIStatusError) -> str:
    """The error message the server sent, if any, without the SDK's decoration."""
    body = error.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
        return json.dumps(body)[:ERROR_TEXT_LIMIT]
    return "" if body is None else str(body)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatReply:
    """One successful completion with its accounting."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_seconds: float
    """Duration of the request that succeeded."""
    attempts: int
    """Requests made for this reply, the successful one included."""
    finish_reason: str | None = None
    model: str | None = None


def estimate_prompt_tokens(messages: Sequence[Message]) -> int:
    """A rough prompt size before the call: characters / 4, a fixed cost per image and per message."""
    tokens = 0
    for message in messages:
        tokens += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            tokens += len(content) // CHARS_PER_TOKEN
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    tokens += IMAGE_TOKEN_ESTIMATE
                else:
                    tokens += len(str(part.get("text", ""))) // CHARS_PER_TOKEN
    return tokens


# Headers the SDK would otherwise fill from the environment (OPENAI_ORG_ID, OPENAI_PROJECT_ID): an
# organisation id meant for api.openai.com must not travel to another provider.
# The SDK's types say str, but it documents Omit as the way to drop a header it would add.
_NO_AMBIENT_HEADERS: dict[str, Any] = {"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}
_NO_AUTHORIZATION: dict[str, Any] = {"Authorization": openai.Omit()}


class ChatClient:
    """Calls one endpoint's model for one role, inside the endpoint's limits and the retry policy.

    `api_key` is the resolved key (see `dpe.secrets.resolve_secret`) or None (or empty) for endpoints
    that need none; then no Authorization header is sent. Keys, organisation and project ids from the
    SDK's environment variables (OPENAI_API_KEY, ...) are never used: they belong to another provider.
    Without a `limiter` the client gets one of its own; pass `LimiterRegistry.limiter(endpoint)` to
    share the endpoint's limits with other clients. Without a `ledger` the client keeps its own.
    """

    def __init__(
        self,
        endpoint: ModelEndpoint,
        api_key: str | None,
        *,
        role: str,
        limiter: EndpointLimiter | None = None,
        ledger: UsageLedger | None = None,
        budget: Budget | None = None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        self.endpoint = endpoint
        self.role = role
        self.ledger = ledger if ledger is not None else UsageLedger()
        self.budget = budget
        self.retry = retry
        if limiter is None:
            limiter = EndpointLimiter.for_endpoint(endpoint, clock=clock, sleep=sleep)
        self.limiter = limiter
        self._api_key = api_key or None
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._api: openai.AsyncOpenAI | None = None
        self._api_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ChatClient(role={self.role!r}, model={self.endpoint.model!r}, base_url={self.endpoint.base_url!r})"

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP connections of the current event loop."""
        if self._api is not None and self._api_loop is asyncio.get_running_loop():
            await self._api.close()
        self._api = None
        self._api_loop = None

    def _sdk(self) -> openai.AsyncOpenAI:
        """The SDK client of the running event loop (its connection pool belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._api is None or self._api_loop is not loop:
            self._api = openai.AsyncOpenAI(
                base_url=self.endpoint.base_url,
                api_key=self._api_key or "",
                admin_api_key="",
                max_retries=0,
                timeout=self.endpoint.timeout_seconds,
                default_headers=_NO_AMBIENT_HEADERS,
            )
            self._api_loop = loop
        return self._api

    def _where(self) -> str:
        return f"{self.endpoint.base_url} (model {self.endpoint.model})"

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        json_mode: bool = False,
    ) -> ChatReply:
        """One chat completion, retried on transient failures.

        `max_tokens` and `temperature` default to the endpoint's. `json_mode` asks the server for a
        JSON object (`response_format`); servers without that option refuse it with a 400.
        Raises `BudgetExceeded` before calling once the budget is spent, `PermanentLLMError` for a
        refused request and `RetriesExhausted` when transient failures outlast the policy.
        """
        if self.budget is not None:
            self.budget.check()
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": list(messages),
            "max_completion_tokens": max_tokens or self.endpoint.max_tokens,
            "temperature": self.endpoint.temperature if temperature is None else temperature,
        }
        if json_mode:
            request["response_format"] = {"type": "json_object"}
        if self._api_key is None:
            request["extra_headers"] = _NO_AUTHORIZATION
        estimate = estimate_prompt_tokens(messages)
        first_failure: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(request, estimate, attempt)
            except _Failed as caught:
                failure = caught
            # Raised outside the handler, so no exception chain carries the server's raw text along.
            self.ledger.record_failure(self.role, failure.kind)
            if failure.kind is FailureKind.permanent:
                raise self._refused(failure)
            now = self._clock()
            first_failure = now if first_failure is None else first_failure
            delay = failure.retry_after if failure.retry_after is not None else self.retry.backoff(attempt, self._rng)
            if attempt >= self.retry.max_attempts or now - first_failure + delay > self.retry.max_retry_seconds:
                raise self._exhausted(failure, attempt, now - first_failure)
            if failure.kind is FailureKind.rate_limited:
                self.limiter.pause(delay)
            _log(
                logging.WARNING,
                "chat retry",
                role=self.role,
                model=self.endpoint.model,
                status=failure.status,
                kind=failure.kind.value,
                attempt=attempt,
                delay_s=delay,
            )
            await self._sleep(delay)

    async def _attempt(self, request: dict[str, Any], estimate: int, attempt: int) -> ChatReply:
        async with self.limiter.slot(estimate) as permit:
            started = self._clock()
            try:
                completion = await self._sdk().chat.completions.create(**request)
            except openai.APITimeoutError:
                raise _Failed(FailureKind.timeout) from None
            except openai.APIConnectionError:
                raise _Failed(FailureKind.connection) from None
            except openai.APIStatusError as error:
                raise _Failed(
                    classify_status(error.status_code),
                    status=error.status_code,
                    retry_after=retry_after_seconds(error.response.headers),
                    detail=_server_message(error),
                ) from None
            except ValueError:
                raise _Failed(FailureKind.invalid_reply, status=200, detail="response body is not JSON") from None
            latency = self._clock() - started
            text, finish_reason, prompt_tokens, completion_tokens = self._read(completion, estimate)
            permit.used_tokens = prompt_tokens + completion_tokens
        cost = (
            prompt_tokens * self.endpoint.input_usd_per_million_tokens
            + completion_tokens * self.endpoint.output_usd_per_million_tokens
        ) / TOKENS_PER_MILLION
        self.ledger.record_call(
            self.role,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_seconds=latency,
        )
        if self.budget is not None:
            self.budget.charge(cost)
        _log(
            logging.DEBUG,
            "chat reply",
            role=self.role,
            model=self.endpoint.model,
            status=200,
            attempt=attempt,
            latency_s=latency,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        return ChatReply(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_seconds=latency,
            attempts=attempt,
            finish_reason=finish_reason,
            model=getattr(completion, "model", None),
        )

    @staticmethod
    def _read(completion: Any, estimate: int) -> tuple[str, str | None, int, int]:
        """Text, finish reason and token counts of a completion; usage is estimated when missing."""
        choices = getattr(completion, "choices", None)
        if not choices:
            raise _Failed(FailureKind.invalid_reply, status=200, detail="response has no choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None) or ""
        usage = getattr(completion, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        return (
            text,
            getattr(choices[0], "finish_reason", None),
            prompt_tokens if isinstance(prompt_tokens, int) else estimate,
            completion_tokens if isinstance(completion_tokens, int) else len(text) // CHARS_PER_TOKEN,
        )

    def _refused(self, failure: _Failed) -> PermanentLLMError:
        detail = redact(failure.detail, [self._api_key])[:ERROR_TEXT_LIMIT]
        _log(logging.WARNING, "chat refused", role=self.role, model=self.endpoint.model, status=failure.status)
        return PermanentLLMError(
            f"{self._where()} refused the request with HTTP {failure.status}"
            + (f": {detail}" if detail else ""),
            status=failure.status or 0,
        )

    def _exhausted(self, failure: _Failed, attempts: int, retrying: float) -> RetriesExhausted:
        status = f" (HTTP {failure.status})" if failure.status is not None else ""
        _log(
            logging.WARNING,
            "chat gave up",
            role=self.role,
            model=self.endpoint.model,
            status=failure.status,
            kind=failure.kind.value,
            attempt=attempts,
        )
        return RetriesExhausted(
            f"{self._where()} gave up after {attempts} attempts ({retrying:.1f} s retrying); "
            f"last failure: {failure.kind.value}{status}",
            kind=failure.kind,
            attempts=attempts,
            status=failure.status,
        )


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _encode(picture: Image.Image, max_bytes: int) -> tuple[bytes, str] | None:
    """PNG when it fits (lossless keeps chart text sharp), else JPEG at falling quality; None if neither fits."""
    png = picture if picture.mode in {"1", "L", "LA", "P", "RGB", "RGBA"} else picture.convert("RGBA")
    buffer = io.BytesIO()
    png.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    if buffer.tell() <= max_bytes:
        return buffer.getvalue(), "image/png"
    rgba = picture.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, "white")
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    for quality in JPEG_QUALITIES:
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue(), "image/jpeg"
    return None


def image_part(
    image: bytes, *, max_side: int = DEFAULT_IMAGE_MAX_SIDE, max_bytes: int = DEFAULT_IMAGE_MAX_BYTES
) -> dict[str, Any]:
    """An `image_url` message part holding the image as a base64 data URL of bounded size.

    The image (any format Pillow reads) is shrunk so its longer side is at most `max_side`, then
    re-encoded as PNG or, when that is over `max_bytes`, as JPEG; if even JPEG does not fit, the
    image is halved until it does. Re-encoding also strips metadata.
    """
    with Image.open(io.BytesIO(image)) as opened:
        picture = opened.copy()
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    while (encoded := _encode(picture, max_bytes)) is None:
        width, height = picture.size
        if min(width, height) // 2 < MIN_IMAGE_SIDE:
            raise ValueError(f"cannot encode the image within {max_bytes} bytes")
        picture = picture.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    data, mime = encoded
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


# ---------------------------------------------------------------------------------------------
# Typed replies
# ---------------------------------------------------------------------------------------------


class ReplyFormatError(ValueError):
    """A reply that is not a usable JSON object; `reason` is what the ledger counts."""

    def __init__(self, reason: str, problem: str):
        super().__init__(f"{reason}: {problem}")
        self.reason = reason
        self.problem = problem


def _objects(text: str) -> Iterable[str]:
    """Every top-level `{...}` span of `text`, braces inside double-quoted strings ignored."""
    depth = 0
    start = 0
    in_string = False
    escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"' and depth > 0:
            in_string = True
        elif char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : index + 1]


def _without_trailing_commas(span: str) -> str:
    """`span` minus commas directly before a closing bracket: the one repair that cannot change meaning."""
    out: list[str] = []
    in_string = False
    escaped = False
    for index, char in enumerate(span):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "," and span[index + 1 :].lstrip()[:1] in {"}", "]"}:
            continue
        out.append(char)
    return "".join(out)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply, wherever it sits (code fence, prose around it).

    Trailing commas are repaired; anything else that is not JSON (single quotes, comments, Python
    literals) is refused rather than guessed at. Raises `ReplyFormatError` with reason `no_json`
    or `bad_json`.
    """
    spans = list(_objects(text))
    if not spans:
        if "{" in text:
            raise ReplyFormatError("bad_json", "the JSON object is not closed (was the reply cut off?)")
        raise ReplyFormatError("no_json", "the reply contains no JSON object")
    problem = ""
    for span in spans:
        for candidate in (span, _without_trailing_commas(span)):
            try:
                value = json.loads(candidate)
            except ValueError as error:
                problem = f"the JSON object does not parse ({error})"
                continue
            if isinstance(value, dict):
                return value
    raise ReplyFormatError("bad_json", problem)


def parse_reply(text: str, schema: type[SchemaT]) -> SchemaT:
    """A reply as an instance of `schema`; `ReplyFormatError` with reason `schema: <field>` if invalid."""
    data = extract_json_object(text)
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        issues = error.errors(include_url=False, include_input=False)
        fields = [".".join(str(p) for p in issue["loc"]) or "<root>" for issue in issues]
        listed = "; ".join(f"{name}: {issue['msg']}" for name, issue in zip(fields, issues, strict=True))
        raise ReplyFormatError(f"schema: {fields[0]}", f"the JSON does not match the schema ({listed})") from None


@functools.cache
def schema_json(schema: type[BaseModel]) -> str:
    """The JSON schema of a reply model as prompt text, built once per model (pydantic takes a
    third of a millisecond per build, on the event loop, for every call)."""
    return json.dumps(schema.model_json_schema())


async def ask_json(
    client: ChatClient,
    messages: Sequence[Message],
    schema: type[SchemaT],
    *,
    attempts: int = 3,
    ledger: UsageLedger | None = None,
    json_mode: bool = False,
    max_tokens: int | None = None,
) -> SchemaT:
    """Asks until the reply validates as `schema`, re-asking with the problem stated, `attempts` times.

    Each unusable reply is counted in `ledger` (default: the client's) under the client's role with
    its reason. Raises `InvalidReply` when every attempt fails; request failures propagate as they
    come from `ChatClient.complete`.
    """
    ledger = ledger if ledger is not None else client.ledger
    conversation = list(messages)
    reasons: list[str] = []
    schema_text = schema_json(schema)
    for _ in range(attempts):
        reply = await client.complete(conversation, json_mode=json_mode, max_tokens=max_tokens)
        try:
            return parse_reply(reply.text, schema)
        except ReplyFormatError as error:
            ledger.record_invalid(client.role, error.reason)
            reasons.append(error.reason)
            _log(
                logging.WARNING,
                "chat reply unusable",
                role=client.role,
                model=client.endpoint.model,
                reason=error.reason,
            )
            conversation = [
                *conversation,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": REPAIR_REQUEST.format(problem=error.problem, schema=schema_text)},
            ]
    raise InvalidReply(client.role, reasons)
