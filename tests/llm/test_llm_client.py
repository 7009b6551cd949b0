"""ChatClient with the real `openai` SDK against the fake server: replies, accounting, retries, limits."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import openai
import pytest
from PIL import Image

from dpe.llm import (
    CHAT_RETRY,
    MAX_REPLY_BYTES,
    BudgetExceeded,
    ChatClient,
    ChatReply,
    EndpointLimiter,
    FailureKind,
    LimiterRegistry,
    LLMError,
    PermanentLLMError,
    RetriesExhausted,
    SpendLimit,
    UsageLedger,
    image_part,
)
from dpe.spec import ModelEndpoint
from dpe.tls import verified_context
from dpe_testkit.openai_server import (
    FakeOpenAIServer,
    Outcome,
    ServerLimits,
    dripping,
    error,
    huge_reply,
    image_parts,
    malformed_body,
    rate_limited,
    server_error,
)

KEY = "sk-test-0123456789abcdef"
MODEL = "fake-model"


class FakeTime:
    """A clock that moves only when slept on, so backoff and pacing cost no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def endpoint(server: FakeOpenAIServer, **overrides: Any) -> ModelEndpoint:
    return ModelEndpoint(base_url=server.base_url, model=MODEL, **overrides)


@pytest.fixture
def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def fake_time_client(server: FakeOpenAIServer) -> tuple[ChatClient, FakeTime]:
    fake = FakeTime()
    client = ChatClient(
        endpoint(server), KEY, role="planner", clock=fake.clock, sleep=fake.sleep, rng=random.Random(7)
    )
    return client, fake


async def ask(client: ChatClient, text: str = "hello") -> ChatReply:
    async with client:
        return await client.complete([{"role": "user", "content": text}])


# -- well-formed replies --------------------------------------------------------------------------


