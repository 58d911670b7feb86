"""Use-case profiles (``profile=``, DESIGN.md §4): the limiter, retry policy, breaker and batch size of
each, and each field replaced on its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import holysheep as hs
from holysheep.testing import MockGateway

#: DESIGN.md §4, row by row: max QPS, max concurrency, batch size, retry attempts, breaker.
TABLE = {
    "mvp": (8, 12, 32, 3, type(None)),
    "rag": (20, 40, 100, 5, hs.CircuitBreaker),
    "agent": (80, 150, 128, 4, hs.KeyedBreaker),
    "enterprise": (200, 500, 256, 5, hs.KeyedBreaker),
}


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    with MockGateway() as gw:
        yield gw


def per_second(limiter: Any) -> float:
    (limit,) = [limit for limit in limiter.limits if limit.per == 1.0]
    amount: float = limit.amount
    return amount


@pytest.mark.parametrize("name", list(TABLE))
def test_each_profile_makes_the_limiter_retry_policy_and_breaker_of_its_row(name: str) -> None:
    qps, concurrency, batch_size, attempts, breaker = TABLE[name]
    client = hs.AsyncHolySheep(api_key="hs_x", profile=name)
    assert (per_second(client.limiter), client.limiter.max_concurrency) == (qps, concurrency)  # type: ignore[union-attr]
    assert client.transport.retry.max_attempts == attempts
    assert type(client.transport.breaker) is breaker
    assert client.profile is hs.PROFILES[name] and client.profile.batch_size == batch_size


def test_the_mvp_profile_backs_off_linearly_and_enterprise_adapts() -> None:
    mvp, enterprise = hs.PROFILES["mvp"].retry_policy(), hs.PROFILES["enterprise"].retry_policy()
    assert (mvp.jitter, mvp.base_delay, mvp.multiplier, mvp.max_attempts) == ("none", 1.0, 2.0, 3)  # 1 s, then 2 s
    assert (enterprise.jitter, enterprise._core.retry_budget) == ("decorrelated", 0.1)


def test_each_client_gets_its_own_limiter_and_breaker() -> None:
    one, two = (hs.AsyncHolySheep(api_key="hs_x", profile="rag") for _ in range(2))
    assert one.limiter is not two.limiter and one.transport.breaker is not two.transport.breaker


def test_limiter_retry_and_breaker_given_replace_the_profiles_own() -> None:
    lim, retry, breaker = hs.HolySheepRateLimiter(rpm=10), hs.RetryPolicy(max_attempts=2), hs.CircuitBreaker()
    client = hs.HolySheep(api_key="hs_x", profile="agent", limiter=lim, retry=retry, breaker=breaker)
    assert (client.limiter, client.transport.retry, client.transport.breaker) == (lim, retry, breaker)


def test_a_profile_field_is_replaced_on_its_own() -> None:
    faster = hs.Profile.named("rag").replace(max_qps=25, batch_size=64)
    client = hs.AsyncHolySheep(api_key="hs_x", profile=faster)
    assert (per_second(client.limiter), client.limiter.max_concurrency) == (25, 40)  # type: ignore[union-attr]
    assert hs.PROFILES["rag"].max_qps == 20  # the table is unchanged


def test_a_profile_with_a_tier_stays_within_the_plans_limits() -> None:
    client = hs.AsyncHolySheep(api_key="hs_x", profile="rag", tier="free")
    limiter = client.limiter
    assert isinstance(limiter, hs.HolySheepRateLimiter)
    assert limiter.max_concurrency == 5  # the plan's 5, not the profile's 40
    assert {(limit.amount, limit.per) for limit in limiter.limits} >= {(60, 60.0), (20, 1.0)}


async def test_batch_embed_uses_the_profiles_batch_size_unless_given(gateway: MockGateway) -> None:
    async with hs.AsyncHolySheep(api_key="hs_x", base_url=gateway.base_url, profile="mvp") as client:
        await client.batch_embed([f"d{n}" for n in range(64)], model="text-embedding-3-small")
        assert len(gateway.admission_log()) == 2  # 32 a request
        await client.batch_embed([f"d{n}" for n in range(64)], model="text-embedding-3-small", batch_size=64)
        assert len(gateway.admission_log()) == 3


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"profile": "startup"}, "profile"),
        ({"profile": 3}, "profile"),
        ({"profile": hs.PROFILES["rag"], "tier": "pro", "limiter": hs.HolySheepRateLimiter(rpm=1)}, "tier"),
    ],
)
def test_a_profile_that_cannot_work_is_refused_naming_it(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", **settings)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_qps": 0}, "max_qps"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"breaker": "sometimes"}, "breaker"),
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"retry": {"attempts": 3}}, "retry"),
    ],
)
def test_a_profile_field_out_of_range_is_refused_naming_it(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.Profile.named("rag").replace(**changes)
    assert info.value.field == field


def test_an_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(hs.ConfigError, match="mvp, rag, agent, enterprise"):
        hs.Profile.named("platinum")
