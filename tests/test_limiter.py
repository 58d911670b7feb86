"""HolySheepRateLimiter under asyncio: the rate, the slots, waiting, cancellation, stats."""

from __future__ import annotations

import asyncio
import inspect
import gc
import math
import threading
import time
from typing import Any

import pytest

import holysheep as hs
from conftest import Err, max_in_any_window


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_qps": 10, "max_concurrency": 20}, ["10 requests per second"]),
        ({"rpm": 500, "tpm": 100_000}, ["500 requests per minute", "100000 tokens per minute"]),
        ({"limits": [hs.Limit(10, per="minute"), hs.Limit(200, per="hour")]}, ["10 requests per minute", "200 requests per hour"]),
        ({"tier": "pro"}, ["2000 requests per minute", "500000 tokens per minute"]),
        ({"max_qps": 0}, Err(hs.ConfigError, "max_qps")),
        ({"rpm": -5}, Err(hs.ConfigError, "rpm")),
        ({"tpm": float("nan")}, Err(hs.ConfigError, "tpm")),
        ({"max_qps": 10, "max_concurrency": 0}, Err(hs.ConfigError, "max_concurrency")),
        ({"max_qps": 10, "burst": 0}, Err(hs.ConfigError, "burst")),
        ({"tier": "platinum"}, Err(hs.ConfigError, "tier")),
        ({}, Err(hs.ConfigError, "limits")),
    ],
)
def test_construction(kwargs: dict[str, Any], expected: list[str] | Err) -> None:
    if isinstance(expected, Err):
        with pytest.raises(expected.type) as info:
            hs.HolySheepRateLimiter(**kwargs)
        assert info.value.field == expected.match  # type: ignore[attr-defined]
    else:
        assert [str(limit) for limit in hs.HolySheepRateLimiter(**kwargs).limits] == expected


def test_from_tier_uses_the_plan_table() -> None:
    lim = hs.HolySheepRateLimiter.from_tier("free")
    assert [str(limit) for limit in lim.limits] == ["60 requests per minute", "10000 tokens per minute"]
    assert lim.max_concurrency == 5


def test_burst_paces_request_limits_with_gcra() -> None:
    lim = hs.HolySheepRateLimiter(rpm=600, burst=5)
    assert [(limit.algorithm, limit.burst) for limit in lim.limits] == [("gcra", 5)]
    assert sum(lim.try_acquire() for _ in range(10)) == 5


def test_full_window_is_usable_at_once_then_refused() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=5)
    assert [lim.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    assert 0.9 < lim.time_until_ready() <= 1.01  # the period plus its guard
    assert lim.stats()["rejected"] == 1


async def test_a_cost_no_limit_can_pass_fails_at_once() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=10, tpm=10_000)
    started = time.monotonic()
    with pytest.raises(hs.RateLimitExceeded, match="12000 tokens") as info:
        await lim.acquire(tokens=12_000)
    assert time.monotonic() - started < 0.05
    assert info.value.retry_after is None
    assert info.value.limit == "10000 tokens per minute"


async def test_timeout_shorter_than_the_wait_raises_without_sleeping() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=1)
    await lim.acquire()
    started = time.monotonic()
    with pytest.raises(hs.RateLimitExceeded) as info:
        await lim.acquire(timeout=0.5)
    assert time.monotonic() - started < 0.05
    assert info.value.retry_after is not None and info.value.retry_after > 0.5
    stats = lim.stats()
    assert (stats["admitted"], stats["rejected"]) == (1, 1)


