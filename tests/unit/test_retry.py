"""dpe.retry: back-off arithmetic, status classification, Retry-After parsing and both loops.

Sleep, clock and random source are injected everywhere, so nothing here waits for real.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from dpe.retry import (
    TRANSIENT_HTTP_STATUSES,
    Backoff,
    FailedAttempt,
    is_transient_status,
    retry_after_seconds,
    retry_call,
    retry_call_async,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class FakeTime:
    """A clock that moves only when something sleeps on it or an attempt says it took time."""

    now: float = 100.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Flaky(Exception):
    """A transient failure; `retry_after` is the wait its server asked for, if any."""

    def __init__(self, number: int, retry_after: float | None = None):
        super().__init__(f"failure {number}")
        self.retry_after = retry_after


class Broken(Exception):
    """A failure that repeating cannot fix."""


class NoRandom(random.Random):
    """An rng that must not be drawn from."""

    def random(self) -> float:
        raise AssertionError("the back-off was drawn although the server asked for a wait")


@dataclass
class Operation:
    """Fails `failures` times (each attempt taking `duration` fake seconds), then returns "done"."""

    time: FakeTime
    failures: int
    duration: float = 0.0
    retry_after: float | None = None
    error: Callable[[int, float | None], Exception] = Flaky
    calls: int = 0
    raised: list[Exception] = field(default_factory=list)

    def __call__(self) -> str:
        self.calls += 1
        self.time.now += self.duration
        if self.calls <= self.failures:
            error = self.error(self.calls, self.retry_after)
            self.raised.append(error)
            raise error
        return "done"

    async def run(self) -> str:
        await asyncio.sleep(0)
        return self()


def flaky(error: Exception) -> bool:
    return isinstance(error, Flaky)


def run_sync(operation: Operation, backoff: Backoff, rng: random.Random | None = None, **hooks: object) -> str:
    return retry_call(
        operation,
        backoff=backoff,
        is_transient=flaky,
        sleep=operation.time.sleep,
        clock=operation.time.clock,
        rng=rng or random.Random(7),
        **hooks,  # type: ignore[arg-type]
    )


def run_async(operation: Operation, backoff: Backoff, rng: random.Random | None = None, **hooks: object) -> str:
    return asyncio.run(
        retry_call_async(
            operation.run,
            backoff=backoff,
            is_transient=flaky,
            sleep=operation.time.async_sleep,
            clock=operation.time.clock,
            rng=rng or random.Random(7),
            **hooks,  # type: ignore[arg-type]
        )
    )


LOOPS = [pytest.param(run_sync, id="sync"), pytest.param(run_async, id="async")]
Loop = Callable[..., str]


# --- the policy ----------------------------------------------------------------------------------


def test_caps_double_from_the_base_up_to_the_maximum() -> None:
    backoff = Backoff(base_delay=0.5, max_delay=3.0)
    assert [backoff.cap(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_spreads_waits_over_the_whole_cap() -> None:
    backoff = Backoff(base_delay=1.0, max_delay=8.0)
    rng = random.Random(3)
    for failures, cap in [(1, 1.0), (2, 2.0), (4, 8.0), (10, 8.0)]:
        delays = [backoff.delay(failures, rng) for _ in range(500)]
        assert all(0.0 <= d <= cap for d in delays)
        assert min(delays) < 0.1 * cap and max(delays) > 0.9 * cap


def test_partial_jitter_keeps_waits_in_the_top_share_of_the_cap() -> None:
    backoff = Backoff(base_delay=2.0, max_delay=2.0, jitter=0.25)
    rng = random.Random(5)
    delays = [backoff.delay(3, rng) for _ in range(500)]
    assert all(1.5 <= d <= 2.0 for d in delays)
    assert min(delays) < 1.55 and max(delays) > 1.95


def test_without_jitter_the_wait_is_the_cap() -> None:
    backoff = Backoff(base_delay=0.25, max_delay=4.0, jitter=0.0)
    assert [backoff.delay(n, random.Random(n)) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_full_jitter_draws_as_a_plain_uniform_does() -> None:
    """Seeded callers keep their numbers: full jitter is `rng.uniform(0, cap)`."""
    backoff = Backoff(base_delay=0.3, max_delay=5.0)
    ours, plain = random.Random(11), random.Random(11)
    assert [backoff.delay(n, ours) for n in range(1, 8)] == [plain.uniform(0.0, backoff.cap(n)) for n in range(1, 8)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "at least 1"),
        ({"base_delay": -1.0}, "must not be negative"),
        ({"max_delay": -0.1}, "must not be negative"),
        ({"max_elapsed": -5.0}, "must not be negative"),
        ({"jitter": 1.5}, "between 0 and 1"),
        ({"jitter": -0.1}, "between 0 and 1"),
    ],
)
def test_a_policy_is_checked_when_made(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**fields)  # type: ignore[arg-type]


# --- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 501, 502, 503, 504, 529, 599])
def test_passing_conditions_are_transient(status: int) -> None:
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 404, 413, 422, 425])
def test_refusals_are_not_transient(status: int) -> None:
    assert not is_transient_status(status)


def test_callers_may_bring_their_own_statuses() -> None:
    store_like = frozenset({429}) | frozenset(range(500, 600))
    assert is_transient_status(503, store_like) and is_transient_status(429, store_like)
    assert not is_transient_status(409, store_like) and not is_transient_status(408, store_like)
    assert {408, 409, 429} < TRANSIENT_HTTP_STATUSES


# --- Retry-After ---------------------------------------------------------------------------------


def at(seconds: float) -> str:
    return format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"RETRY-AFTER": "120"}, 120.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500", "Retry-After": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "-40"}, 0.0),
        ({"Retry-After": at(30)}, 30.0),
        ({"Retry-After": at(-30)}, 0.0),
        ({"Retry-After": "Sat, 01 Mar 2025 12:00:45 -0000"}, 45.0),
        ({"Retry-After": "Sat, 01 Mar 2025 13:00:10 +0100"}, 10.0),
        ({}, None),
        ({"Content-Type": "application/json"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "Someday, 99 Foo 2025"}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=lambda: NOW) == expected


def test_retry_after_dates_read_against_the_real_clock_by_default() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25.0 <= (retry_after_seconds({"Retry-After": later}) or 0.0) <= 30.0


# --- the loops -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_success_at_once_neither_waits_nor_calls_hooks(loop: Loop) -> None:
    time_ = FakeTime()
    seen: list[FailedAttempt] = []
    operation = Operation(time_, failures=0)
    assert loop(operation, Backoff(), on_retry=lambda _, a: seen.append(a)) == "done"
    assert operation.calls == 1 and time_.sleeps == [] and seen == []


@pytest.mark.parametrize("loop", LOOPS)
def test_transient_failures_are_retried_under_growing_caps(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=3)
    assert loop(operation, Backoff(max_attempts=4, base_delay=0.5, max_delay=1.0)) == "done"
    assert operation.calls == 4
    assert len(time_.sleeps) == 3
    assert all(0.0 <= slept <= cap for slept, cap in zip(time_.sleeps, [0.5, 1.0, 1.0], strict=True))


@pytest.mark.parametrize("loop", LOOPS)
def test_the_waits_are_the_policys_draws_from_the_given_rng(loop: Loop) -> None:
    time_ = FakeTime()
    backoff = Backoff(base_delay=1.0, max_delay=10.0)
    loop(Operation(time_, failures=3), backoff)
    rng = random.Random(7)
    assert time_.sleeps == [backoff.delay(n, rng) for n in (1, 2, 3)]


@pytest.mark.parametrize("loop", LOOPS)
def test_other_errors_pass_through_at_once(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=5, error=lambda n, _: Broken(f"broken {n}"))
    with pytest.raises(Broken, match="broken 1"):
        loop(operation, Backoff())
    assert operation.calls == 1 and time_.sleeps == []


@pytest.mark.parametrize("loop", LOOPS)
def test_the_last_error_itself_is_raised_after_the_last_attempt(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=10)
    with pytest.raises(Flaky) as raised:
        loop(operation, Backoff(max_attempts=3))
    assert operation.calls == 3 and len(time_.sleeps) == 2
    assert raised.value is operation.raised[-1]


@pytest.mark.parametrize("loop", LOOPS)
def test_one_attempt_means_no_retry(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=1)
    with pytest.raises(Flaky):
        loop(operation, Backoff(max_attempts=1))
    assert operation.calls == 1 and time_.sleeps == []


@pytest.mark.parametrize("loop", LOOPS)
def test_no_retry_starts_past_the_deadline(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=1000)
    backoff = Backoff(max_attempts=1000, base_delay=1.0, max_delay=1.0, max_elapsed=5.0, jitter=0.0)
    with pytest.raises(Flaky):
        loop(operation, backoff)
    assert time_.sleeps == [1.0] * 5
    assert operation.calls == 6


@pytest.mark.parametrize("loop", LOOPS)
def test_the_deadline_counts_from_the_first_failure(loop: Loop) -> None:
    """A slow first attempt (bounded by its own timeout) leaves the retry window whole; retried
    attempts and waits count against it."""
    time_ = FakeTime()
    operation = Operation(time_, failures=1000, duration=2.0)
    backoff = Backoff(max_attempts=1000, base_delay=1.0, max_delay=1.0, max_elapsed=9.0, jitter=0.0)
    seen: list[FailedAttempt] = []
    with pytest.raises(Flaky):
        loop(operation, backoff, on_give_up=lambda _, a: seen.append(a))
    # Failures at 2 (first), 5, 8, 11 s after the start: elapsed 0, 3, 6, 9; 9 + 1 > 9 ends it.
    assert operation.calls == 4 and time_.sleeps == [1.0, 1.0, 1.0]
    assert seen == [FailedAttempt(number=4, elapsed=9.0, delay=1.0)]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_server_asked_wait_replaces_the_back_off(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=2, retry_after=0.25)
    assert loop(operation, Backoff(base_delay=10.0, max_delay=10.0), NoRandom()) == "done"
    assert time_.sleeps == [0.25, 0.25]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_server_asked_wait_past_the_deadline_ends_the_retries(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=10, retry_after=40.0)
    with pytest.raises(Flaky):
        loop(operation, Backoff(max_attempts=10, max_elapsed=100.0))
    assert time_.sleeps == [40.0, 40.0] and operation.calls == 3


@pytest.mark.parametrize("loop", LOOPS)
def test_hooks_see_each_attempt(loop: Loop) -> None:
    time_ = FakeTime()
    retries: list[tuple[str, FailedAttempt]] = []
    give_ups: list[tuple[str, FailedAttempt]] = []
    operation = Operation(time_, failures=10, duration=0.5)
    backoff = Backoff(max_attempts=3, base_delay=1.0, max_delay=1.0, jitter=0.0)
    with pytest.raises(Flaky):
        loop(
            operation,
            backoff,
            on_retry=lambda error, attempt: retries.append((str(error), attempt)),
            on_give_up=lambda error, attempt: give_ups.append((str(error), attempt)),
        )
    assert retries == [
        ("failure 1", FailedAttempt(number=1, elapsed=0.0, delay=1.0)),
        ("failure 2", FailedAttempt(number=2, elapsed=1.5, delay=1.0)),
    ]
    assert give_ups == [("failure 3", FailedAttempt(number=3, elapsed=3.0, delay=1.0))]


class Exhausted(Exception):
    pass


@pytest.mark.parametrize("loop", LOOPS)
def test_the_give_up_hook_may_raise_its_own_error_chained_to_the_last(loop: Loop) -> None:
    time_ = FakeTime()
    operation = Operation(time_, failures=10)

    def give_up(error: Exception, attempt: FailedAttempt) -> None:
        raise Exhausted(f"gave up after {attempt.number}: {error}") from error

    with pytest.raises(Exhausted, match="gave up after 2: failure 2") as raised:
        loop(operation, Backoff(max_attempts=2), on_give_up=give_up)
    assert raised.value.__cause__ is operation.raised[-1]


@pytest.mark.parametrize("loop", LOOPS)
def test_each_call_starts_afresh(loop: Loop) -> None:
    time_ = FakeTime()
    backoff = Backoff(max_attempts=2, base_delay=0.1, max_delay=0.1, jitter=0.0)
    for _ in range(3):
        assert loop(Operation(time_, failures=1), backoff) == "done"
    assert time_.sleeps == [0.1, 0.1, 0.1]


def test_the_async_loop_suspends_on_its_wait() -> None:
    waits: list[float] = []
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Flaky(1, retry_after=0.5)
        return "done"

    async def scenario() -> str:
        released = asyncio.Event()

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            await released.wait()

        task = asyncio.create_task(retry_call_async(operation, backoff=Backoff(), is_transient=flaky, sleep=sleep))
        for _ in range(3):
            await asyncio.sleep(0)
        assert waits == [0.5] and calls == 1 and not task.done()
        released.set()
        return await task

    assert asyncio.run(scenario()) == "done"
    assert calls == 2


def test_interrupts_are_never_retried() -> None:
    def operation() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retry_call(operation, backoff=Backoff(), is_transient=lambda _: True, sleep=lambda _: None)
