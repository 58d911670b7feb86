"""A limiter per route and per model under the drop-in clients, against MockGateway over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import holysheep as hs
from holysheep.testing import MockGateway

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    with MockGateway() as gw:
        yield gw


def admitted(limiter: hs.HolySheepRateLimiter) -> int:
    count: int = limiter.stats()["admitted"]
    return count


async def test_each_route_passes_its_own_limiter(gateway: MockGateway) -> None:
    lim_e, lim_c = hs.HolySheepRateLimiter(rpm=300), hs.HolySheepRateLimiter(rpm=60)
    async with hs.AsyncHolySheep(
        api_key="hs_x", base_url=gateway.base_url, limiter={"/embeddings": lim_e, "/chat/completions": lim_c}
    ) as client:
        await client.embeddings.create(model="text-embedding-3-small", input="a")
        await client.embeddings.create(model="text-embedding-3-small", input="b")
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert (admitted(lim_e), admitted(lim_c)) == (2, 1)
        assert client.limiter == {"/embeddings": lim_e, "/chat/completions": lim_c}


def test_an_unmatched_route_uses_the_star_entry_or_goes_without_a_limit(gateway: MockGateway) -> None:
    lim_e, rest = hs.HolySheepRateLimiter(rpm=300), hs.HolySheepRateLimiter(rpm=60)
    with hs.HolySheep(api_key="hs_x", base_url=gateway.base_url, limiter={"/embeddings": lim_e, "*": rest}) as with_star:
        with_star.models.list()
        with_star.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert (admitted(lim_e), admitted(rest)) == (0, 2)
    with hs.HolySheep(api_key="hs_x", base_url=gateway.base_url, limiter={"/embeddings": lim_e}) as without:
        without.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert admitted(lim_e) == 0
        assert len(gateway.admission_log()) == 3


async def test_the_longest_matching_route_wins(gateway: MockGateway) -> None:
    chat, completions = hs.HolySheepRateLimiter(rpm=60), hs.HolySheepRateLimiter(rpm=60)
    async with hs.AsyncHolySheep(
        api_key="hs_x", base_url=gateway.base_url, limiter={"/completions": completions, "/chat/completions": chat}
    ) as client:
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert (admitted(chat), admitted(completions)) == (1, 0)


async def test_a_route_holds_its_own_concurrency_slot_until_the_stream_ends(gateway: MockGateway) -> None:
    lim_c = hs.HolySheepRateLimiter(max_concurrency=1)
    async with hs.AsyncHolySheep(api_key="hs_x", base_url=gateway.base_url, limiter={"/chat/completions": lim_c}) as client:
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        assert lim_c.stats()["in_flight"] == 1
        async for _ in stream:
            pass
        assert lim_c.stats()["in_flight"] == 0


async def test_a_keyed_limiter_keeps_one_limiter_per_model(gateway: MockGateway) -> None:
    made: dict[str, hs.HolySheepRateLimiter] = {}

    def per_model(model: object) -> hs.HolySheepRateLimiter:
        made[str(model)] = hs.HolySheepRateLimiter(rpm=60, max_concurrency=2)
        return made[str(model)]

    async with hs.AsyncHolySheep(api_key="hs_x", base_url=gateway.base_url, limiter=hs.KeyedLimiter(per_model)) as client:
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
        await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
        await client.models.list()  # no model: the key ""
        assert {model: admitted(lim) for model, lim in made.items()} == {"gpt-4.1": 1, "deepseek-v3.2": 2, "": 1}
        assert all(lim.stats()["in_flight"] == 0 for lim in made.values())


def test_a_keyed_limiter_of_exact_limits_paces_each_model_on_its_own(gateway: MockGateway) -> None:
    keyed = hs.KeyedLimiter(hs.Limit(1, per="minute"))
    with hs.HolySheep(api_key="hs_x", base_url=gateway.base_url, limiter=keyed, acquire_timeout=0.0) as client:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
        with pytest.raises(hs.RateLimitExceeded):
            client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert len(gateway.admission_log()) == 2


def test_a_keyed_limiter_works_as_a_routes_limiter(gateway: MockGateway) -> None:
    keyed = hs.KeyedLimiter(hs.Limit(1, per="minute"))
    with hs.HolySheep(
        api_key="hs_x", base_url=gateway.base_url, limiter={"/chat/completions": keyed}, acquire_timeout=0.0
    ) as client:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        client.embeddings.create(model="text-embedding-3-small", input="not limited")
        client.embeddings.create(model="text-embedding-3-small", input="not limited")
        with pytest.raises(hs.RateLimitExceeded):
            client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)


@pytest.mark.parametrize(
    ("limiter", "match"),
    [
        (hs.KeyedLimiter(hs.Limit(5, per="minute", algorithm="gcra")), "GCRA"),
        ({"/chat/completions": hs.KeyedLimiter(hs.Limit(5, per="minute", algorithm="gcra"))}, "GCRA"),
        ("rpm=60", "HolySheepRateLimiter"),
        ({"embeddings": hs.HolySheepRateLimiter(rpm=60)}, "starting with"),
        ({3: hs.HolySheepRateLimiter(rpm=60)}, "starting with"),
        ({"/embeddings": 60}, "route '/embeddings'"),
    ],
)
@pytest.mark.parametrize("client_class", ["AsyncHolySheep", "HolySheep"])
def test_a_limiter_that_cannot_work_is_refused_when_the_client_is_made(limiter: object, match: str, client_class: str) -> None:
    with pytest.raises(hs.ConfigError, match=match) as info:
        getattr(hs, client_class)(api_key="hs_x", limiter=limiter)
    assert info.value.field == "limiter"


def test_routes_and_tier_are_one_or_the_other() -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", tier="pro", limiter={"*": hs.HolySheepRateLimiter(rpm=1)})
    assert info.value.field == "tier"
