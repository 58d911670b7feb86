"""The drop-in clients with the real openai SDK against MockGateway over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import openai
import pytest

import holysheep as hs
from holysheep.testing import Faults, MockGateway

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
FAST = hs.RetryPolicy(max_attempts=6, base_delay=0.005, max_delay=0.05, jitter="full")


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    with MockGateway(latency=0.005) as gw:
        yield gw


def test_clients_are_the_sdk_clients_pointed_at_holysheep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOLYSHEEP_API_KEY", "  hs_from_env\n")
    client = hs.AsyncHolySheep()
    assert isinstance(client, openai.AsyncOpenAI)
    assert str(client.base_url) == "https://api.holysheep.ai/v1/"
    assert client.api_key == "hs_from_env"
    assert client.max_retries == 0
    assert isinstance(hs.HolySheep(), openai.OpenAI)


def test_a_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOLYSHEEP_API_KEY", raising=False)
    with pytest.raises(hs.ConfigError, match="HOLYSHEEP_API_KEY") as info:
        hs.AsyncHolySheep()
    assert info.value.field == "api_key"


def test_an_openai_key_pointed_at_holysheep_warns_without_showing_it() -> None:
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    with pytest.warns(UserWarning, match="looks like an OpenAI key") as record:
        hs.AsyncHolySheep(api_key=secret)
    assert secret not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hs.AsyncHolySheep(api_key=secret, base_url="http://127.0.0.1:9/v1")


#: The SDK's own HTTP client class: httpx2's from openai 3.x, httpx's before.
SDK_HTTP_CLIENT = getattr(openai, "DefaultAsyncHttpx2Client", None) or getattr(openai, "DefaultAsyncHttpxClient")


@pytest.mark.parametrize(
    ("options", "field"), [({"max_retries": 3}, "max_retries"), ({"http_client": SDK_HTTP_CLIENT()}, "http_client")]
)
def test_options_that_would_undo_the_transport_are_refused(options: dict[str, Any], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", **options)
    assert info.value.field == field


@pytest.mark.parametrize(
    "setting", [{"acquire_timeout": 5.0}, {"fallback_models": {"gpt-4.1": ["deepseek-v3.2"]}}, {"prices": {"m": 1.0}}]
)
def test_a_setting_given_with_the_http_client_of_another_client_is_refused_not_ignored(setting: dict[str, Any]) -> None:
    """The shared client's transport has its own settings: one given beside it could not apply."""
    shared = hs.AsyncHolySheep(api_key="hs_x")._client
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", http_client=shared, **setting)
    assert info.value.field == "http_client"
    assert hs.AsyncHolySheep(api_key="hs_x", http_client=shared).transport is shared._transport


