"""Timeouts (issue 19): `RetryPolicy(attempt_timeout=)` cuts a running attempt of a coroutine, which
counts as a timeout and is retried; `max_elapsed` bounds the whole call, the running attempt included;
blocking functions are not interruptible; the openai clients take the attempt timeout as the SDK's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

import holysheep as hs
from fakes import Err


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, None), (None, None), (0, Err("attempt_timeout")), (-1.0, Err("attempt_timeout")), ("5", Err("attempt_timeout")), (float("nan"), Err("attempt_timeout"))],
)
def test_attempt_timeout_is_checked_at_construction(value: Any, expected: Err | None) -> None:
    if expected is None:
        assert hs.RetryPolicy(attempt_timeout=value).attempt_timeout == value
        return
    with pytest.raises(hs.ConfigError) as info:
        hs.RetryPolicy(attempt_timeout=value)
    assert info.value.field == expected.field


async def test_an_attempt_past_attempt_timeout_is_cancelled_and_retried() -> None:
    attempts: list[str] = []

    @hs.RetryPolicy(max_attempts=3, base_delay=0.01, jitter="none", attempt_timeout=0.1)
    async def hangs_once() -> str:
        attempts.append("start")
        try:
            await asyncio.sleep(10 if len(attempts) == 1 else 0)
        except asyncio.CancelledError:
            attempts.append("cancelled")
            raise
        return "answer"

    started = time.monotonic()
    assert await hangs_once() == "answer"
    assert attempts == ["start", "cancelled", "start"]
    assert time.monotonic() - started < 2.0


async def test_every_attempt_cut_raises_timeout_error_naming_the_setting() -> None:
    policy = hs.RetryPolicy(max_attempts=2, base_delay=0.01, jitter="none", attempt_timeout=0.05)

    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError, match="attempt_timeout") as info:
        await policy.call(hangs)
    assert getattr(info.value, "holysheep_attempts", None) == 2
    assert hs.classify.is_retryable(info.value), "a cut attempt is a timeout, which the table retries"


async def test_max_elapsed_cuts_the_running_attempt_not_only_the_next_one() -> None:
    # issue 19: max_elapsed only stopped new attempts; a hanging first attempt ran for as long as it liked
    @hs.RetryPolicy(max_attempts=5, max_elapsed=0.2)
    async def hangs() -> None:
        await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="max_elapsed"):
        await hangs()
    assert time.monotonic() - started < 2.0


async def test_an_attempts_own_timeout_error_is_left_as_it_is() -> None:
    @hs.RetryPolicy(max_attempts=1, attempt_timeout=5.0)
    async def own() -> None:
        raise asyncio.TimeoutError("the callee's own")

    with pytest.raises(asyncio.TimeoutError, match="the callee's own"):
        await own()


async def test_under_resilient_a_cut_attempt_counts_for_the_breaker_as_a_timeout() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2)
    retry = hs.RetryPolicy(max_attempts=2, base_delay=0.01, jitter="none", attempt_timeout=0.05)

    @hs.resilient(retry=retry, breaker=breaker)
    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await hangs()
    assert breaker.state == "open", "two cut attempts, two timeouts"


def test_a_blocking_function_is_not_interrupted() -> None:
    @hs.RetryPolicy(attempt_timeout=0.01)
    def slow() -> str:
        time.sleep(0.05)
        return "done"

    assert slow() == "done"


@pytest.mark.parametrize("client_class", [hs.AsyncHolySheep, hs.HolySheep])
def test_the_openai_clients_take_attempt_timeout_as_the_sdks_per_request_timeout(client_class: Any) -> None:
    policy = hs.RetryPolicy(attempt_timeout=7.5)
    client = client_class(api_key="hs_test", base_url="http://127.0.0.1:9/v1", retry=policy)
    assert client.timeout == 7.5
    own = client_class(api_key="hs_test", base_url="http://127.0.0.1:9/v1", retry=policy, timeout=3.0)
    assert own.timeout == 3.0, "a timeout given to the client wins"


def test_wrap_takes_attempt_timeout_as_the_sdks_per_request_timeout() -> None:
    bare = openai.AsyncOpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    wrapped = hs.wrap(bare, retry=hs.RetryPolicy(attempt_timeout=4.0))
    assert wrapped.timeout == 4.0
