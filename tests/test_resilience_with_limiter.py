"""The decorators with the real hs.HolySheepRateLimiter: every attempt, retries included, is admitted by
it, its concurrency cap holds, and a cancelled call gives its slot back. Skipped on a branch that does
not have the limiter yet."""

from __future__ import annotations

import asyncio
import time

import pytest

import holysheep as hs

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
