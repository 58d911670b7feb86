"""Model rules under the drop-in clients, against MockGateway over HTTP: ``allowed_models=``."""

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


async def test_a_model_not_allowed_raises_before_it_reaches_the_limiter_or_the_gateway(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(rpm=60)
    async with hs.AsyncHolySheep(
        api_key="hs_x", base_url=gateway.base_url, limiter=lim, allowed_models=["deepseek-v3.2"]
    ) as client:
        with pytest.raises(hs.ModelNotAllowed, match="gpt-4.1") as info:
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
        await client.models.list()  # names no model
    assert (info.value.model, info.value.allowed) == ("gpt-4.1", ("deepseek-v3.2",))
    assert isinstance(info.value, hs.HolySheepError)
    assert [r.endpoint for r in gateway.admission_log()] == ["/v1/chat/completions", "/v1/models"]
    assert lim.stats()["admitted"] == 2


def test_the_blocking_client_and_wrap_refuse_it_too(gateway: MockGateway) -> None:
    import openai

    with hs.HolySheep(api_key="hs_x", base_url=gateway.base_url, allowed_models=["text-embedding-3-small"]) as client:
        with pytest.raises(hs.ModelNotAllowed):
            client.embeddings.create(model="text-embedding-3-large", input="x")
    bare = openai.OpenAI(api_key="hs_x", base_url=gateway.base_url)
    with hs.wrap(bare, allowed_models=["deepseek-v3.2"]) as wrapped, pytest.raises(hs.ModelNotAllowed):
        wrapped.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    bare.close()
    assert gateway.admission_log() == []


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"allowed_models": "deepseek-v3.2"}, "allowed_models"),
        ({"allowed_models": []}, "allowed_models"),
        ({"allowed_models": ["ok", 3]}, "allowed_models"),
        ({"allowed_models": ["gpt-4.1"], "fallback_models": {"gpt-4.1": ["deepseek-v3.2"]}}, "fallback_models"),
    ],
)
def test_model_rules_that_cannot_work_are_refused_when_the_client_is_made(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", **settings)
    assert info.value.field == field
