"""batch_embed / batch_chat (and their threaded twins) with the real openai SDK, mostly against MockGateway
over HTTP on 127.0.0.1. The bare SDK client (max_retries=0) is used so every fault shows as a failure."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest

import holysheep as hs
from holysheep.testing import Faults, MockGateway

from conftest import Err

EMBED_MODEL = "text-embedding-3-small"


def bare_async(gw: MockGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0)


def bare_sync(gw: MockGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0)


def docs(count: int) -> list[str]:
    return [f"document number {n}" for n in range(count)]


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    # Latencies drawn per request, so batches finish out of order.
    with MockGateway(latency=(0.0, 0.02), embedding_dim=8, seed=3) as gw:
        yield gw


@pytest.fixture
async def echo_client() -> AsyncIterator[openai.AsyncOpenAI]:
    """The real async SDK over a transport that replies with the last message's text, after 0-20 ms."""
    rng = random.Random(5)

    async def reply(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        text = body["messages"][-1]["content"]
        return httpx2.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                ],
            },
        )

    http_client = openai.DefaultAsyncHttpx2Client(transport=httpx2.MockTransport(reply))
    async with openai.AsyncOpenAI(
        base_url="http://echo.test/v1", api_key="hs_test", max_retries=0, http_client=http_client
    ) as client:
        yield client


# --- order ---------------------------------------------------------------------------------------------


async def test_batch_embed_returns_one_vector_per_document_in_input_order(gateway: MockGateway) -> None:
    texts = docs(230)
    async with bare_async(gateway) as client:
        vectors = await hs.batch_embed(client, texts, model=EMBED_MODEL, batch_size=20, concurrency=5)
        # The gateway's vectors depend only on the text: one request for all shows what each should be.
        expected = await client.embeddings.create(model=EMBED_MODEL, input=texts)
    assert vectors == [item.embedding for item in expected.data]
    embedding_requests = [r for r in gateway.admission_log() if r.endpoint == "/v1/embeddings"]
    assert len(embedding_requests) == 12 + 1  # 230 documents, 20 a request; then the check


async def test_batch_embed_reads_a_generator_as_it_goes(gateway: MockGateway) -> None:
    async with bare_async(gateway) as client:
        from_generator = await hs.batch_embed(client, (t for t in docs(50)), model=EMBED_MODEL, batch_size=7)
        from_list = await hs.batch_embed(client, docs(50), model=EMBED_MODEL, batch_size=50)
    assert from_generator == from_list


async def test_batch_chat_returns_replies_in_prompt_order(echo_client: openai.AsyncOpenAI) -> None:
    prompts: list[hs.batch.Prompt] = [f"prompt {n}" for n in range(60)]
    prompts[7] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "as messages"}]
    replies = await hs.batch_chat(echo_client, prompts, model="gpt-4.1", concurrency=8)
    assert replies == [f"prompt {n}" if n != 7 else "as messages" for n in range(60)]


async def test_batch_chat_passes_its_keyword_arguments_on(gateway: MockGateway) -> None:
    async with bare_async(gateway) as client:
        replies = await hs.batch_chat(client, ["hi", "there"], model="gpt-4.1", max_tokens=2)
    assert replies == ["baa baa", "baa baa"]


def test_threaded_twins_keep_order_too(gateway: MockGateway) -> None:
    texts = docs(120)
    with bare_sync(gateway) as client:
        vectors = hs.batch_embed_sync(client, texts, model=EMBED_MODEL, batch_size=10, concurrency=4)
        expected = client.embeddings.create(model=EMBED_MODEL, input=texts)
        replies = hs.batch_chat_sync(client, ["a"] * 30, model="gpt-4.1", concurrency=6, max_tokens=1)
    assert vectors == [item.embedding for item in expected.data]
    assert replies == ["baa"] * 30


# --- failures are items --------------------------------------------------------------------------------


async def test_a_failed_chat_call_becomes_a_failure_item_and_the_rest_carry_on() -> None:
    with MockGateway(faults=Faults(server_error=0.25, reset=0.05), seed=11) as gw:
        async with bare_async(gw) as client:
            replies = await hs.batch_chat(client, ["hi"] * 200, model="gpt-4.1", concurrency=16, max_tokens=1)
        log = gw.admission_log()
    failures = [r for r in replies if isinstance(r, hs.BatchFailure)]
    assert len(replies) == 200
    assert [r for r in replies if not isinstance(r, hs.BatchFailure)] == ["baa"] * (200 - len(failures))
    assert len(failures) == sum(record.fault is not None for record in log) > 0
    assert {type(f.error) for f in failures} == {openai.InternalServerError, openai.APIConnectionError}
    for failure in failures:
        assert replies[failure.index] is failure
        assert failure.message.startswith(f"prompt {failure.index}: ")
        assert str(failure) == failure.message