@pytest.mark.parametrize("client_class", ["AsyncHolySheep", "HolySheep"])
def test_a_retry_policy_of_the_wrong_kind_is_refused_when_the_client_is_made(client_class: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        getattr(hs, client_class)(api_key="hs_x", retry=5)
    assert info.value.field == "retry"


def test_limiter_and_tier_are_one_or_the_other() -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.AsyncHolySheep(api_key="hs_x", tier="pro", limiter=hs.HolySheepRateLimiter(rpm=10))
    assert info.value.field == "tier"
    assert hs.AsyncHolySheep(api_key="hs_x", tier="pro").limiter is not None


async def test_chat_embeddings_models_and_streams_pass_the_limiter(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(rpm=600, tpm=100_000, max_concurrency=4)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim) as client:
        completion = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=64)
        assert completion.usage is not None and completion.usage.total_tokens == 22
        vectors = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(vectors.data) == 2
        assert [model.id async for model in client.models.list()]
        stream = await client.chat.completions.create(
            model="gpt-4.1", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        assert lim.stats()["in_flight"] == 1
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text.startswith("baa")
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
        assert raw.headers["x-request-id"] and raw.parse().choices
        # A copy with other options shares the transport, so the same limiter.
        copy = client.with_options(timeout=5.0)
        assert isinstance(copy, hs.AsyncHolySheep) and copy.limiter is lim and copy.max_retries == 0
        assert (await copy.chat.completions.create(model="gpt-4.1", messages=MESSAGES)).choices
    stats = lim.stats()
    assert (stats["admitted"], stats["in_flight"], stats["server_429s"]) == (6, 0, 0)
    # The estimates (64 completion tokens asked for) were settled to what the gateway counted.
    counted = sum(record.tokens for record in gateway.admission_log())
    assert stats["remaining"]["100000 tokens per minute"] == 100_000 - counted


async def test_300_concurrent_calls_with_the_gateways_limits_get_no_429() -> None:
    window_s = 1.0
    with MockGateway(rpm=100, window_s=window_s, latency=0.01) as gw:
        # The gateway times a request when its thread gets to it, on the same 2 cores as the 300
        # calls: the first 100 open their connections at once and are timed later after their send
        # than the next 100, which reuse them. Under the oldest openai SDK's heavier requests that lag
        # reached past 50 ms (one 429 in some runs), so the guard allows 100 ms.
        lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per=window_s, guard=0.1)])
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=lim) as client:
            results = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(300))
            )
        log = gw.admission_log()
        assert len(results) == 300
        assert sum(record.status == 429 for record in log) == 0
        assert gw.peak_admitted() <= 100
    if not hasattr(openai, "DefaultAsyncHttpx2Client"):
        # httpcore 1.x (under httpx, so openai 1.x and 2.x) checks every pooled connection's socket for
        # each request it sends: with 100 connections, a burst goes out at about 100 requests/s.
        return
    # The ideal schedule at the gateway: 100 at once, then 100 as each leaves the window and its guard,
    # twice; within 10% of it (the rest is the time a burst of 100 takes to go out on a loaded machine).
    # How long the whole run took is the SDK's CPU as much as the limiter's: benches/openai/goodput.py.
    arrivals = sorted(record.at for record in log)
    ideal = 2 * (window_s + 0.05)
    assert arrivals[200] - arrivals[0] < ideal * 1.10


async def test_a_gateway_tighter_than_the_client_converges_and_every_call_succeeds() -> None:
    with MockGateway(rpm=40, window_s=0.5, latency=0.005) as gw:
        lim = hs.HolySheepRateLimiter(limits=[hs.Limit(60, per=0.5)], max_concurrency=16)
        retry = hs.RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.5)
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=lim, retry=retry) as client:
            results = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(120))
            )
        assert len(results) == 120
        assert gw.peak_admitted() <= 40
        assert lim.stats()["rate_factor"] < 1.0
        assert lim.stats()["in_flight"] == 0


async def test_the_gateways_remaining_headers_bring_the_limiter_down_before_429s_would() -> None:
    # Told twice what the gateway allows, 4 at a time: without following x-ratelimit-remaining-requests,
    # about 40 requests are refused (a 429 each) before the cuts catch up.
    with MockGateway(rpm=40, window_s=0.5, latency=0.005) as gw:
        lim = hs.HolySheepRateLimiter(limits=[hs.Limit(80, per=0.5)], max_concurrency=4)
        retry = hs.RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.5)
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=lim, retry=retry) as client:
            await asyncio.gather(*(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(200)))
        stats = lim.stats()
        assert stats["server_429s"] <= 10
        assert stats["rate_factor"] < 0.7
        assert gw.peak_admitted() <= 40


