"""RetryPolicy: configuration, the schedule, what is retried, giving up, and cancellation."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from typing import Any

import pytest

import holysheep as hs
from fakes import Err, FakeStatusError, made_or_refused
from holysheep.classify import breaker_outcome, is_retryable

FAST = {"base_delay": 0.001, "max_delay": 0.002}


class Flaky:
    """A callable failing with the given errors in turn, then returning "ok"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def async_call(self) -> str:
        return self()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, None),
        ({"max_attempts": 0}, Err("max_attempts")),
        ({"max_attempts": -1}, Err("max_attempts")),
        ({"base_delay": -1.0}, Err("base_delay")),
        ({"base_delay": float("nan")}, Err("base_delay")),
        ({"base_delay": 2.0, "max_delay": 1.0}, Err("max_delay")),
        ({"multiplier": 0.5}, Err("multiplier")),
        ({"jitter": "gaussian"}, Err("jitter")),
        ({"max_retry_after": float("inf")}, Err("max_retry_after")),
        ({"max_elapsed": 0.0}, Err("max_elapsed")),
        ({"retry_budget": 0.0}, Err("retry_budget")),
        ({"retry_on": "ValueError"}, Err("retry_on")),
        ({"retry_on": (ValueError, 3)}, Err("retry_on")),
        # Of the wrong kind (issue 15: these raised TypeError or OverflowError, or passed)
        ({"max_attempts": "5"}, Err("max_attempts")),
        ({"max_attempts": True}, Err("max_attempts")),
        ({"max_attempts": 2.5}, Err("max_attempts")),
        ({"max_attempts": 2**64}, Err("max_attempts")),
        ({"base_delay": "1"}, Err("base_delay")),
        ({"max_delay": None}, Err("max_delay")),
        ({"multiplier": "2"}, Err("multiplier")),
        ({"jitter": None}, Err("jitter")),
        ({"respect_retry_after": "yes"}, Err("respect_retry_after")),
        ({"max_elapsed": "10"}, Err("max_elapsed")),
        ({"retry_budget": "0.1"}, Err("retry_budget")),
    ],
)
def test_config_is_checked_at_construction(settings: dict[str, Any], expected: Err | None) -> None:
    made = made_or_refused(hs.RetryPolicy, settings, expected)
    assert expected is None or isinstance(made, ValueError)


def test_delays_without_jitter_are_the_exact_schedule() -> None:
    assert hs.RetryPolicy(jitter="none").delays() == [1.0, 2.0, 4.0, 8.0]
    capped = hs.RetryPolicy(max_attempts=8, base_delay=0.5, max_delay=10.0, multiplier=3.0, jitter="none")
    assert capped.delays() == [0.5, 1.5, 4.5, 10.0, 10.0, 10.0, 10.0]
    assert hs.RetryPolicy(max_attempts=10, jitter="none", max_elapsed=10.0).delays() == [1.0, 2.0, 4.0]


def test_full_jitter_delays_stay_under_the_exponential_schedule() -> None:
    for _ in range(20):
        delays = hs.RetryPolicy(max_attempts=6).delays()
        assert all(0.0 <= d <= cap for d, cap in zip(delays, [1.0, 2.0, 4.0, 8.0, 16.0]))


def test_policy_exposes_its_settings() -> None:
    policy = hs.RetryPolicy(max_attempts=3, jitter="equal", max_elapsed=5.0, retry_budget=0.2)
    assert (policy.max_attempts, policy.jitter, policy.max_elapsed, policy.retry_budget) == (3, "equal", 5.0, 0.2)
    assert "jitter='equal'" in repr(policy)


def test_transient_failures_are_retried_until_success() -> None:
    flaky = Flaky(FakeStatusError(503), TimeoutError(), ConnectionResetError())
    assert hs.RetryPolicy(**FAST).call_sync(flaky) == "ok"
    assert flaky.calls == 4


@pytest.mark.parametrize(
    "error",
    [
        FakeStatusError(400),
        FakeStatusError(401),
        FakeStatusError(403),
        FakeStatusError(404),
        FakeStatusError(422),
        FakeStatusError(429, body={"error": {"code": "insufficient_quota", "message": "out of credit"}}),
        FakeStatusError(503, {"x-should-retry": "false"}),
        TypeError("bad argument"),
        KeyError("missing"),
        RuntimeError("unknown to the table"),
    ],
)
def test_errors_that_cannot_pass_are_raised_at_once(error: Exception) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)) as info:
        hs.RetryPolicy(**FAST).call_sync(flaky)
    assert info.value is error
    assert flaky.calls == 1


def test_x_should_retry_true_retries_even_a_client_error() -> None:
    flaky = Flaky(FakeStatusError(400, {"X-Should-Retry": "true"}))
    assert hs.RetryPolicy(**FAST).call_sync(flaky) == "ok"


def test_gives_up_with_the_last_real_error_and_the_attempt_count() -> None:
    last = FakeStatusError(502)
    flaky = Flaky(FakeStatusError(503), FakeStatusError(500), last)
    with pytest.raises(FakeStatusError) as info:
        hs.RetryPolicy(max_attempts=3, **FAST).call_sync(flaky)
    assert info.value is last
    assert info.value.holysheep_attempts == 3  # type: ignore[attr-defined]
    assert "gave up after 3 attempts (max_attempts=3)" in info.value.__notes__[0]