async def test_every_document_of_a_failed_embedding_request_gets_the_failure() -> None:
    with MockGateway(faults=Faults(unavailable=0.3), embedding_dim=4, seed=2) as gw:
        async with bare_async(gw) as client:
            vectors = await hs.batch_embed(client, docs(400), model=EMBED_MODEL, batch_size=25)
        failed_requests = sum(record.status == 503 for record in gw.admission_log())
    failures = [v for v in vectors if isinstance(v, hs.BatchFailure)]
    assert failed_requests > 0 and len(failures) == 25 * failed_requests
    first = failures[0]
    assert first.index % 25 == 0
    assert first.message.startswith(f"documents {first.index}-{first.index + 24}: InternalServerError")
    # The whole request failed as one: its 25 documents share the one error.
    assert all(f.error is first.error for f in failures[:25])
    assert all(len(v) == 4 for v in vectors if not isinstance(v, hs.BatchFailure))


def breaker_client(gw: MockGateway, breaker: hs.CircuitBreaker) -> hs.AsyncHolySheep:
    no_retries = hs.RetryPolicy(max_attempts=1)
    return hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", retry=no_retries, breaker=breaker)


async def test_workers_wait_out_an_open_breaker_so_the_batch_rides_out_an_outage() -> None:
    # It tries again only once the outage is over, so it opens once and closes once.
    breaker = hs.CircuitBreaker(failure_threshold=3, recovery_timeout=0.6)
    with MockGateway(faults=Faults(outage=(0.0, 0.5))) as gw:
        async with breaker_client(gw, breaker) as client:
            replies = await hs.batch_chat(client, ["hi"] * 20, model="gpt-4.1", concurrency=4, max_tokens=1)
        log = gw.admission_log()
    # The calls that met the outage before the breaker opened failed (no retries here); every later
    # one waited for the breaker instead of failing, and went through once the outage was over.
    failures = [r for r in replies if isinstance(r, hs.BatchFailure)]
    assert {type(f.error) for f in failures} == {openai.InternalServerError}
    # Three failures open it; the calls in flight then (one per other worker) fail too.
    assert len(failures) == sum(record.fault == "outage" for record in log) <= 3 + 3
    assert replies.count("baa") == 20 - len(failures)
    assert breaker.state == "closed"


def test_threads_wait_out_an_open_breaker_too() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2, recovery_timeout=0.1)
    with MockGateway(latency=0.03, faults=Faults(outage=(0.1, 0.4))) as gw:
        no_retries = hs.RetryPolicy(max_attempts=1)
        with hs.HolySheep(base_url=gw.base_url, api_key="hs_test", retry=no_retries, breaker=breaker) as client:
            replies = client.batch_chat(["hi"] * 30, model="gpt-4.1", concurrency=3, max_tokens=1)
        outage_answers = sum(record.fault == "outage" for record in gw.admission_log())
    assert replies.count("baa") == 30 - outage_answers < 30
    assert breaker.stats()["rejected"] > 0  # some calls met the open breaker, and waited


async def test_with_no_breaker_wait_an_open_breaker_fails_the_items_at_once() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=3, recovery_timeout=30.0)
    with MockGateway(faults=Faults(outage=(0.0, 30.0))) as gw:
        async with breaker_client(gw, breaker) as client:
            replies = await hs.batch_chat(client, ["hi"] * 20, model="gpt-4.1", concurrency=1, max_breaker_wait=0)
        reached = len(gw.admission_log())
    errors = [type(r.error) for r in replies if isinstance(r, hs.BatchFailure)]
    # issue 19: the outage's first 503 says when it ends (retry-after-ms), which opens the breaker at once
    assert errors == [openai.InternalServerError] + [hs.CircuitOpenError] * 19
    assert reached == 1


# --- cancellation and errors of the input ---------------------------------------------------------------


async def test_cancelling_stops_every_worker_at_once() -> None:
    with MockGateway(latency=5.0) as gw:
        async with bare_async(gw) as client:
            batch = asyncio.ensure_future(hs.batch_chat(client, ["hi"] * 100, model="gpt-4.1", concurrency=4))
            await asyncio.sleep(0.3)
            cancelled_at = time.monotonic()
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch
            assert time.monotonic() - cancelled_at < 0.5
            assert asyncio.all_tasks() == {asyncio.current_task()}
        # The four calls in flight, and no more: nothing was pulled after the cancel.
        assert len(gw.admission_log()) == 4


