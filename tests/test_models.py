"""Model rules under the drop-in clients, against MockGateway over HTTP: ``allowed_models=``."""

from __future__ import annotations

import json
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


def answered_by(answer: Any) -> str:
    model: str = answer.model
    return model


async def test_while_the_hours_quota_is_below_the_floor_requests_go_to_the_next_cheaper_model() -> None:
    # An "hour" of 60 one-second windows with 20 requests; the floor is half of it.
    with MockGateway(rph=20, window_s=1.0) as gw:
        async with hs.AsyncHolySheep(
            api_key="hs_x",
            base_url=gw.base_url,
            fallback_models={"gpt-4.1": ["claude-sonnet-4.5", "deepseek-v3.2"]},
            quota_floor=0.5,
        ) as client:
            models = [
                answered_by(await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)) for _ in range(14)
            ]
        log = gw.admission_log()
    # /v1/quota read once first (19 left), then gpt-4.1 until 9 of 20 are left; claude-sonnet-4.5 costs more.
    assert [r.endpoint for r in log][:2] == ["/v1/quota", "/v1/chat/completions"]
    assert models == ["gpt-4.1"] * 10 + ["deepseek-v3.2"] * 4
    assert not [r for r in log if r.status == 429]


def test_while_the_days_quota_is_spent_requests_raise_rate_limit_exceeded_unsent() -> None:
    with MockGateway(rph=10, rpd=10, window_s=1.0) as gw:
        with hs.HolySheep(
            api_key="hs_x", base_url=gw.base_url, fallback_models={"gpt-4.1": ["deepseek-v3.2"]}, quota_floor=0.2
        ) as client:
            for _ in range(9):  # the day's 10, /v1/quota's reading included
                client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            with pytest.raises(hs.RateLimitExceeded, match="day's quota") as info:
                client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        log = gw.admission_log()
    assert len(log) == 10 and not [r for r in log if r.status == 429]
    assert info.value.retry_after is not None and 1_430 < info.value.retry_after <= 1_440  # a "day" of 1,440 s
    assert (info.value.limit, info.value.remaining) == ("10 requests per day", 0.0)


async def test_without_a_floor_the_quota_is_never_read(gateway: MockGateway) -> None:
    async with hs.AsyncHolySheep(
        api_key="hs_x", base_url=gateway.base_url, fallback_models={"gpt-4.1": ["deepseek-v3.2"]}
    ) as client:
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert [r.endpoint for r in gateway.admission_log()] == ["/v1/chat/completions"]


@pytest.mark.parametrize("floor", [0, 1, 1.5, -0.1, "0.2", True, float("nan")])
def test_a_quota_floor_that_is_not_a_fraction_is_refused(floor: object) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", quota_floor=floor)  # type: ignore[arg-type]
    assert info.value.field == "quota_floor"


async def test_where_v1_quota_is_not_served_headers_with_an_hours_reset_steer_the_choice() -> None:
    from holysheep.transport import http_library as httpx  # httpx2 under openai 3.x, httpx before

    asked: list[str] = []
    left = iter(range(9, -1, -1))

    def handle(request: Any) -> Any:
        if request.url.path.endswith("/quota"):
            return httpx.Response(404, json={"error": {"message": "not found"}})
        asked.append(json.loads(request.content)["model"])
        headers = {
            "x-ratelimit-limit-requests": "10",
            "x-ratelimit-remaining-requests": str(next(left)),
            "x-ratelimit-reset-requests": "59m30s",
        }
        return httpx.Response(200, headers=headers, json={"ok": True})

    transport = hs.Transport(
        inner=httpx.MockTransport(handle), fallback_models={"gpt-4.1": ["deepseek-v3.2"]}, quota_floor=0.5
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test/v1") as http:
        for _ in range(8):
            await http.post("/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    assert asked == ["gpt-4.1"] * 6 + ["deepseek-v3.2"] * 2  # 9 down to 4 left: then below half of 10