def test_a_non_retryable_error_after_retries_carries_the_attempt_count() -> None:
    flaky = Flaky(FakeStatusError(503), FakeStatusError(401))
    with pytest.raises(FakeStatusError) as info:
        hs.RetryPolicy(**FAST).call_sync(flaky)
    assert info.value.holysheep_attempts == 2  # type: ignore[attr-defined]


def test_retry_after_header_overrides_backoff() -> None:
    flaky = Flaky(FakeStatusError(429, {"retry-after-ms": "60"}))
    started = time.monotonic()
    assert hs.RetryPolicy(base_delay=30.0, max_delay=30.0).call_sync(flaky) == "ok"
    assert 0.06 <= time.monotonic() - started < 5.0


def test_absurd_retry_after_falls_back_to_backoff() -> None:
    years = str(3 * 365 * 24 * 3600)
    flaky = Flaky(FakeStatusError(429, {"retry-after": years}), FakeStatusError(429, {"retry-after": "soon"}))
    started = time.monotonic()
    assert hs.RetryPolicy(max_retry_after=1.0, **FAST).call_sync(flaky) == "ok"
    assert time.monotonic() - started < 1.0


def test_retry_after_is_ignored_when_not_respected() -> None:
    flaky = Flaky(FakeStatusError(429, {"retry-after": "60"}))
    started = time.monotonic()
    assert hs.RetryPolicy(respect_retry_after=False, **FAST).call_sync(flaky) == "ok"
    assert time.monotonic() - started < 1.0


def test_max_elapsed_stops_before_a_wait_that_would_pass_it() -> None:
    flaky = Flaky(*[FakeStatusError(503)] * 10)
    policy = hs.RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=1.0, jitter="none", max_elapsed=0.2)
    with pytest.raises(FakeStatusError) as info:
        policy.call_sync(flaky)
    assert flaky.calls == 3, "waits of 0.05 and 0.1 fit in 0.2 s, 0.2 more would not"
    assert "max_elapsed=0.2" in info.value.__notes__[0]


def test_retry_budget_stops_a_retry_storm() -> None:
    policy = hs.RetryPolicy(max_attempts=1000, base_delay=0.0, max_delay=0.0, retry_budget=0.1)
    flaky = Flaky(*[FakeStatusError(503)] * 1000)
    with pytest.raises(FakeStatusError) as info:
        policy.call_sync(flaky)
    assert flaky.calls == 11, "a lone call may retry 10 times per 10 s, the budget's floor"
    assert "retry_budget=0.1" in info.value.__notes__[0]


def test_retry_on_classes_replaces_the_table() -> None:
    class Transient(Exception):
        pass

    policy = hs.RetryPolicy(retry_on=Transient, **FAST)
    assert policy.call_sync(Flaky(Transient())) == "ok"
    with pytest.raises(FakeStatusError):
        policy.call_sync(Flaky(FakeStatusError(503)))


def test_retry_on_predicate_can_extend_the_table() -> None:
    class Transient(Exception):
        pass

    policy = hs.RetryPolicy(retry_on=lambda e: isinstance(e, Transient) or is_retryable(e), **FAST)
    assert policy.call_sync(Flaky(Transient(), FakeStatusError(503))) == "ok"


def test_keyboard_interrupt_propagates_at_once() -> None:
    flaky = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        hs.RetryPolicy(retry_on=lambda e: True, **FAST).call_sync(flaky)
    assert flaky.calls == 1


async def test_async_call_retries_until_success() -> None:
    flaky = Flaky(FakeStatusError(502), asyncio.TimeoutError())
    assert await hs.RetryPolicy(**FAST).call(flaky.async_call) == "ok"
    assert flaky.calls == 3


async def test_cancelling_during_backoff_stops_retrying_at_once() -> None:
    flaky = Flaky(*[FakeStatusError(503)] * 5)
    task = asyncio.create_task(hs.RetryPolicy(base_delay=30.0, max_delay=30.0, jitter="none").call(flaky.async_call))
    await asyncio.sleep(0.05)
    assert flaky.calls == 1, "the task is sleeping before its second attempt"
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert flaky.calls == 1


async def test_cancelled_error_from_the_call_is_never_retried() -> None:
    flaky = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await hs.RetryPolicy(retry_on=lambda e: True, **FAST).call(flaky.async_call)
    assert flaky.calls == 1


def test_openai_exceptions_are_recognised_once_openai_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    class APIConnectionError(Exception):
        pass

    class APITimeoutError(APIConnectionError):
        pass

    fake_openai = types.ModuleType("openai")
    fake_openai.APIConnectionError = APIConnectionError  # type: ignore[attr-defined]
    fake_openai.APITimeoutError = APITimeoutError  # type: ignore[attr-defined]
    assert not is_retryable(APITimeoutError()), "unknown while openai is not imported"
    monkeypatch.setitem(sys.modules, "openai", fake_openai)
    assert is_retryable(APITimeoutError())
    assert is_retryable(APIConnectionError())
    assert breaker_outcome(APITimeoutError()) == "failure"


def test_openai_status_errors_are_read_by_status_and_code() -> None:
    class RateLimitError(Exception):
        def __init__(self, code: str) -> None:
            self.status_code = 429
            self.code = code
            self.response = None

    assert is_retryable(RateLimitError("rate_limit_exceeded"))
    assert not is_retryable(RateLimitError("insufficient_quota"))
