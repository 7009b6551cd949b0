"""Chat calls to OpenAI-compatible endpoints through `ChatClient`: limits, retries and accounting.

Many calls wait at once, each with a timeout long enough for reasoning models, and every call is
accounted for:

- every request passes the endpoint's `EndpointLimiter` (see `dpe.llm.limits`);
- failures are told apart: rate limits wait as long as the server asks (Retry-After), server errors,
  timeouts and dropped connections back off with full jitter (`dpe.retry`), and a request the
  server refuses (400, 401, 404, ...) fails at once with `PermanentLLMError`, since repeating it
  cannot help;
- each request may take `endpoint.timeout_seconds` (minutes, for reasoning models);
- the `UsageLedger` and the `SpendLimit` are charged with each reply's tokens and cost.

The retries of the `openai` client itself are off (`max_retries=0`): the policy here decides.
Keys never appear in messages or logs: the client keeps the key to itself and error text coming back
from a server is passed through `dpe.secrets.redact` before it is raised.

Clock, sleep and random source are injected so tests exercise waits and backoff without waiting.
One client may be used from successive event loops (each `asyncio.run`), one at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from dpe.llm.errors import FailureKind, PermanentLLMError, RetriesExhausted
from dpe.llm.events import log_event
from dpe.llm.limits import EndpointLimiter
from dpe.llm.usage import SpendLimit, UsageLedger
from dpe.retry import (
    AsyncSleep,
    Backoff,
    Clock,
    FailedAttempt,
    is_transient_status,
    retry_after_seconds,
    retry_call_async,
)
from dpe.secrets import redact
from dpe.spec import ModelEndpoint

Message = Mapping[str, Any]

TOKENS_PER_MILLION = 1_000_000
# Prompt size is estimated before a call (for the token bucket) at this many characters per token,
# plus a fixed overhead per message and per image; the bucket is corrected with the real usage.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKEN_ESTIMATE = 1000
ERROR_TEXT_LIMIT = 300

CHAT_RETRY = Backoff(max_attempts=6, base_delay=1.0, max_delay=60.0, max_elapsed=900.0)
"""Remote models are slow and their rate limits last minutes: retry for up to a quarter of an hour."""


def classify_status(status: int) -> FailureKind:
    """The failure kind of an HTTP error status; `permanent` means do not retry."""
    if status == 429:
        return FailureKind.rate_limited
    if status == 408:
        return FailureKind.timeout
    if is_transient_status(status):
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


def _is_transient(error: Exception) -> bool:
    return isinstance(error, _Failed) and error.kind is not FailureKind.permanent


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
        budget: SpendLimit | None = None,
        retry: Backoff = CHAT_RETRY,
        clock: Clock = time.monotonic,
        sleep: AsyncSleep = asyncio.sleep,
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
        numbers = itertools.count(1)
        last: list[FailedAttempt] = []
        try:
            return await retry_call_async(
                lambda: self._attempt(request, estimate, next(numbers)),
                backoff=self.retry,
                is_transient=_is_transient,
                sleep=self._sleep,
                clock=self._clock,
                rng=self._rng,
                on_retry=self._retrying,
                on_give_up=lambda _, attempt: last.append(attempt),
            )
        except _Failed as caught:
            failure = caught
        # Raised outside the handler, so no exception chain carries the server's raw text along.
        if failure.kind is FailureKind.permanent:
            raise self._refused(failure)
        raise self._exhausted(failure, last[0])

    def _retrying(self, failure: Exception, attempt: FailedAttempt) -> None:
        assert isinstance(failure, _Failed)
        if failure.kind is FailureKind.rate_limited:
            self.limiter.pause(attempt.delay)
        log_event(
            logging.WARNING,
            "chat retry",
            role=self.role,
            model=self.endpoint.model,
            status=failure.status,
            kind=failure.kind.value,
            attempt=attempt.number,
            delay_s=attempt.delay,
        )

    async def _attempt(self, request: dict[str, Any], estimate: int, attempt: int) -> ChatReply:
        """One request; a failure is counted in the ledger before the retry loop sees it."""
        try:
            return await self._request(request, estimate, attempt)
        except _Failed as failure:
            self.ledger.record_failure(self.role, failure.kind)
            raise

    async def _request(self, request: dict[str, Any], estimate: int, attempt: int) -> ChatReply:
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
        log_event(
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
        log_event(logging.WARNING, "chat refused", role=self.role, model=self.endpoint.model, status=failure.status)
        return PermanentLLMError(
            f"{self._where()} refused the request with HTTP {failure.status}"
            + (f": {detail}" if detail else ""),
            status=failure.status or 0,
        )

    def _exhausted(self, failure: _Failed, last: FailedAttempt) -> RetriesExhausted:
        status = f" (HTTP {failure.status})" if failure.status is not None else ""
        log_event(
            logging.WARNING,
            "chat gave up",
            role=self.role,
            model=self.endpoint.model,
            status=failure.status,
            kind=failure.kind.value,
            attempt=last.number,
        )
        return RetriesExhausted(
            f"{self._where()} gave up after {last.number} attempts ({last.elapsed:.1f} s retrying); "
            f"last failure: {failure.kind.value}{status}",
            kind=failure.kind,
            attempts=last.number,
            status=failure.status,
        )