async def test_thousand_tasks_are_admitted_at_the_configured_rate() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    admitted: list[float] = []

    async def call() -> None:
        async with lim:
            admitted.append(loop.time() - started)

    tasks = [asyncio.create_task(call()) for _ in range(1_000)]
    await asyncio.sleep(2.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The whole window at once at 0 s, 1 s and 2 s: 300 in 2.5 s, never more than 100 in any second.
    assert len(admitted) == 300
    assert max_in_any_window(admitted, 1.0) == 100
    stats = lim.stats()
    assert (stats["in_flight"], stats["waiting"]) == (0, 0)


async def test_cancelling_half_the_waiters_gives_back_their_places() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=50, max_concurrency=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    finished: list[float] = []

    async def call() -> None:
        async with lim:
            await asyncio.sleep(0.01)
        finished.append(loop.time() - started)

    tasks = [asyncio.create_task(call()) for _ in range(200)]
    await asyncio.sleep(0.2)
    assert len(finished) == 50
    waiting = [task for task in tasks if not task.done()]
    for task in waiting[1::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # 75 left: 50 in the second window, 25 in the third; had the cancelled kept their places, 3.0 s.
    assert len(finished) == 125
    assert max(finished) < 2.5
    stats = lim.stats()
    assert (stats["in_flight"], stats["waiting"], stats["admitted"]) == (0, 0, 125)
    assert lim.try_acquire() or lim.time_until_ready() <= 1.0


async def test_an_exception_inside_async_with_releases_the_slot() -> None:
    gate = hs.ConcurrencyLimiter(1)
    with pytest.raises(RuntimeError):
        async with gate:
            raise RuntimeError("boom")
    assert gate.stats()["in_flight"] == 0
    async with gate:
        assert gate.stats()["in_flight"] == 1


async def test_slots_are_handed_over_in_arrival_order() -> None:
    gate = hs.ConcurrencyLimiter(2)
    order: list[int] = []
    peak = 0

    async def call(index: int) -> None:
        nonlocal peak
        async with gate:
            order.append(index)
            peak = max(peak, gate.stats()["in_flight"])
            await asyncio.sleep(0.01)

    await asyncio.gather(*(call(i) for i in range(20)))
    assert order == list(range(20))
    assert peak == 2


async def test_slot_timeout_raises_and_leaves_the_line() -> None:
    gate = hs.ConcurrencyLimiter(1)
    await gate.acquire()
    with pytest.raises(hs.RateLimitExceeded, match="concurrency slot"):
        await gate.acquire(timeout=0.05)
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1.0)
    assert gate.stats()["waiting"] == 0


async def test_interactive_work_goes_ahead_of_waiting_batch_work() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=0.05)])
    order: list[str] = []

    async def call(name: str, priority: int) -> None:
        await lim.acquire(priority=priority)
        order.append(name)

    batch = [asyncio.create_task(call(f"batch-{i}", 0)) for i in range(5)]
    await asyncio.sleep(0.01)
    interactive = asyncio.create_task(call("interactive", 10))
    await asyncio.gather(interactive, *batch)
    # batch-0 passes at once and batch-1 already holds the next instant; then the interactive call.
    assert order.index("interactive") <= 2
    assert order[-1] == "batch-4"


async def test_permit_settles_estimated_tokens() -> None:
    lim = hs.HolySheepRateLimiter(tpm=1_000)
    async with lim.slot(tokens=900) as permit:
        assert not lim.try_acquire(tokens=200)
        permit.settle(100)
        assert permit.tokens == 100
    assert lim.try_acquire(tokens=800)
    assert lim.stats()["remaining"] == {"1000 tokens per minute": 100}


def test_settle_outside_the_block_is_refused() -> None:
    lim = hs.HolySheepRateLimiter(tpm=1_000)
    with pytest.raises(RuntimeError, match="inside the `with` block"):
        lim.slot(tokens=10).settle(5)


async def test_decorates_async_and_sync_functions() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)

    @lim
    async def embed(text: str) -> int:
        assert lim.stats()["in_flight"] == 1
        return len(text)

    @lim
    def count(text: str) -> int:
        assert lim.stats()["in_flight"] == 1
        return len(text)

    assert await embed("four") == 4
    assert count("three") == 5
    assert (embed.__name__, count.__name__) == ("embed", "count")
    assert inspect.iscoroutinefunction(embed) and not inspect.iscoroutinefunction(count)
    assert lim.stats()["admitted"] == 2


def test_decorating_what_cannot_be_called_is_refused() -> None:
    with pytest.raises(hs.ConfigError, match="function: must be a function") as raised:
        hs.HolySheepRateLimiter(max_qps=1)(5)  # type: ignore[type-var]
    assert raised.value.field == "function"


def test_the_limiter_is_one_native_class_whatever_it_is_given() -> None:
    assert type(hs.HolySheepRateLimiter(rpm=60)) is hs.HolySheepRateLimiter
    assert type(hs.HolySheepRateLimiter.from_tier("pro")) is hs.HolySheepRateLimiter


def test_one_limiter_serves_two_event_loops_in_two_threads() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(20, per=0.5)], max_concurrency=4)
    admitted: list[float] = []
    started = time.monotonic()

    async def worker() -> None:
        async def call() -> None:
            async with lim:
                admitted.append(time.monotonic() - started)
                await asyncio.sleep(0.005)

        await asyncio.gather(*(call() for _ in range(30)))

    threads = [threading.Thread(target=asyncio.run, args=(worker(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(admitted) == 60
    # Each time is read just after its admission; the other thread may hold the GIL in between (its
    # switch interval is 5 ms), so the times may trail their admissions by that much.
    assert max_in_any_window(admitted, 0.5 - 0.02) <= 20
    assert lim.stats()["in_flight"] == 0


def test_stats_add_up() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=3, max_concurrency=10)
    results = [lim.try_acquire() for _ in range(5)]
    stats = lim.stats()
    assert results.count(True) == stats["admitted"] == stats["in_flight"] == 3
    assert stats["rejected"] == 2
    assert stats["remaining"] == {"3 requests per second": 0}
    for _ in range(3):
        lim.release()
    assert lim.stats()["in_flight"] == 0
    with pytest.raises(hs.ConfigError, match="release"):
        lim.release()


async def test_a_long_wait_sleeps_no_less_than_it_must() -> None:
    """The timer of a long wait is set short of its end by more than epoll's slack (0.1%) and slept
    again (its legs are tested in src/py/waiting.rs); the waiter never goes before its instant."""
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=2.0)])
    await lim.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await lim.acquire()
    waited = loop.time() - started
    assert 2.0 <= waited < 2.0 + lim.limits[0].guard + 0.05