async def test_faults_are_retried_and_the_breaker_rides_out_an_outage() -> None:
    # The outage is timed from the gateway's start, and the first request leaves only once all 100 calls
    # have built theirs (they start together; about 2.8 ms each on openai 1.x): 0.4-0.6 s after the start
    # here (0.2 s on 3.x), later on a busy machine, when an outage from 0.2 s to 0.6 s could be over
    # before it (the breaker never opened). The calls then take about 2 s (100/s, a quarter of the
    # attempts failing, the outage), so one from 0.8 s to 1.2 s meets them however late they start, up to
    # about 1 s.
    faults = Faults(unavailable=0.2, reset=0.05, outage=(0.8, 1.2))
    with MockGateway(latency=0.005, faults=faults, seed=3) as gw:
        # Paced evenly (GCRA, no burst), so the calls span the outage.
        lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per=1.0, algorithm="gcra")], max_concurrency=8)
        changes: list[tuple[str, str]] = []
        breaker = hs.CircuitBreaker(
            failure_threshold=5,
            recovery_timeout=0.2,
            half_open_max_calls=2,
            on_state_change=lambda b, old, new: changes.append((old, new)),
        )
        retry = hs.RetryPolicy(max_attempts=30, base_delay=0.02, max_delay=0.1)
        async with hs.AsyncHolySheep(
            base_url=gw.base_url, api_key="hs_test", limiter=lim, retry=retry, breaker=breaker
        ) as client:

            async def call() -> Any:
                for _ in range(50):
                    try:
                        return await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
                    except hs.CircuitOpenError as err:
                        await asyncio.sleep(err.retry_after)
                raise AssertionError("never got through")

            results = await asyncio.gather(*(call() for _ in range(100)))
        assert len(results) == 100
        assert ("closed", "open") in changes and changes[-1][1] == "closed"
        assert lim.stats()["in_flight"] == 0


async def test_streams_return_their_slot_when_read_closed_or_abandoned(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim) as client:
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
        assert lim.stats()["in_flight"] == 0
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        await stream.close()
        assert lim.stats()["in_flight"] == 0
        with pytest.raises(RuntimeError):
            stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
            async for _ in stream:
                raise RuntimeError("the consumer failed")
        await stream.close()
        assert lim.stats()["in_flight"] == 0


async def test_wrong_key_and_insufficient_quota_fail_at_once() -> None:
    with MockGateway(api_keys="hs_right", credit_tokens=30) as gw:
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_wrong", retry=FAST) as client:
            started = time.monotonic()
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_right", retry=FAST) as client:
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert info.value.code == "insufficient_quota"
        assert time.monotonic() - started < 1.0
        assert len([r for r in gw.admission_log() if r.status in (401, 429)]) == 2


async def test_a_raw_response_says_how_long_it_took(gateway: MockGateway) -> None:
    """JSON answers are read by the transport (to check them), so nothing of httpx's closes them later:
    their elapsed time is set there (httpx 0.x, under openai 1.x and 2.x, would raise)."""
    lim = hs.HolySheepRateLimiter(max_concurrency=2)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
    assert raw.elapsed.total_seconds() > 0


async def test_a_malformed_answer_raises_the_sdks_own_typed_error_after_the_retries() -> None:
    """Issue 15: a 200 with a body that is not JSON made the SDK raise json.JSONDecodeError."""
    with MockGateway(faults=Faults(malformed=1.0)) as gw:
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", retry=FAST) as client:
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert info.value.status_code == 502 and "not a JSON object or array" in info.value.message
        assert len(gw.admission_log()) == FAST.max_attempts
    with MockGateway(faults=Faults(malformed=0.3), seed=7) as gw:
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", retry=FAST) as client:
            replies = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(20))
            )
        assert all(reply.choices for reply in replies)
        assert any(record.fault == "malformed" for record in gw.admission_log())


