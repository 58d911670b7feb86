"""TokenBucket, SlidingWindow and ConcurrencyLimiter: presets of HolySheepRateLimiter."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

import holysheep as hs
from conftest import Err


def test_token_bucket_allows_its_capacity_then_paces() -> None:
    bucket = hs.TokenBucket(rate=10, capacity=3)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert 0.09 < bucket.time_until_ready() <= 0.1


def test_sliding_window_allows_the_limit_in_any_window() -> None:
    window = hs.SlidingWindow(limit=4, window_s=60)
    assert [window.try_acquire() for _ in range(5)] == [True] * 4 + [False]
    assert 59 < window.time_until_ready() <= 60.05  # the window plus its guard


async def test_concurrency_limiter_is_a_fair_semaphore() -> None:
    gate = hs.ConcurrencyLimiter(3)
    running = peak = 0

    async def work() -> None:
        nonlocal running, peak
        async with gate:
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.005)
            running -= 1

    await asyncio.gather(*(work() for _ in range(30)))
    assert peak == 3
    assert gate.limits == [] and gate.max_concurrency == 3


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: hs.TokenBucket(rate=0), Err(hs.ConfigError, "rate")),
        (lambda: hs.TokenBucket(rate=5, capacity=0), Err(hs.ConfigError, "capacity")),
        (lambda: hs.SlidingWindow(limit=-1, window_s=60), Err(hs.ConfigError, "limit")),
        (lambda: hs.SlidingWindow(limit=10, window_s=float("nan")), Err(hs.ConfigError, "window_s")),
        (lambda: hs.ConcurrencyLimiter(0), Err(hs.ConfigError, "n")),
    ],
)
def test_bad_presets_name_their_parameter(make: Callable[[], Any], expected: Err) -> None:
    with pytest.raises(expected.type, match=f"^{expected.match}:") as info:
        make()
    assert info.value.field == expected.match  # type: ignore[attr-defined]
