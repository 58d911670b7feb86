"""The decorators with the real hs.HolySheepRateLimiter: every attempt, retries included, is admitted by
it, its concurrency cap holds, and a cancelled call gives its slot back. Skipped on a branch that does
not have the limiter yet."""

from __future__ import annotations

import asyncio
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import openai
import pytest

import holysheep as hs
from holysheep.testing import Faults, MockGateway

pytestmark = pytest.mark.skipif(
    not hasattr(hs, "HolySheepRateLimiter"), reason="needs hs.HolySheepRateLimiter (the limiter branch)"
)

FAST = hs.RetryPolicy(base_delay=0.001, max_delay=0.002)


def test_every_sync_attempt_is_admitted_by_the_limiter() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=1000, max_concurrency=1)
    attempts: list[int] = []

    @hs.resilient(limiter=lim, retry=FAST, breaker=hs.CircuitBreaker(failure_threshold=10))
    def work(i: int) -> int:
        attempts.append(i)
        if len(attempts) % 3:
            raise ConnectionError("flaky")
        return i

    assert [work(i) for i in range(3)] == [0, 1, 2]
    stats = lim.stats()
    assert stats["admitted"] == len(attempts) == 9
    assert stats["in_flight"] == 0


async def test_async_retries_queue_like_any_call_and_respect_the_caps() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(5, per=0.2)], max_concurrency=2)
    in_flight = peak = attempts = 0

    @hs.resilient(limiter=lim, retry=FAST, breaker=hs.CircuitBreaker(failure_threshold=100))
    async def work(i: int) -> int:
        nonlocal in_flight, peak, attempts
        attempts += 1
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if attempts % 2:
            raise TimeoutError()
        return i

    started = time.monotonic()
    assert await asyncio.gather(*(work(i) for i in range(10))) == list(range(10))
    elapsed = time.monotonic() - started
    assert peak <= 2
    assert lim.stats()["admitted"] == attempts
    assert elapsed >= (attempts / 5 - 1) * 0.2 - 0.02, "5 per 0.2 s held for the retries too"


async def test_cancelled_limited_call_gives_its_slot_back() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)

    @hs.rate_limited(lim)
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.stats()["in_flight"] == 0
    assert lim.try_acquire()
    lim.release()


# --- the SDK's own retries under the decorators (issue 15) ---
# README's "3 a.m." pattern around a bare AsyncOpenAI (max_retries=2 by default): the limiter admitted
# 74, the gateway saw 137 requests. The decorators cannot see those retries, but the failure can: its
# request carries x-stainless-retry-count.

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


async def test_resilient_warns_when_the_openai_client_it_calls_retried_past_the_limiter() -> None:
    with MockGateway(faults=Faults(unavailable=1.0)) as gw:
        lim = hs.HolySheepRateLimiter(max_qps=100)
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="hs_test") as bare:

            @hs.resilient(limiter=lim, retry=hs.RetryPolicy(max_attempts=1))
            async def complete() -> Any:
                return await bare.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

            with pytest.warns(RuntimeWarning, match=r"retried a request 2 time\(s\) on its own.*max_retries=0"):
                with pytest.raises(openai.InternalServerError):
                    await complete()
        assert (lim.stats()["admitted"], len(gw.admission_log())) == (1, 3)


async def test_an_openai_client_without_retries_of_its_own_is_not_warned_about() -> None:
    with MockGateway(faults=Faults(unavailable=1.0)) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0) as bare:

            @hs.rate_limited(hs.HolySheepRateLimiter(max_qps=100))
            async def complete() -> Any:
                return await bare.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(openai.InternalServerError):
                    await complete()


class SdkRetriedError(Exception):
    """A failure of the openai SDK after it retried on its own, as far as the decorators read it."""

    def __init__(self) -> None:
        super().__init__("HTTP 503")
        self.request = types.SimpleNamespace(headers={"x-stainless-retry-count": "2"})


@pytest.mark.parametrize(
    "decorate",
    [
        hs.rate_limited(hs.HolySheepRateLimiter(max_qps=1_000)),
        hs.resilient(limiter=hs.HolySheepRateLimiter(max_qps=1_000), retry=FAST),
        hs.resilient(retry=FAST, breaker=hs.CircuitBreaker(failure_threshold=100)),
    ],
    ids=["rate_limited", "resilient", "resilient without a limiter"],
)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["def", "async def"])
async def test_each_decorated_function_warns_once(decorate: Callable[[Any], Any], asynchronous: bool) -> None:
    def fail() -> None:
        raise SdkRetriedError()

    async def fail_async() -> None:
        fail()

    decorated = decorate(fail_async if asynchronous else fail)
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            with pytest.raises(SdkRetriedError):
                await decorated() if asynchronous else decorated()
    assert len(record) == 1
    assert record[0].filename == __file__