async def test_a_cancelled_waiter_gives_back_its_slot_and_reservation_with_the_collector_off() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.3)], max_concurrency=2)
    gc.disable()
    try:
        await lim.acquire()
        await lim.acquire()
        sleeper = asyncio.create_task(lim.acquire())  # holds the reservation at 0.3 s
        parked = asyncio.create_task(lim.acquire())  # waits for a slot
        await asyncio.sleep(0.01)
        lim.release()
        await asyncio.sleep(0.01)
        assert lim.stats()["waiting"] == 2
        sleeper.cancel()
        parked.cancel()
        await asyncio.gather(sleeper, parked, return_exceptions=True)
        stats = lim.stats()
        assert (stats["waiting"], stats["in_flight"], stats["admitted"]) == (0, 1, 2)
        # Both given back: the next caller gets the slot and the instant the sleeper had.
        started = time.monotonic()
        await lim.acquire()
        assert 0.2 < time.monotonic() - started < 0.4
    finally:
        gc.enable()


async def test_an_acquire_never_awaited_leaves_the_line_when_dropped() -> None:
    lim = hs.ConcurrencyLimiter(1)
    await lim.acquire()
    pending = lim.acquire()
    assert lim.stats()["waiting"] == 1
    del pending
    assert lim.stats()["waiting"] == 0
    lim.release()
    assert lim.try_acquire()


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan])
async def test_a_bad_timeout_is_refused_even_when_the_limiter_is_free(timeout: float) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=10)
    with pytest.raises(hs.ConfigError, match="timeout") as info:
        await lim.acquire(timeout=timeout)
    assert info.value.field == "timeout"
    with pytest.raises(hs.ConfigError, match="timeout"):
        lim.acquire_blocking(timeout=timeout)
    assert lim.stats()["admitted"] == 0


async def test_an_infinite_timeout_waits_as_long_as_it_takes() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=0.2)])
    await lim.acquire(timeout=math.inf)
    await lim.acquire(timeout=math.inf)
    lim.acquire_blocking(timeout=math.inf)
    assert lim.stats()["admitted"] == 3


def test_a_budget_shows_what_is_left_in_dollars() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(5, per="hour", unit="usd"), hs.Limit(100, per="minute")])
    assert lim.stats()["remaining"] == {"5 usd per hour": 5.0, "100 requests per minute": 100}


# Issue 15: fractional limits broke "at most n in any window": max_qps=2.5 admitted 2 at once and 2 more
# 0.81 s later, and Limit(12.5, per=2) let 24 through one window under 4 tasks. A fractional amount
# promises its whole part in any full period (the property tests of src/core/properties.rs cover random
# amounts and arrivals; this is the same promise kept end to end, by tasks competing in real time).
@pytest.mark.parametrize(
    ("kwargs", "most", "period"),
    [({"max_qps": 2.5}, 2, 1.0), ({"limits": [hs.Limit(12.5, per=1.0)]}, 12, 1.0)],
    ids=["max_qps=2.5", "Limit(12.5, per=1)"],
)
def test_a_fractional_limit_never_admits_more_than_its_whole_part_in_any_period(kwargs: dict[str, Any], most: int, period: float) -> None:
    lim = hs.HolySheepRateLimiter(**kwargs)
    admitted: list[float] = []

    async def task(until: float) -> None:
        while time.monotonic() < until:
            try:
                await lim.acquire(timeout=until - time.monotonic())
            except hs.RateLimitExceeded:  # nothing more before the end
                return
            admitted.append(time.monotonic())
            lim.release()

    async def main() -> None:
        until = time.monotonic() + 2.3 * period
        await asyncio.gather(*(task(until) for _ in range(4)))

    asyncio.run(main())
    # Each time is read when its task resumes, which on a busy machine can trail its admission by a few
    # milliseconds more than the guard; the defect admitted its extra ones 0.19 s early.
    assert max_in_any_window(admitted, period - 0.05) == most
    assert len(admitted) >= 2 * most  # and the limit is used: each full period gets its whole part


# Issue 15: `try_acquire()` on a limiter without a concurrency cap counted `in_flight` forever unless
# released (the TokenBucket docstring's own example never releases), which made a KeyedLimiter's keys
# "busy" for good. Without a cap an admission holds nothing, so there is nothing to release.
@pytest.mark.parametrize("make", [lambda: hs.HolySheepRateLimiter(max_qps=1_000), lambda: hs.TokenBucket(rate=1_000, capacity=1_000)], ids=["limiter", "TokenBucket"])
def test_admissions_without_a_concurrency_cap_hold_nothing(make: Any) -> None:
    lim = make()
    assert all(lim.try_acquire() for _ in range(50))
    assert lim.stats()["in_flight"] == 0
    lim.release()  # nothing held: it does nothing
    assert lim.stats()["in_flight"] == 0
