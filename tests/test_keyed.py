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
    for user in range(20_000):
        assert keyed.try_acquire(f"user-{user}")
    assert len(keyed) <= 1_000 + 16


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
    per_endpoint.try_acquire("embeddings")
    per_endpoint.release("embeddings")
    per_endpoint.try_acquire("images")
    assert len(per_endpoint) <= 2


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