async def test_nobody_listening_is_a_connection_error_after_the_attempts() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with hs.AsyncHolySheep(base_url=f"http://127.0.0.1:{port}/v1", api_key="hs_x", retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(openai.APIConnectionError):
            await client.models.list()
    assert time.monotonic() - started < 2.0


def test_the_blocking_client_and_wrap(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=2)
    with hs.HolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim) as client:
        assert client.chat.completions.create(model="gpt-4.1", messages=MESSAGES).choices
    with openai.OpenAI(base_url=gateway.base_url, api_key="hs_test") as bare, hs.wrap(bare, limiter=lim) as wrapped:
        assert isinstance(wrapped, openai.OpenAI) and wrapped.max_retries == 0
        assert wrapped.embeddings.create(model="text-embedding-3-small", input="x").data
    assert lim.stats()["admitted"] == 2 and lim.stats()["in_flight"] == 0


def open_breaker() -> hs.CircuitBreaker:
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError("the gateway is down")
    return breaker


async def test_holysheep_errors_come_out_as_themselves_from_async_clients(gateway: MockGateway) -> None:
    """Whatever the SDK's version: openai 1.x and 2.x wrap every error of a transport in
    APIConnectionError."""
    breaker = open_breaker()
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="hs_test") as bare:
        ours = hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", breaker=breaker)
        for client in (ours, hs.wrap(bare, breaker=breaker), hs.wrap(ours, breaker=breaker)):
            with pytest.raises(hs.CircuitOpenError):
                await client.models.list()
            assert isinstance(client, openai.AsyncOpenAI)
    assert gateway.admission_log() == []


def test_holysheep_errors_come_out_as_themselves_from_blocking_clients(gateway: MockGateway) -> None:
    breaker = open_breaker()
    with openai.OpenAI(base_url=gateway.base_url, api_key="hs_test") as bare:
        ours = hs.HolySheep(base_url=gateway.base_url, api_key="hs_test", breaker=breaker)
        for client in (ours, hs.wrap(bare, breaker=breaker), hs.wrap(ours, breaker=breaker)):
            with pytest.raises(hs.CircuitOpenError):
                client.models.list()
            assert isinstance(client, openai.OpenAI)
    assert gateway.admission_log() == []


async def test_a_budget_stops_a_runaway_loop_before_the_request_is_sent() -> None:
    with MockGateway(latency=0.001) as gw:
        # Each call is estimated at about 1,000 tokens of gpt-4.1 at $8 per million, $0.008, before it is
        # sent, then settled at the 22 tokens the gateway reports: $0.000176.
        budget = hs.HolySheepRateLimiter(limits=[hs.Limit(0.01, per="hour", unit="usd")])
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=budget) as client:
            sent = 0
            with pytest.raises(hs.BudgetExceeded, match="would cross the budget"):
                for _ in range(100):
                    await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=1_000)
                    sent += 1
        # Settled, ten calls cost $0.00176; the eleventh's estimate still fits, the next one's does not.
        assert sent == 11
        assert len(gw.admission_log()) == sent
        assert budget.stats()["in_flight"] == 0


async def test_batch_helpers_are_methods_of_the_client(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=1_000, max_concurrency=8)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim) as client:
        vectors = await client.batch_embed([f"doc {i}" for i in range(25)], model="text-embedding-3-small", batch_size=10)
        replies = await client.batch_chat(["hi", "there"], model="gpt-4.1", max_tokens=2)
    assert len(vectors) == 25 and all(isinstance(v, list) for v in vectors)
    assert replies == ["baa baa", "baa baa"]
    assert lim.stats()["admitted"] == 5 and lim.stats()["in_flight"] == 0


# --- streams abandoned unread give their slot back without Python's garbage collector (issue 15) ---
# With as many workers as concurrency slots, a stream that keeps its slot once abandoned stops every
# worker for good. The collector is off in these tests: the openai Stream sits in a reference cycle, so a
# slot that waited for it would never come back.

WORKERS, ROUNDS = 3, 4


@pytest.fixture
def gc_disabled() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def the_common_loop(client: openai.AsyncOpenAI) -> None:
    """The previous Stream is still bound to ``stream`` while the next create waits for a slot."""
    for _ in range(ROUNDS):
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            break


