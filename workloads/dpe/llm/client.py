"""Chat calls to OpenAI-compatible endpoints through `ChatClient`: limits, retries and accounting.

Many calls wait at once, each with a timeout long enough for reasoning models, and every call is
accounted for:

- every request passes the endpoint's `EndpointLimiter` (see `dpe.llm.limits`);
- failures are told apart: rate limits wait as long as the server asks (Retry-After), server errors,
  timeouts and dropped connections back off with full jitter (`dpe.retry`), and a request the
  server refuses (400, 401, 404, ...) fails at once with `PermanentLLMError`, since repeating it
  cannot help;
- each request may take `endpoint.timeout_seconds` (minutes, for reasoning models) from connecting
  to its last byte: one deadline for the whole exchange, so a server that sends its reply a byte at a
  time is abandoned at the deadline (and retried as a timeout) instead of being waited on forever;
- a response body is read up to `MAX_REPLY_BYTES` and no further: a longer one fails the call for
  good (`FailureKind.oversized`) instead of holding and scanning tens of megabytes;
- the `UsageLedger` and the `SpendLimit` are charged with each reply's tokens and cost.

Requests go straight over HTTP (httpx2) rather than through the `openai` SDK: the SDK's checking and
copying of every message part cost twice the CPU of the exchange itself (about 1.5 ms a call, which
adds up with a hundred samples in flight), and retries, limits and parsing are this module's anyway.
Nothing is read from the environment but proxy settings: no OPENAI_* key, organisation or project.
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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

from dpe import __version__
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
from dpe.tls import verified_context

Message = Mapping[str, Any]

TOKENS_PER_MILLION = 1_000_000
# Prompt size is estimated before a call (for the token bucket) at this many characters per token,
# plus a fixed overhead per message and per image; the bucket is corrected with the real usage.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKEN_ESTIMATE = 765
"""Prompt tokens counted per attached picture before a call: the most OpenAI bills for a picture at
high detail within `DEFAULT_IMAGE_MAX_SIDE` (four 512-px tiles at 170 plus 85). Admission waits
for this many tokens in the bucket and the reply's usage settles the difference, so a larger
guess only holds requests back while the token quota binds."""
ERROR_TEXT_LIMIT = 300
ERROR_BODY_BYTES = 64 * 1024
"""Bytes of an error response read for its message; the rest is not waited for."""
MAX_REPLY_BYTES = 4 * 1024 * 1024
"""Largest response body read, in bytes: a million tokens of plain text, above any model's output
limit (reasoning included), and small enough to hold and scan in a few seconds at worst."""

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


_NEVER_RETRIED = frozenset({FailureKind.permanent, FailureKind.oversized})
"""A refused request would be refused again; an oversized reply would cost as much again."""


def _is_transient(error: Exception) -> bool:
    return isinstance(error, _Failed) and error.kind not in _NEVER_RETRIED


def _server_message(raw: bytes) -> str:
    """The error message in an error response's body: its `error.message` when it has one."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode("utf-8", "replace")[:ERROR_TEXT_LIMIT]
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
        return json.dumps(body)[:ERROR_TEXT_LIMIT]
    return "" if body is None else str(body)