def test_reply_carries_text_usage_cost_and_latency(openai_server: FakeOpenAIServer) -> None:
    openai_server.responder = lambda request: "the answer is 42"
    openai_server.usage = lambda request, content: (1200, 300)
    openai_server.latency = 0.05
    client = ChatClient(
        endpoint(openai_server, input_usd_per_million_tokens=2.5, output_usd_per_million_tokens=10.0, temperature=0.3),
        KEY,
        role="judge",
    )
    reply = asyncio.run(ask(client, "what is six times seven?"))

    assert reply.text == "the answer is 42"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.attempts) == (1200, 300, 1)
    assert reply.cost_usd == pytest.approx((1200 * 2.5 + 300 * 10.0) / 1e6)
    assert 0.05 <= reply.latency_seconds < 2.0
    assert reply.finish_reason == "stop" and reply.model == MODEL
    sent = openai_server.chat_requests[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body is not None
    assert sent.body["model"] == MODEL and sent.body["temperature"] == 0.3
    assert sent.body["max_completion_tokens"] == 4096
    judge = client.ledger.snapshot()["roles"]["judge"]
    assert judge["calls"] == 1 and judge["prompt_tokens"] == 1200 and judge["completion_tokens"] == 300
    assert judge["cost_usd"] == pytest.approx(reply.cost_usd)


def test_call_options_reach_the_server(openai_server: FakeOpenAIServer) -> None:
    client = ChatClient(endpoint(openai_server), KEY, role="planner")

    async def call() -> None:
        async with client:
            await client.complete([{"role": "user", "content": "x"}], max_tokens=64, temperature=0.0, json_mode=True)

    asyncio.run(call())
    body = openai_server.chat_requests[0].body
    assert body is not None
    assert body["max_completion_tokens"] == 64 and body["temperature"] == 0.0
    assert body["response_format"] == {"type": "json_object"}


def test_keyless_endpoint_sends_no_credentials_even_with_openai_variables_set(
    openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-from-the-environment")
    client = ChatClient(endpoint(openai_server), None, role="planner")
    asyncio.run(ask(client))
    headers = openai_server.chat_requests[0].headers
    assert "authorization" not in headers
    assert "openai-organization" not in headers


def test_responder_sees_image_parts(openai_server: FakeOpenAIServer, tiny_png: bytes) -> None:
    openai_server.responder = lambda request: f"{len(image_parts(request))} images"
    client = ChatClient(endpoint(openai_server), KEY, role="validator")
    content = [image_part(tiny_png), image_part(tiny_png), {"type": "text", "text": "how many?"}]

    async def call() -> ChatReply:
        async with client:
            return await client.complete([{"role": "user", "content": content}])

    assert asyncio.run(call()).text == "2 images"
    assert image_parts(openai_server.chat_requests[0].body or {})[0].startswith("data:image/png;base64,")


def test_client_survives_successive_event_loops(openai_server: FakeOpenAIServer) -> None:
    client = ChatClient(endpoint(openai_server, max_concurrency=2), KEY, role="judge")

    async def burst() -> list[ChatReply]:
        return list(await asyncio.gather(*(client.complete([{"role": "user", "content": "x"}]) for _ in range(5))))

    assert len(asyncio.run(burst())) == 5
    assert len(asyncio.run(burst())) == 5
    assert client.ledger.role("judge").calls == 10


def test_clients_share_the_process_tls_context(openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA certificates for a verifying TLS context costs about 40 ms of CPU: one per
    client, built at its first call, would stall every request in flight on the event loop."""
    verified_context()
    loads: list[object] = []
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *args, **kwargs: loads.append(args))
    clients = [ChatClient(endpoint(openai_server), KEY, role=role) for role in ("planner", "validator")]
    for client in clients:
        asyncio.run(ask(client))
    assert loads == []


# -- retries --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rate_limit_burst_waits_as_long_as_retry_after_says(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_next(3, rate_limited(0.2))
    client = ChatClient(endpoint(openai_server), KEY, role="planner")
    reply = asyncio.run(ask(client))

    assert reply.attempts == 4
    assert openai_server.statuses() == [429, 429, 429, 200]
    arrivals = [r.received_at for r in openai_server.chat_requests]
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(arrivals))
    assert client.ledger.role("planner").failures == {"rate_limited": 3}


def test_retry_after_ms_header_is_honoured(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_next(2, rate_limited(0.25, in_ms=True))
    client, fake = fake_time_client(openai_server)
    assert asyncio.run(ask(client)).attempts == 3
    assert fake.sleeps == pytest.approx([0.25, 0.25])


def test_rate_limit_without_header_backs_off_with_jitter(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_next(4, rate_limited())
    client, fake = fake_time_client(openai_server)
    assert asyncio.run(ask(client)).attempts == 5
    policy = CHAT_RETRY
    for retry, slept in enumerate(fake.sleeps, start=1):
        assert 0.0 <= slept <= policy.base_delay * 2 ** (retry - 1)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
def test_transient_statuses_are_retried_until_success(openai_server: FakeOpenAIServer, status: int) -> None:
    openai_server.fail_next(3, server_error(status))
    client, _ = fake_time_client(openai_server)
    reply = asyncio.run(ask(client))
    assert reply.attempts == 4 and reply.text == "hello"
    assert sum(client.ledger.role("planner").failures.values()) == 3


def test_persistent_server_errors_give_up_after_the_attempt_bound(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_every(1, server_error(503))
    client, _ = fake_time_client(openai_server)
    with pytest.raises(RetriesExhausted) as raised:
        asyncio.run(ask(client))
    failure = raised.value
    assert failure.attempts == CHAT_RETRY.max_attempts == len(openai_server.chat_requests)
    assert failure.kind is FailureKind.server_error and failure.status == 503
    assert openai_server.base_url in str(failure) and MODEL in str(failure) and "HTTP 503" in str(failure)
    assert isinstance(failure, LLMError)


def test_retry_time_bound_stops_before_the_attempt_bound(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_every(1, rate_limited(40.0))
    fake = FakeTime()
    client = ChatClient(
        endpoint(openai_server),
        KEY,
        role="planner",
        retry=replace(CHAT_RETRY, max_attempts=10, max_elapsed=100.0),
        clock=fake.clock,
        sleep=fake.sleep,
    )
    with pytest.raises(RetriesExhausted) as raised:
        asyncio.run(ask(client))
    assert raised.value.attempts == 3
    assert fake.now <= 100.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_refused_requests_fail_at_once_without_the_key(openai_server: FakeOpenAIServer, status: int) -> None:
    openai_server.fail_next(1, error(status, f"Incorrect API key provided: {KEY}"))
    client, fake = fake_time_client(openai_server)
    with pytest.raises(PermanentLLMError) as raised:
        asyncio.run(ask(client))
    message = str(raised.value)
    assert len(openai_server.chat_requests) == 1 and fake.sleeps == []
    assert raised.value.status == status
    assert f"HTTP {status}" in message and MODEL in message and openai_server.base_url in message
    assert KEY not in message and KEY not in repr(raised.value)
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert client.ledger.role("planner").failures == {"permanent": 1}


def test_timeouts_are_retried(openai_server: FakeOpenAIServer) -> None:
    openai_server.latency = lambda request: 2.0 if len(openai_server.chat_requests) == 1 else 0.0
    client = ChatClient(
        endpoint(openai_server, timeout_seconds=0.3), KEY, role="planner", retry=replace(CHAT_RETRY, base_delay=0.01)
    )
    started = time.monotonic()
    reply = asyncio.run(ask(client))
    assert reply.attempts == 2
    assert 0.3 <= time.monotonic() - started < 1.5
    assert client.ledger.role("planner").failures == {"timeout": 1}


def test_connection_failures_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fake = FakeTime()
    dead = ModelEndpoint(base_url=f"http://127.0.0.1:{port}/v1", model=MODEL)
    client = ChatClient(
        dead, KEY, role="planner", retry=replace(CHAT_RETRY, max_attempts=3), clock=fake.clock, sleep=fake.sleep
    )
    with pytest.raises(RetriesExhausted) as raised:
        asyncio.run(ask(client))
    assert raised.value.kind is FailureKind.connection and raised.value.attempts == 3
    assert client.ledger.role("planner").failures == {"connection": 3}


def test_malformed_response_body_is_retried(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_next(1, malformed_body())
    client, _ = fake_time_client(openai_server)
    assert asyncio.run(ask(client)).attempts == 2
    assert client.ledger.role("planner").failures == {"invalid_reply": 1}


# -- hostile and runaway servers ------------------------------------------------------------------


def test_a_dripping_server_is_abandoned_at_the_deadline(openai_server: FakeOpenAIServer) -> None:
    """Each byte comes well within the timeout, the whole reply would take a minute: one deadline
    bounds the exchange, and the call is retried as a timeout."""
    openai_server.fail_next(1, dripping(0.2))
    client = ChatClient(
        endpoint(openai_server, timeout_seconds=0.5), KEY, role="planner", retry=replace(CHAT_RETRY, base_delay=0.01)
    )
    started = time.monotonic()
    reply = asyncio.run(ask(client))
    assert reply.attempts == 2 and reply.text == "hello"
    assert 0.5 <= time.monotonic() - started < 2.0
    assert client.ledger.role("planner").failures == {"timeout": 1}


@pytest.mark.parametrize("chunked", [True, False], ids=["streamed", "with Content-Length"])
def test_a_huge_reply_is_refused_at_the_cap(openai_server: FakeOpenAIServer, chunked: bool) -> None:
    openai_server.fail_next(1, huge_reply(60 * 1024 * 1024, chunked=chunked))
    client, fake = fake_time_client(openai_server)
    started = time.monotonic()
    with pytest.raises(PermanentLLMError) as raised:
        asyncio.run(ask(client))
    assert time.monotonic() - started < 2.0
    assert f"over the cap of {MAX_REPLY_BYTES} bytes" in str(raised.value) and raised.value.status == 200
    assert len(openai_server.chat_requests) == 1 and fake.sleeps == [], "never retried"
    assert client.ledger.role("planner").failures == {"oversized": 1}


def test_a_reply_just_under_the_cap_is_read(openai_server: FakeOpenAIServer) -> None:
    outcome = huge_reply(MAX_REPLY_BYTES - 200, chunked=True)
    openai_server.fail_next(1, outcome)
    client = ChatClient(endpoint(openai_server), KEY, role="planner")
    assert outcome.raw_body is not None and len(outcome.raw_body) <= MAX_REPLY_BYTES
    assert asyncio.run(ask(client)).text == "a" * (MAX_REPLY_BYTES - 200)


def test_a_deeply_nested_response_body_is_an_invalid_reply_retried(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_next(1, Outcome(raw_body=b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    client, _ = fake_time_client(openai_server)
    assert asyncio.run(ask(client)).attempts == 2
    assert client.ledger.role("planner").failures == {"invalid_reply": 1}


# -- limits ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrency_cap_holds_across_clients_sharing_an_endpoint(openai_server: FakeOpenAIServer) -> None:
    openai_server.latency = 0.02
    planner = endpoint(openai_server, max_concurrency=4)
    validator = endpoint(openai_server, max_concurrency=6)
    registry = LimiterRegistry([planner, validator])
    clients = [
        ChatClient(planner, KEY, role="planner", limiter=registry.limiter(planner)),
        ChatClient(validator, KEY, role="validator", limiter=registry.limiter(validator)),
    ]

    async def fifty() -> list[ChatReply]:
        calls = [clients[i % 2].complete([{"role": "user", "content": f"q{i}"}]) for i in range(50)]
        replies = await asyncio.gather(*calls)
        for client in clients:
            await client.aclose()
        return list(replies)

    assert len(asyncio.run(fifty())) == 50
    assert openai_server.peak_in_flight == 4
    assert set(openai_server.statuses()) == {200}


def scaled_time(factor: float) -> tuple[Callable[[], float], Callable[[float], Awaitable[None]]]:
    """Real time sped up `factor` times: a limiter minute lasts 60/factor real seconds."""

    def clock() -> float:
        return time.monotonic() * factor

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / factor)

    return clock, sleep


def paced_burst(server: FakeOpenAIServer, requests_per_minute: int | None, calls: int, speedup: float) -> float:
    clock, sleep = scaled_time(speedup)
    limited = endpoint(server, requests_per_minute=requests_per_minute)
    limiter = EndpointLimiter.for_endpoint(limited, clock=clock, sleep=sleep)
    client = ChatClient(
        limited,
        KEY,
        role="planner",
        limiter=limiter,
        retry=replace(CHAT_RETRY, max_attempts=20, base_delay=0.01),
        clock=clock,
        sleep=sleep,
        rng=random.Random(1),
    )

    async def burst() -> None:
        async with client:
            await asyncio.gather(*(client.complete([{"role": "user", "content": "x"}]) for _ in range(calls)))

    started = time.monotonic()
    asyncio.run(burst())
    return time.monotonic() - started


@pytest.mark.slow
def test_requests_per_minute_keeps_a_strict_server_happy() -> None:
    limits = ServerLimits(requests_per_window=3, window_seconds=0.15)
    with FakeOpenAIServer(limits=limits) as server:
        elapsed = paced_burst(server, requests_per_minute=18, calls=12, speedup=60.0)
        assert server.statuses() == [200] * 12
    assert elapsed >= 11 / 18 - 0.05


@pytest.mark.slow
def test_without_a_rate_limit_the_strict_server_refuses_some() -> None:
    limits = ServerLimits(requests_per_window=3, window_seconds=0.15)
    with FakeOpenAIServer(limits=limits) as server:
        paced_burst(server, requests_per_minute=None, calls=12, speedup=1.0)
        statuses = server.statuses()
    assert 429 in statuses and statuses.count(200) == 12


# -- budget and secrecy ---------------------------------------------------------------------------


def test_budget_stops_new_calls_once_spent(openai_server: FakeOpenAIServer) -> None:
    openai_server.usage = lambda request, content: (1000, 1000)
    budget = SpendLimit(0.025)
    ledger = UsageLedger()
    client = ChatClient(
        endpoint(openai_server, input_usd_per_million_tokens=5.0, output_usd_per_million_tokens=5.0),
        KEY,
        role="planner",
        ledger=ledger,
        budget=budget,
    )

    async def spend() -> int:
        made = 0
        async with client:
            while True:
                try:
                    await client.complete([{"role": "user", "content": "x"}])
                except BudgetExceeded:
                    return made
                made += 1

    assert asyncio.run(spend()) == 3
    assert budget.exceeded and budget.spent_usd == pytest.approx(0.03) and budget.remaining_usd == 0.0
    assert len(openai_server.chat_requests) == 3
    assert ledger.total_cost_usd == pytest.approx(0.03)
    assert not issubclass(BudgetExceeded, LLMError)


def test_key_never_reaches_logs_or_reprs(openai_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    openai_server.fail_next(1, server_error(500))
    client = ChatClient(endpoint(openai_server), KEY, role="planner", retry=replace(CHAT_RETRY, base_delay=0.01))
    with caplog.at_level(logging.DEBUG):
        reply = asyncio.run(ask(client, "a prompt that must stay out of logs"))
        openai_server.fail_next(1, error(401, f"bad key {KEY}"))
        with pytest.raises(PermanentLLMError) as raised:
            asyncio.run(ask(client))

    rendered = [caplog.text, repr(client), repr(reply), repr(raised.value), json.dumps(client.ledger.snapshot())]
    assert all(KEY not in text for text in rendered)
    assert all(KEY not in repr(vars(r)) for r in caplog.records)
    ours = [r for r in caplog.records if r.name == "dpe.llm"]
    assert "a prompt that must stay out of logs" not in "".join(r.getMessage() for r in ours)
    success = vars(next(r for r in ours if r.getMessage().startswith("chat reply")))
    assert (success["role"], success["model"], success["status"], success["attempt"]) == ("planner", MODEL, 200, 2)
    assert success["latency_s"] >= 0.0
    retry = vars(next(r for r in ours if r.getMessage().startswith("chat retry")))
    assert (retry["status"], retry["kind"], retry["attempt"]) == (500, "server_error", 1)


# -- the fake server itself -----------------------------------------------------------------------


def test_fake_lists_models_to_the_real_sdk(openai_server: FakeOpenAIServer) -> None:
    async def listed() -> list[str]:
        async with openai.AsyncOpenAI(base_url=openai_server.base_url, api_key=KEY, max_retries=0) as sdk:
            return [model.id async for model in sdk.models.list()]

    assert asyncio.run(listed()) == [MODEL]


def test_fake_refuses_requests_over_its_concurrency_limit() -> None:
    with FakeOpenAIServer(latency=0.1, limits=ServerLimits(max_concurrency=2)) as server:
        client = ChatClient(
            endpoint(server, max_concurrency=6), KEY, role="planner", retry=replace(CHAT_RETRY, max_attempts=1)
        )

        async def six() -> list[ChatReply | BaseException]:
            async with client:
                calls = (client.complete([{"role": "user", "content": "x"}]) for _ in range(6))
                return list(await asyncio.gather(*calls, return_exceptions=True))

        outcomes = asyncio.run(six())
        assert sorted(server.statuses()) == [200, 200, 429, 429, 429, 429]
        assert server.peak_in_flight == 2
        assert sum(isinstance(o, RetriesExhausted) for o in outcomes) == 4