async def test_an_error_of_the_input_itself_propagates(gateway: MockGateway) -> None:
    def broken() -> Iterator[str]:
        yield from docs(30)
        raise RuntimeError("the corpus reader broke")

    async with bare_async(gateway) as client:
        with pytest.raises(RuntimeError, match="corpus reader"):
            await hs.batch_embed(client, broken(), model=EMBED_MODEL, batch_size=10, concurrency=2)
    assert asyncio.all_tasks() == {asyncio.current_task()}


# --- progress ------------------------------------------------------------------------------------------


async def test_progress_shows_a_tqdm_bar_with_the_failures(capsys: pytest.CaptureFixture[str]) -> None:
    with MockGateway(faults=Faults(server_error=0.3), seed=4, embedding_dim=4) as gw:
        async with bare_async(gw) as client:
            await hs.batch_embed(client, docs(300), model=EMBED_MODEL, batch_size=30, progress=True)
            bar = capsys.readouterr().err.rsplit("\r", 1)[-1]
            await hs.batch_chat(client, iter(["hi"] * 3), model="gpt-4.1", concurrency=1, progress="summaries")
            labelled = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert bar.startswith("embed: 100%") and "300/300" in bar and "failed=" in bar
    # Of an input with no length: a count, no percentage.
    assert labelled.startswith("summaries: 3prompt")


def test_progress_without_tqdm_is_a_config_error(monkeypatch: pytest.MonkeyPatch, gateway: MockGateway) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    with bare_sync(gateway) as client, pytest.raises(hs.ConfigError, match="holysheep\\[progress\\]") as info:
        hs.batch_chat_sync(client, ["hi"], model="gpt-4.1", progress=True)
    assert info.value.field == "progress"
    assert gateway.admission_log() == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"batch_size": 0}, Err(hs.ConfigError, "batch_size: .*got 0")),
        ({"concurrency": 0}, Err(hs.ConfigError, "concurrency: .*got 0")),
        ({"concurrency": True}, Err(hs.ConfigError, "concurrency: .*got True")),
        ({"concurrency": 2.5}, Err(hs.ConfigError, "concurrency: .*got 2.5")),
        ({"max_breaker_wait": -1}, Err(hs.ConfigError, "max_breaker_wait: .*got -1")),
        ({"max_breaker_wait": float("nan")}, Err(hs.ConfigError, "max_breaker_wait: .*got nan")),
    ],
)
async def test_bad_counts_are_config_errors_naming_the_field(kwargs: dict[str, Any], expected: Err) -> None:
    with pytest.raises(expected.type, match=expected.match) as info:
        await hs.batch_embed(openai.AsyncOpenAI(api_key="hs_test"), docs(3), model=EMBED_MODEL, **kwargs)
    assert isinstance(info.value, hs.ConfigError) and info.value.field == next(iter(kwargs))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"messages": []}, "messages"), ({"stream": True}, "stream")],
)
async def test_chat_refuses_what_it_cannot_honour(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        await hs.batch_chat(openai.AsyncOpenAI(api_key="hs_test"), ["hi"], model="gpt-4.1", **kwargs)
    assert info.value.field == field


# --- memory --------------------------------------------------------------------------------------------


async def overhead_of_embedding(client: openai.AsyncOpenAI, count: int) -> tuple[int, int]:
    """(peak traced bytes beyond what the results keep, bytes the results keep) for ``count`` documents."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        vectors = await hs.batch_embed(
            client, (f"doc {n}" for n in range(count)), model=EMBED_MODEL, batch_size=500, concurrency=4
        )
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(vectors) == count and not any(isinstance(v, hs.BatchFailure) for v in vectors)
    return peak - kept, kept - base


async def test_peak_memory_beyond_the_results_does_not_grow_with_the_documents() -> None:
    with MockGateway(embedding_dim=2) as gw:
        async with bare_async(gw) as client:
            await overhead_of_embedding(client, 500)  # warm: connections, the SDK's lazy imports
            small, small_results = await overhead_of_embedding(client, 1_000)
            large, large_results = await overhead_of_embedding(client, 10_000)
    assert large_results > 8 * small_results  # the results themselves do grow
    # Reading the documents up front would add about 60 bytes per extra one (540 KB here), and a task
    # per document about 1 KB more.
    assert large < small + 200 * 1024, (small, large)