async def _read_up_to(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A body's first bytes, at most `limit` and one chunk more (more than `limit` means it is longer)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)


async def _capped_body(chunks: AsyncIterator[bytes]) -> bytes:
    """The body of a response, refused (`FailureKind.oversized`) as soon as it passes `MAX_REPLY_BYTES`."""
    try:
        body = await _read_up_to(chunks, MAX_REPLY_BYTES)
    # Whatever breaks the body mid-way is a broken connection, retried as one.
    except Exception:
        raise _Failed(FailureKind.connection) from None
    if len(body) > MAX_REPLY_BYTES:
        raise _Failed(FailureKind.oversized, status=200, detail=f"stopped reading after {len(body)} bytes")
    return body


async def _error_body(chunks: AsyncIterator[bytes]) -> bytes:
    """The start of an error response's body (enough for its message); empty when it breaks off."""
    try:
        return (await _read_up_to(chunks, ERROR_BODY_BYTES))[:ERROR_BODY_BYTES]
    except httpx2.HTTPError:
        return b""


@dataclass(frozen=True)
class _Completion:
    """What a successful response body says, checked field by field."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str | None


def _completion(body: bytes, estimate: int) -> _Completion:
    """The reply in a response body; usage is estimated when missing. Raises `_Failed` (invalid_reply)."""
    try:
        data = json.loads(body)
    # RecursionError: a body of arrays nested thousands deep, which no completion is.
    except (ValueError, RecursionError):
        raise _Failed(FailureKind.invalid_reply, status=200, detail="response body is not JSON") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Failed(FailureKind.invalid_reply, status=200, detail="response has no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    text = content if isinstance(content, str) else ""
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    finish_reason, model = choice.get("finish_reason"), data.get("model")
    return _Completion(
        text=text,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else estimate,
        completion_tokens=completion_tokens if isinstance(completion_tokens, int) else len(text) // CHARS_PER_TOKEN,
        model=model if isinstance(model, str) else None,
    )


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


USER_AGENT = f"dpe/{__version__}"
CHAT_PATH = "/chat/completions"


class ChatClient:
    """Calls one endpoint's model for one role, inside the endpoint's limits and the retry policy.

    `api_key` is the resolved key (see `dpe.secrets.resolve_secret`) or None (or empty) for endpoints
    that need none; then no Authorization header is sent. Keys, organisation and project ids from the
    `openai` SDK's environment variables (OPENAI_API_KEY, ...) are never used: they belong to another provider.
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
        progress: int = 0,
        clock: Clock = time.monotonic,
        sleep: AsyncSleep = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        self.endpoint = endpoint
        self.role = role
        self.ledger = ledger if ledger is not None else UsageLedger()
        self.budget = budget
        self.retry = retry
        self.progress = progress
        """Steps of a caller's work done before this client's calls, which move its requests ahead in
        the endpoint's queue (`EndpointLimiter.slot`)."""
        if limiter is None:
            limiter = EndpointLimiter.for_endpoint(endpoint, clock=clock, sleep=sleep)
        self.limiter = limiter
        self._api_key = api_key or None
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._url = endpoint.base_url.rstrip("/") + CHAT_PATH
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
        if self._api_key is not None:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._tls = verified_context()  # built here, once per process, not on the event loop
        self._http: httpx2.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ChatClient(role={self.role!r}, model={self.endpoint.model!r}, base_url={self.endpoint.base_url!r})"

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP connections of the current event loop."""
        if self._http is not None and self._http_loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None
        self._http_loop = None

    def _client(self) -> httpx2.AsyncClient:
        """The HTTP client of the running event loop (its connection pool belongs to one loop),
        keeping alive as many connections as the endpoint admits requests at once."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx2.AsyncClient(
                timeout=self.endpoint.timeout_seconds,
                limits=httpx2.Limits(max_connections=None, max_keepalive_connections=self.endpoint.max_concurrency),
                follow_redirects=False,
                verify=self._tls,
            )
            self._http_loop = loop
        return self._http

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
        refused request or a reply over `MAX_REPLY_BYTES`, and `RetriesExhausted` when transient
        failures outlast the policy.
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
        body = json.dumps(request).encode()  # once for every attempt, before a slot is held
        estimate = estimate_prompt_tokens(messages)
        numbers = itertools.count(1)
        last: list[FailedAttempt] = []
        try:
            return await retry_call_async(
                lambda: self._attempt(body, estimate, next(numbers)),
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
        if failure.kind in _NEVER_RETRIED:
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

    async def _attempt(self, body: bytes, estimate: int, attempt: int) -> ChatReply:
        """One request; a failure is counted in the ledger before the retry loop sees it."""
        try:
            return await self._request(body, estimate, attempt)
        except _Failed as failure:
            self.ledger.record_failure(self.role, failure.kind)
            raise

    async def _request(self, body: bytes, estimate: int, attempt: int) -> ChatReply:
        async with self.limiter.slot(estimate, progress=self.progress) as permit:
            started = self._clock()
            try:
                # The HTTP client's timeout bounds each read; this one bounds the whole exchange.
                async with asyncio.timeout(self.endpoint.timeout_seconds):
                    reply = await self._exchange(body)
            except TimeoutError:
                raise _Failed(FailureKind.timeout) from None
            latency = self._clock() - started
            completion = _completion(reply, estimate)
            permit.used_tokens = completion.prompt_tokens + completion.completion_tokens
        cost = (
            completion.prompt_tokens * self.endpoint.input_usd_per_million_tokens
            + completion.completion_tokens * self.endpoint.output_usd_per_million_tokens
        ) / TOKENS_PER_MILLION
        self.ledger.record_call(
            self.role,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
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
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )
        return ChatReply(
            text=completion.text,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=cost,
            latency_seconds=latency,
            attempts=attempt,
            finish_reason=completion.finish_reason,
            model=completion.model,
        )

    async def _exchange(self, body: bytes) -> bytes:
        """One HTTP exchange of the encoded request `body`: the body of a successful response, read
        up to `MAX_REPLY_BYTES`. The reply is streamed, so one over the cap is refused without being held whole.
        """
        try:
            async with self._client().stream("POST", self._url, content=body, headers=self._headers) as response:
                if response.status_code >= 400:
                    raise _Failed(
                        classify_status(response.status_code),
                        status=response.status_code,
                        retry_after=retry_after_seconds(response.headers),
                        detail=_server_message(await _error_body(response.aiter_bytes())),
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
                    raise _Failed(FailureKind.oversized, status=200, detail=f"the reply declares {declared} bytes")
                return await _capped_body(response.aiter_bytes())
        except httpx2.TimeoutException:
            raise _Failed(FailureKind.timeout) from None
        except httpx2.HTTPError:
            raise _Failed(FailureKind.connection) from None

    def _refused(self, failure: _Failed) -> PermanentLLMError:
        detail = redact(failure.detail, [self._api_key])[:ERROR_TEXT_LIMIT]
        log_event(
            logging.WARNING,
            "chat refused",
            role=self.role,
            model=self.endpoint.model,
            status=failure.status,
            kind=failure.kind.value,
        )
        if failure.kind is FailureKind.oversized:
            what = f"sent a reply over the cap of {MAX_REPLY_BYTES} bytes"
        else:
            what = f"refused the request with HTTP {failure.status}"
        return PermanentLLMError(f"{self._where()} {what}" + (f": {detail}" if detail else ""), status=failure.status or 0)

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
