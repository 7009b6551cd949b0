"""Pure pieces of the call policy: token buckets, the shared limiter, retry timing, accounting."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from dpe.llm import (
    BudgetExceeded,
    EndpointLimiter,
    FailureKind,
    LimiterRegistry,
    SpendLimit,
    TokenBucket,
    UsageLedger,
    classify_status,
    estimate_prompt_tokens,
)
from dpe.llm.client import IMAGE_TOKEN_ESTIMATE
from dpe.retry import Backoff, retry_after_seconds
from dpe.spec import ModelEndpoint


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def admissions(limiter: EndpointLimiter, fake: FakeTime, tokens: list[tuple[int, int]]) -> list[float]:
    """The fake time at which each (estimated, used) request was admitted, in order."""
    times: list[float] = []

    async def one(estimated: int, used: int) -> None:
        async with limiter.slot(estimated) as permit:
            times.append(fake.now)
            permit.used_tokens = used

    async def all_of() -> None:
        await asyncio.gather(*(one(e, u) for e, u in tokens))

    asyncio.run(all_of())
    return times


def test_request_bucket_spaces_requests_at_the_quota() -> None:
    fake = FakeTime()
    limiter = EndpointLimiter(max_concurrency=50, requests_per_minute=30, clock=fake.clock, sleep=fake.sleep)
    times = admissions(limiter, fake, [(1, 1)] * 10)
    assert times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([2.0] * 9)


@pytest.mark.parametrize("per_minute", [1, 30, 600, 6000])
def test_no_sixty_second_window_holds_more_than_quota_plus_burst(per_minute: int) -> None:
    fake = FakeTime()
    bucket = TokenBucket(per_minute, fake.clock)
    times: list[float] = []

    async def take_many() -> None:
        for _ in range(3 * per_minute):
            await bucket.take(1, fake.sleep)
            times.append(fake.now)

    asyncio.run(take_many())
    burst = max(1.0, per_minute / 60)
    for index, start in enumerate(times):
        in_window = bisect.bisect_left(times, start + 60.0) - index
        assert in_window <= per_minute + burst


def test_token_bucket_charges_real_usage_after_the_fact() -> None:
    fake = FakeTime()
    limiter = EndpointLimiter(max_concurrency=1, tokens_per_minute=600, clock=fake.clock, sleep=fake.sleep)
    times = admissions(limiter, fake, [(10, 100), (10, 10), (10, 10)])
    # 10 tokens per second, bucket of 10: the first request's 90 extra tokens are a debt of 9 seconds.
    assert times[0] == 0.0
    assert times[1] == pytest.approx(10.0)
    assert times[2] == pytest.approx(11.0)


def test_request_larger_than_the_bucket_still_passes() -> None:
    fake = FakeTime()
    limiter = EndpointLimiter(max_concurrency=1, tokens_per_minute=60, clock=fake.clock, sleep=fake.sleep)
    times = admissions(limiter, fake, [(5, 5), (5, 5)])
    assert times == pytest.approx([0.0, 5.0])


def test_pause_holds_back_every_request() -> None:
    fake = FakeTime()
    limiter = EndpointLimiter(max_concurrency=4, clock=fake.clock, sleep=fake.sleep)
    limiter.pause(7.5)
    assert admissions(limiter, fake, [(1, 1)] * 3) == pytest.approx([7.5] * 3)


def test_concurrency_slots_are_never_exceeded() -> None:
    limiter = EndpointLimiter(max_concurrency=3)
    active = 0
    peak = 0

    async def one() -> None:
        nonlocal active, peak
        async with limiter.slot(1):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.001)
            active -= 1

    async def all_of() -> None:
        await asyncio.gather(*(one() for _ in range(30)))

    asyncio.run(all_of())
    assert peak == 3


def endpoint(url: str, **overrides: object) -> ModelEndpoint:
    return ModelEndpoint.model_validate({"base_url": url, "model": "m", **overrides})


def test_registry_shares_one_limiter_per_base_url_with_the_strictest_limits() -> None:
    planner = endpoint("https://gw.example/v1", max_concurrency=8, requests_per_minute=100)
    judge = endpoint("https://gw.example/v1/", max_concurrency=4, tokens_per_minute=5000)
    other = endpoint("https://other.example/v1")
    registry = LimiterRegistry([planner, judge, other])
    shared = registry.limiter(planner)
    assert registry.limiter(judge) is shared
    assert (shared.max_concurrency, shared.requests_per_minute, shared.tokens_per_minute) == (4, 100, 5000)
    assert registry.limiter(other) is not shared
    with pytest.raises(KeyError, match=r"unknown\.example"):
        registry.limiter(endpoint("https://unknown.example/v1"))


@dataclass(frozen=True)
class StatusCase:
    status: int
    kind: FailureKind


STATUS_CASES = [
    StatusCase(429, FailureKind.rate_limited),
    StatusCase(408, FailureKind.timeout),
    StatusCase(409, FailureKind.server_error),
    StatusCase(500, FailureKind.server_error),
    StatusCase(529, FailureKind.server_error),
    StatusCase(400, FailureKind.permanent),
    StatusCase(401, FailureKind.permanent),
    StatusCase(403, FailureKind.permanent),
    StatusCase(404, FailureKind.permanent),
    StatusCase(413, FailureKind.permanent),
    StatusCase(422, FailureKind.permanent),
]


@pytest.mark.parametrize("case", STATUS_CASES, ids=lambda c: str(c.status))
def test_statuses_are_told_apart(case: StatusCase) -> None:
    assert classify_status(case.status) is case.kind


def test_retry_after_headers() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"Retry-After": "-4"}) == 0.0
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25.0 <= (retry_after_seconds({"Retry-After": later}) or 0.0) <= 30.0


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    policy = Backoff(base_delay=1.0, max_delay=8.0)
    rng = random.Random(3)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling


def test_prompt_estimate_counts_text_and_images_not_base64() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:" + "A" * 100_000}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "x" * 400},
        {"role": "user", "content": [image, {"type": "text", "text": "y" * 40}]},
    ]
    assert estimate_prompt_tokens(messages) == 4 + 100 + 4 + IMAGE_TOKEN_ESTIMATE + 10


def test_ledger_is_safe_across_threads_and_snapshots_plain_data() -> None:
    ledger = UsageLedger()

    def work() -> None:
        for _ in range(1000):
            ledger.record_call("planner", prompt_tokens=2, completion_tokens=1, cost_usd=0.001, latency_seconds=0.1)
            ledger.record_failure("judge", FailureKind.rate_limited)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.record_invalid("judge", "schema: answer")
    snapshot = ledger.snapshot()
    assert snapshot["roles"]["planner"]["calls"] == 8000
    assert snapshot["roles"]["planner"]["prompt_tokens"] == 16000
    assert snapshot["roles"]["judge"]["failures"] == {"rate_limited": 8000, "invalid_reply": 1}
    assert snapshot["roles"]["judge"]["invalid_reasons"] == {"schema: answer": 1}
    assert snapshot["total"]["cost_usd"] == pytest.approx(8.0)
    assert snapshot["total"]["failures"] == 8001


def test_budget_flags_and_raises_once_reached() -> None:
    budget = SpendLimit(1.0, spent_usd=0.4)
    budget.check()
    budget.charge(0.5)
    assert not budget.exceeded and budget.remaining_usd == pytest.approx(0.1)
    budget.charge(0.2)
    assert budget.exceeded
    with pytest.raises(BudgetExceeded, match=r"\$1\.1000.*\$1\.0000"):
        budget.check()