async def a_helper_that_returns(client: openai.AsyncOpenAI) -> None:
    async def first_chunk() -> object:
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        async for chunk in stream:
            return chunk
        raise AssertionError("an empty stream")

    for _ in range(ROUNDS):
        await first_chunk()


async def a_consumer_that_raises(client: openai.AsyncOpenAI) -> None:
    async def consume() -> None:
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            raise LookupError("the consumer failed")

    for _ in range(ROUNDS):
        with contextlib.suppress(LookupError):
            await consume()


async def a_task_cancelled_mid_stream(client: openai.AsyncOpenAI) -> None:
    for _ in range(ROUNDS):
        reading = asyncio.Event()

        async def consume() -> None:
            stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
            async for _chunk in stream:
                reading.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(consume())
        await reading.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    "abandon", [the_common_loop, a_helper_that_returns, a_consumer_that_raises, a_task_cancelled_mid_stream]
)
async def test_abandoned_streams_give_their_slot_back_with_the_garbage_collector_off(
    gateway: MockGateway, gc_disabled: None, abandon: Callable[[openai.AsyncOpenAI], Awaitable[None]]
) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=WORKERS)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim, acquire_timeout=15) as client:
        await asyncio.wait_for(asyncio.gather(*(abandon(client) for _ in range(WORKERS))), timeout=20)
    assert len(gateway.admission_log()) == WORKERS * ROUNDS


def the_common_loop_in_a_thread(client: openai.OpenAI) -> None:
    for _ in range(ROUNDS):
        stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        for _chunk in stream:
            break


def a_helper_that_returns_in_a_thread(client: openai.OpenAI) -> None:
    def first_chunk() -> object:
        stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        for chunk in stream:
            return chunk
        raise AssertionError("an empty stream")

    for _ in range(ROUNDS):
        first_chunk()


def a_consumer_that_raises_in_a_thread(client: openai.OpenAI) -> None:
    def consume() -> None:
        stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        for _chunk in stream:
            raise LookupError("the consumer failed")

    for _ in range(ROUNDS):
        with contextlib.suppress(LookupError):
            consume()


@pytest.mark.parametrize(
    "abandon", [the_common_loop_in_a_thread, a_helper_that_returns_in_a_thread, a_consumer_that_raises_in_a_thread]
)
def test_abandoned_streams_of_blocking_clients_give_their_slot_back_with_the_garbage_collector_off(
    gateway: MockGateway, gc_disabled: None, abandon: Callable[[openai.OpenAI], None]
) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=WORKERS)
    with hs.HolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim, acquire_timeout=15) as client:
        failures: list[BaseException] = []

        def worker() -> None:
            try:
                abandon(client)
            except BaseException as exc:  # reported below, as the thread's own error
                failures.append(exc)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert not any(thread.is_alive() for thread in threads), "the workers are stuck waiting for a slot"
        assert failures == []
    assert len(gateway.admission_log()) == WORKERS * ROUNDS


async def test_a_stream_closed_to_free_its_slot_says_so_when_read_again(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim) as client:
        first = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        async for _chunk in first:
            break
        second = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        with pytest.raises(httpx_library().StreamClosed, match="started another request"):
            async for _chunk in first:
                pass
        assert [chunk async for chunk in second]
    assert lim.stats()["in_flight"] == 0


async def test_a_stream_not_yet_read_keeps_its_slot_while_its_task_waits(gateway: MockGateway) -> None:
    """Opening two streams before reading either is the caller's right: the first is not taken away."""
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    async with hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_test", limiter=lim, acquire_timeout=0.2) as client:
        first = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        with pytest.raises(hs.RateLimitExceeded):
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        assert [chunk async for chunk in first]
    assert lim.stats()["in_flight"] == 0


def httpx_library() -> Any:
    """The HTTP library the SDK is built on: httpx2 for openai 3.x, httpx before."""
    from holysheep.transport import http_library

    return http_library


