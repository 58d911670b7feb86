"""Shadow mode: a limiter that decides as usual, admits everything, and counts in ``stats()`` what it
would have held back (exactness on a virtual clock is the core's test,
``shadow_admits_all_and_counts_exactly_what_enforcing_held_back_on_the_same_arrivals``)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs


def test_shadow_admits_all_and_counts_what_an_enforcing_limiter_refused_on_the_same_tries() -> None:
    enforcing, shadow = hs.HolySheepRateLimiter(rpm=5), hs.HolySheepRateLimiter(rpm=5, shadow=True)
    tried = [enforcing.try_acquire() for _ in range(8)]
    assert tried == [True] * 5 + [False] * 3
    assert all(shadow.try_acquire() for _ in range(8))
    stats = shadow.stats()
    assert (stats["admitted"], stats["would_reject"], stats["would_wait"]) == (8, 3, 0)
    assert stats["remaining"] == enforcing.stats()["remaining"] == {"5 requests per minute": 0}
    assert shadow.shadow and not enforcing.shadow


async def test_shadow_counts_each_wait_it_spared_and_how_long() -> None:
    shadow = hs.HolySheepRateLimiter(rpm=5, shadow=True)
    for _ in range(8):
        await shadow.acquire()  # an enforcing limiter would hold the last three for a minute
    stats = shadow.stats()
    assert (stats["admitted"], stats["would_wait"], stats["would_reject"]) == (8, 3, 0)
    assert 3 * 60.0 < stats["would_wait_s"] < 3 * 60.2
    assert 60.0 < stats["would_wait_s_p50"] <= stats["would_wait_s_p99"] < 64.0
    assert stats["waited"] == 0 and stats["rejected"] == 0


async def test_a_wait_past_the_timeout_counts_as_refused() -> None:
    shadow = hs.HolySheepRateLimiter(rpm=1, shadow=True)
    await shadow.acquire()
    await shadow.acquire(timeout=1.0)
    assert (shadow.stats()["would_reject"], shadow.stats()["would_wait"]) == (1, 0)


def test_shadow_counts_the_waits_for_a_slot_and_lets_more_through_than_the_cap() -> None:
    shadow = hs.HolySheepRateLimiter(max_concurrency=2, shadow=True)
    held = threading.Barrier(4, timeout=5)

    def hold() -> None:
        with shadow:
            held.wait()
            held.wait()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    held.wait()
    assert shadow.stats()["in_flight"] == 3
    held.wait()
    for thread in threads:
        thread.join()
    stats = shadow.stats()
    assert (stats["would_wait_for_slot"], stats["in_flight"], stats["admitted"]) == (1, 0, 3)


def test_shadow_lets_a_request_over_the_budget_through_and_counts_it_refused() -> None:
    shadow = hs.HolySheepRateLimiter(limits=[hs.Limit(0.001, per="day", unit="usd")], shadow=True)
    for _ in range(3):  # $0.0004 each: the third would cross $0.001
        shadow._admit_blocking(200, None, 2.0).release()
    stats = shadow.stats()
    assert (stats["admitted"], stats["would_reject"]) == (3, 1)
    assert stats["remaining"] == {"0.001 usd per day": pytest.approx(0.0002)}


async def test_shadow_admits_concurrent_tasks_at_once() -> None:
    shadow = hs.HolySheepRateLimiter(max_qps=2, max_concurrency=1, shadow=True)

    async def one() -> None:
        async with shadow:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(10))), timeout=1.0)
    stats = shadow.stats()
    assert stats["admitted"] == 10 and stats["would_wait"] == 8 and stats["would_wait_for_slot"] == 9


@pytest.mark.parametrize("value", [1, "yes", 0.0])
def test_shadow_must_be_true_or_false(value: object) -> None:
    with pytest.raises(hs.ConfigError) as err:
        hs.HolySheepRateLimiter(max_qps=1, shadow=value)  # type: ignore[arg-type]
    assert err.value.field == "shadow"


def test_a_limit_shared_through_redis_cannot_be_shadowed(redis_url: str) -> None:
    with pytest.raises(hs.ConfigError) as err:
        hs.HolySheepRateLimiter(max_qps=1, backend=hs.RedisBackend(redis_url), key="k", shadow=True)
    assert err.value.field == "shadow"
