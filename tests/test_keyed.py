"""KeyedLimiter: one limit per user, API key, endpoint or model."""

from __future__ import annotations

import asyncio
import time

import pytest

import holysheep as hs


def per_user(rate: float = 1, burst: float = 2) -> hs.KeyedLimiter:
    return hs.KeyedLimiter(hs.Limit(rate, per="second", algorithm="gcra", burst=burst))


def test_each_key_has_its_own_limit() -> None:
    keyed = per_user()
    assert [keyed.try_acquire("alice") for _ in range(3)] == [True, True, False]
    assert [keyed.try_acquire("bob") for _ in range(3)] == [True, True, False]
    assert len(keyed) == 2
    assert 0.9 < keyed.time_until_ready("alice") <= 1.01  # the period plus its guard
    assert keyed.time_until_ready("carol") == 0.0


async def test_waiters_of_one_key_do_not_hold_up_another() -> None:
    keyed = per_user(rate=20, burst=1)
    started = time.monotonic()
    await asyncio.gather(*(keyed.acquire("busy") for _ in range(5)))
    assert 0.18 < time.monotonic() - started < 0.4
    started = time.monotonic()
    await keyed.acquire("quiet")
    assert time.monotonic() - started < 0.02


async def test_a_cancelled_waiter_gives_back_its_turn() -> None:
    keyed = per_user(rate=10, burst=1)
    await keyed.acquire("k")
    waiter = asyncio.create_task(keyed.acquire("k"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert keyed.time_until_ready("k") < 0.1


async def test_a_wait_past_the_timeout_fails_at_once_naming_the_key() -> None:
    keyed = per_user(rate=1, burst=1)
    await keyed.acquire("user-7")
    started = time.monotonic()
    with pytest.raises(hs.RateLimitExceeded, match="user-7") as info:
        await keyed.acquire("user-7", timeout=0.1)
    assert time.monotonic() - started < 0.05
    assert info.value.retry_after is not None and info.value.retry_after > 0.5


def test_memory_stays_within_max_keys() -> None:
    keyed = hs.KeyedLimiter(hs.Limit(1, per="minute", algorithm="gcra"), max_keys=1_000)
    admitted = [keyed.try_acquire(f"user-{user}") for user in range(20_000)]
    assert admitted == [True] * 1_000 + [False] * 19_000
    assert len(keyed) == 1_000


# Issue 15: with a, b and c busy in a table of 3, user d went through 20 of 20 (d was forgotten, or
# a key still counting admissions was, and d started over each time).
@pytest.mark.parametrize(
    "limit", [hs.Limit(5, per="minute"), hs.Limit(5, per="minute", algorithm="gcra", burst=5)], ids=str
)
async def test_a_full_table_refuses_new_keys_while_every_key_still_counts(limit: hs.Limit) -> None:
    keyed = hs.KeyedLimiter(limit, max_keys=3)
    for user in "abc":
        assert keyed.try_acquire(user)
    assert sum(keyed.try_acquire("d") for _ in range(20)) == 0
    with pytest.raises(hs.RateLimitExceeded, match="'d'") as info:
        await keyed.acquire("d")
    assert info.value.limit == "max_keys=3"
    assert info.value.retry_after is not None and 5.0 < info.value.retry_after <= 60.05
    assert 5.0 < keyed.time_until_ready("d") <= 60.05
    assert [keyed.try_acquire("a") for _ in range(5)] == [True] * 4 + [False]
    assert len(keyed) == 3


def test_a_key_whose_windows_are_empty_makes_room_without_a_release() -> None:
    # No max_concurrency: its admissions hold nothing, so a key is free to go once its window empties.
    keyed = hs.KeyedLimiter(lambda key: hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=0.05)]), max_keys=1)
    assert keyed.try_acquire("a")
    assert not keyed.try_acquire("b")
    time.sleep(0.06)
    assert keyed.try_acquire("b")
    assert not keyed.try_acquire("b"), "b is held, and limited"
    assert len(keyed) == 1


async def test_a_held_slot_keeps_its_key() -> None:
    keyed = hs.KeyedLimiter(lambda key: hs.HolySheepRateLimiter(max_concurrency=1), max_keys=1)
    async with keyed["a"]:
        assert not keyed.try_acquire("b")
        with pytest.raises(hs.RateLimitExceeded) as info:
            await keyed.acquire("b")
        assert info.value.retry_after is None, "nothing says when a slot is released"
        assert keyed.time_until_ready("b") == float("inf")
    assert keyed.try_acquire("b")
    keyed.release("b")


def test_releasing_a_key_not_held_makes_no_key() -> None:
    keyed = hs.KeyedLimiter(lambda key: hs.HolySheepRateLimiter(max_concurrency=1), max_keys=1)
    keyed.release("never-acquired")
    assert len(keyed) == 0


def test_idle_keys_are_forgotten() -> None:
    keyed = hs.KeyedLimiter(hs.Limit(1000, per="second", algorithm="gcra"), idle_ttl=0.0)
    for user in range(3_000):
        keyed.try_acquire(user)
    time.sleep(0.01)
    for user in range(3_000, 6_000):
        keyed.try_acquire(user)
    # Sweeps are amortised (one per as many new keys as a shard holds), so some old keys may remain.
    assert len(keyed) < 4_500


async def test_a_factory_gives_each_key_a_full_limiter() -> None:
    per_model = hs.KeyedLimiter(lambda model: hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1))
    async with per_model["gpt-4.1"]:
        assert not per_model.try_acquire("gpt-4.1")
        assert per_model.try_acquire("deepseek-v3.2")
        per_model.release("deepseek-v3.2")
    assert len(per_model) == 2


async def test_exact_limits_get_a_limiter_per_key() -> None:
    per_endpoint = hs.KeyedLimiter([hs.Limit(2, per="minute")], max_keys=2)
    assert per_endpoint.try_acquire("chat") and per_endpoint.try_acquire("chat")
    assert not per_endpoint.try_acquire("chat")
    per_endpoint.release("chat")
    per_endpoint.release("chat")
    assert per_endpoint.try_acquire("embeddings")
    assert not per_endpoint.try_acquire("images"), "chat and embeddings count admissions for a minute"
    assert len(per_endpoint) == 2


async def test_handle_waits_for_its_key() -> None:
    keyed = per_user(rate=50, burst=1)
    async with keyed["k"]:
        pass
    started = time.monotonic()
    async with keyed["k"]:
        pass
    assert time.monotonic() - started > 0.015


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_keys": 0}, "max_keys"), ({"idle_ttl": -1.0}, "idle_ttl")],
)
def test_bad_bounds_are_refused(kwargs: dict[str, float], field: str) -> None:
    for config in (hs.Limit(1, algorithm="gcra"), lambda key: hs.ConcurrencyLimiter(1)):
        with pytest.raises(hs.ConfigError) as info:
            hs.KeyedLimiter(config, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field


def test_a_cost_above_the_burst_fails_at_once() -> None:
    keyed = hs.KeyedLimiter(hs.Limit(1000, per="minute", unit="tokens", algorithm="gcra", burst=500))
    with pytest.raises(hs.RateLimitExceeded, match="never|ever"):
        keyed.try_acquire("k", tokens=501)