# --- a stream whose events are not all JSON (issue 15: untyped errors out of the SDK) ---


class ChunksOf:
    """A response body sent in the chunks given, for blocking and asyncio clients alike."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class BreaksTheThirdEvent:
    """An HTTP transport sending to the gateway for real, whose streamed answers come back with their
    third event cut off (``data: {not json``, split over two chunks) and the rest after it."""

    def __init__(self) -> None:
        lib = httpx_library()
        self.lib, self.blocking, self.asynchronous = lib, lib.HTTPTransport(), lib.AsyncHTTPTransport()

    def broken(self, request: Any, response: Any, body: bytes) -> Any:
        if not response.headers["content-type"].startswith("text/event-stream"):
            return self.lib.Response(response.status_code, headers=response.headers, content=body, request=request)
        events = [event + b"\n\n" for event in body.split(b"\n\n") if event]
        assert len(events) > 4 and all(event.startswith(b"data: ") for event in events)
        chunks = [*events[:2], b"data: {not", b" json\n\n", *events[3:]]
        stream = type("Chunks", (ChunksOf, self.lib.SyncByteStream, self.lib.AsyncByteStream), {})(chunks)
        framing = ("content-length", "transfer-encoding")
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in framing]
        return self.lib.Response(response.status_code, headers=headers, stream=stream, request=request)

    def handle_request(self, request: Any) -> Any:
        response = self.blocking.handle_request(request)
        return self.broken(request, response, response.read())

    async def handle_async_request(self, request: Any) -> Any:
        response = await self.asynchronous.handle_async_request(request)
        return self.broken(request, response, await response.aread())

    def close(self) -> None:
        self.blocking.close()

    async def aclose(self) -> None:
        await self.asynchronous.aclose()
        self.blocking.close()


def client_breaking_events(asynchronous: bool, gateway: MockGateway, limiter: hs.HolySheepRateLimiter | None) -> Any:
    """An SDK client over a holysheep Transport over `BreaksTheThirdEvent`."""
    transport = hs.Transport(limiter, FAST, inner=BreaksTheThirdEvent())
    if asynchronous:
        http_client, sdk_client = SDK_HTTP_CLIENT, openai.AsyncOpenAI
    else:
        http_client = getattr(openai, "DefaultHttpx2Client", None) or getattr(openai, "DefaultHttpxClient")
        sdk_client = openai.OpenAI
    return sdk_client(
        base_url=gateway.base_url, api_key="hs_test", max_retries=0, http_client=http_client(transport=transport)
    )


@pytest.mark.parametrize("max_concurrency", [2, None], ids=["slots", "no-limiter"])
async def test_a_stream_event_that_is_not_json_ends_the_stream_with_the_sdks_typed_error(
    gateway: MockGateway, gc_disabled: None, max_concurrency: int | None
) -> None:
    """Issue 15: ``data: {not json`` in a streamed answer made the SDK raise json.JSONDecodeError out of the
    consumer's loop."""
    lim = hs.HolySheepRateLimiter(max_concurrency=max_concurrency) if max_concurrency else None
    received: list[Any] = []
    async with client_breaking_events(True, gateway, lim) as client:
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                received.append(chunk)
        assert len(received) == 2
        assert info.value.code == "invalid_json" and "not JSON" in info.value.message
        if lim is not None:
            assert lim.stats()["in_flight"] == 0
        assert (await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)).choices


def test_a_blocking_stream_event_that_is_not_json_ends_the_stream_with_the_sdks_typed_error(
    gateway: MockGateway, gc_disabled: None
) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    received: list[Any] = []
    with client_breaking_events(False, gateway, lim) as client:
        stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk)
        assert len(received) == 2
        assert info.value.code == "invalid_json"
        assert lim.stats()["in_flight"] == 0
        assert client.chat.completions.create(model="gpt-4.1", messages=MESSAGES).choices
