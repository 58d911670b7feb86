"""`holysheep.llama_index`: the real llama-index-core's rate limiter interface over a holysheep limiter."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.mock import MockLLM
from llama_index.core.rate_limiter import BaseRateLimiter

import holysheep as hs
from holysheep.llama_index import RateLimiter

#: Slack for a loaded 2-core machine: how late a paced request may come.
LATE = 0.6
TPM = "10000 tokens per minute"


def test_it_is_a_llama_index_rate_limiter() -> None:
    rate_limiter = RateLimiter(hs.HolySheepRateLimiter(rpm=60))
    assert isinstance(rate_limiter, BaseRateLimiter)


async def test_a_mock_llm_with_rate_limiter_is_paced_to_the_limit() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.5)])
    llm = MockLLM()
    llm.rate_limiter = RateLimiter(lim)
    started = time.monotonic()
    replies = await asyncio.gather(*(llm.acomplete(f"question {n}") for n in range(6)))
    elapsed = time.monotonic() - started
    assert len(replies) == 6 and lim.stats()["admitted"] == 6
    assert 1.0 <= elapsed <= 1.0 + LATE  # 2 at once, 2 after 0.5 s, 2 after 1.0 s (plus the guard)


async def test_a_custom_llm_asking_again_from_inside_its_coroutine_counts_once() -> None:
    # CustomLLM.acomplete (MockLLM's) calls complete, and LlamaIndex asks the rate limiter in both.
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=60)])
    llm = MockLLM()
    llm.rate_limiter = RateLimiter(lim, timeout=0.5)
    await llm.acomplete("one question")
    assert lim.stats()["admitted"] == 1
    with pytest.raises(hs.RateLimitExceeded):
        await llm.acomplete("a second one waits for the minute")
    await asyncio.sleep(0)
    with pytest.raises(hs.RateLimitExceeded):  # a blocking ask after the task yielded is a request of its own
        llm.rate_limiter.acquire()


def test_a_mock_embedding_model_is_paced_from_threads() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.4)])
    embed_model = MockEmbedding(embed_dim=3, rate_limiter=RateLimiter(lim))
    started = time.monotonic()
    vectors = [embed_model.get_query_embedding(f"query {n}") for n in range(5)]
    elapsed = time.monotonic() - started
    assert vectors == [[0.5, 0.5, 0.5]] * 5
    assert 0.8 <= elapsed <= 0.8 + LATE


async def test_num_tokens_count_against_a_token_limit_and_tokens_stand_in_for_none() -> None:
    lim = hs.HolySheepRateLimiter(tpm=10_000)
    rate_limiter = RateLimiter(lim, tokens=300)
    rate_limiter.acquire(num_tokens=1_000)
    await rate_limiter.async_acquire(num_tokens=2_000)
    await rate_limiter.async_acquire()  # LlamaIndex's own call sites pass no num_tokens
    assert lim.stats()["remaining"][TPM] == 10_000 - 3_300


async def test_a_token_limit_refuses_requests_that_would_count_no_tokens_unless_tokens_is_given() -> None:
    lim = hs.HolySheepRateLimiter(tpm=10_000)
    embed_model = MockEmbedding(embed_dim=2, rate_limiter=RateLimiter(lim))
    with pytest.raises(hs.ConfigError) as info:
        await embed_model.aget_query_embedding("LlamaIndex passes no num_tokens")
    assert info.value.field == "tokens" and lim.stats()["admitted"] == 0
    await RateLimiter(lim).async_acquire(num_tokens=40)  # a size given is counted
    MockEmbedding(embed_dim=2, rate_limiter=RateLimiter(lim, tokens=0)).get_query_embedding("0 on purpose")
    assert lim.stats()["remaining"][TPM] == 10_000 - 40


async def test_a_request_waits_for_its_tokens_and_one_over_the_limit_raises_at_once() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1_000, per=0.5, unit="tokens")])
    rate_limiter = RateLimiter(lim)
    await rate_limiter.async_acquire(num_tokens=800)
    started = time.monotonic()
    await rate_limiter.async_acquire(num_tokens=400)
    assert 0.5 <= time.monotonic() - started <= 0.5 + LATE
    with pytest.raises(hs.RateLimitExceeded):
        await rate_limiter.async_acquire(num_tokens=1_001)
    with pytest.raises(hs.RateLimitExceeded):
        rate_limiter.acquire(num_tokens=1_001)


async def test_timeout_raises_instead_of_waiting() -> None:
    rate_limiter = RateLimiter(hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=60)]), timeout=0.1)
    await rate_limiter.async_acquire()
    with pytest.raises(hs.RateLimitExceeded):
        await rate_limiter.async_acquire()
    await asyncio.sleep(0)  # past the admission a nested blocking ask of the same call could take
    with pytest.raises(hs.RateLimitExceeded):
        rate_limiter.acquire()


async def test_a_keyed_limiter_limits_each_key_on_its_own() -> None:
    for keyed in (
        hs.KeyedLimiter(hs.Limit(1, per=60)),
        hs.KeyedLimiter(hs.Limit(1, per=60, algorithm="gcra", burst=1)),
    ):
        tenant_a = RateLimiter(keyed, key="a", timeout=0.05)
        await tenant_a.async_acquire()
        await RateLimiter(keyed, key="b").async_acquire()
        with pytest.raises(hs.RateLimitExceeded):
            await tenant_a.async_acquire()


def test_a_limiter_with_max_concurrency_is_refused_as_no_slot_would_come_back() -> None:
    with pytest.raises(hs.ConfigError) as info:
        RateLimiter(hs.HolySheepRateLimiter(rpm=60, max_concurrency=4))
    assert info.value.field == "limiter"
    per_key = hs.KeyedLimiter(lambda key: hs.HolySheepRateLimiter(max_concurrency=1))
    with pytest.raises(hs.ConfigError) as info:
        RateLimiter(per_key, key="a")
    assert info.value.field == "limiter"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: RateLimiter(None), "limiter"),  # type: ignore[arg-type]
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), key="a"), "key"),
        (lambda: RateLimiter(hs.KeyedLimiter(hs.Limit(1, per=1))), "key"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), tokens=-1), "tokens"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), tokens="800"), "tokens"),  # type: ignore[arg-type]
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), timeout=-0.5), "timeout"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60)).acquire(num_tokens=-3), "num_tokens"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60)).acquire(num_tokens=2.5), "num_tokens"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        make()
    assert info.value.field == field
