"""hs.Transport under an httpx2 client, with httpx2.MockTransport underneath: what it retries, when it
gives up, and when it returns the concurrency slot."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

import holysheep as hs

FAST = hs.RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005, jitter="none")
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def answers(*replies: httpx2.Response | Exception) -> tuple[Callable[[httpx2.Request], httpx2.Response], list[str]]:
    """A handler giving the replies in turn (the last one again when they run out), and its call log."""
    calls: list[str] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.url.path)
        reply = replies[min(len(calls), len(replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        return reply

    return handle, calls


def ok(usage_tokens: int = 30) -> httpx2.Response:
    return httpx2.Response(200, json={"object": "chat.completion", "usage": {"total_tokens": usage_tokens}})


def client(handler: Any, **options: Any) -> httpx2.AsyncClient:
    transport = hs.Transport(inner=httpx2.MockTransport(handler), **options)
    return httpx2.AsyncClient(transport=transport, base_url="http://gateway.test/v1")


async def test_retried_answers_go_round_again_until_one_passes() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=2)
    handle, calls = answers(httpx2.Response(503), httpx2.Response(502), ok())
    async with client(handle, limiter=lim, retry=FAST) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert len(calls) == 3
    stats = lim.stats()
    assert (stats["admitted"], stats["in_flight"]) == (3, 0)


async def test_retry_after_header_overrides_backoff() -> None:
    handle, calls = answers(httpx2.Response(429, headers={"retry-after-ms": "150"}), ok())
    started = time.monotonic()
    async with client(handle, retry=FAST) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize(
    "final",
    [
        httpx2.Response(400, json={"error": {"message": "bad"}}),
        httpx2.Response(401, json={"error": {"message": "no key"}}),
        httpx2.Response(429, json={"error": {"code": "insufficient_quota", "message": "out of credit"}}),
    ],
)
async def test_answers_that_retrying_cannot_fix_come_back_at_once(final: httpx2.Response) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    handle, calls = answers(final)
    async with client(handle, limiter=lim, retry=FAST) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == final.status_code
    assert len(calls) == 1
    assert json.loads(response.content)["error"]["message"]
    assert lim.stats()["in_flight"] == 0


async def test_a_failure_that_lasts_returns_the_last_answer_after_the_attempts() -> None:
    handle, calls = answers(httpx2.Response(503, json={"error": {"message": "down"}}))
    async with client(handle, retry=FAST) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert len(calls) == FAST.max_attempts


async def test_max_elapsed_counts_from_the_first_attempt_of_each_request() -> None:
    # Delays of 100 ms: no retry that would start past 250 ms from a request's first attempt, so three
    # attempts of ten; the second request's clock starts afresh.
    policy = hs.RetryPolicy(max_attempts=10, base_delay=0.1, multiplier=1.0, jitter="none", max_elapsed=0.25)
    handle, calls = answers(httpx2.Response(503))
    async with client(handle, retry=policy) as http:
        for _ in range(2):
            response = await http.post("/chat/completions", json=CHAT)
            assert response.status_code == 503
    assert len(calls) == 2 * 3


async def test_connection_errors_are_retried_then_raised_unchanged() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    handle, calls = answers(httpx2.ConnectError("refused"))
    async with client(handle, limiter=lim, retry=FAST) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post("/chat/completions", json=CHAT)
    assert len(calls) == FAST.max_attempts
    assert lim.stats()["in_flight"] == 0


async def test_open_breaker_raises_circuit_open_without_sending() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2, recovery_timeout=30.0)
    handle, calls = answers(httpx2.Response(500))
    async with client(handle, retry=hs.RetryPolicy(max_attempts=1), breaker=breaker) as http:
        for _ in range(2):
            assert (await http.post("/chat/completions", json=CHAT)).status_code == 500
        assert breaker.state == "open"
        with pytest.raises(hs.CircuitOpenError) as info:
            await http.post("/chat/completions", json=CHAT)
    assert len(calls) == 2
    assert info.value.retry_after > 0


async def test_requests_a_half_open_breaker_refuses_take_nothing_from_the_rate_limit() -> None:
    """While the breaker's trials are out, the requests it fails fast must not use up the limiter's
    window: the demo's workers, polling a half-open breaker, filled a window with requests never sent,
    and the calls that came once it closed waited a window more."""
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(10, per=60.0)])
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=0.05, half_open_max_calls=1)
    trial_sent, trial_answers = asyncio.Event(), asyncio.Event()

    async def handle(request: httpx2.Request) -> httpx2.Response:
        if breaker.state == "closed":
            return httpx2.Response(503)
        trial_sent.set()
        await trial_answers.wait()
        return ok()

    async with client(handle, limiter=lim, retry=hs.RetryPolicy(max_attempts=1), breaker=breaker) as http:
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 503
        await asyncio.sleep(0.06)
        trial = asyncio.create_task(http.post("/chat/completions", json=CHAT))
        await trial_sent.wait()
        assert breaker.state == "half_open"
        for _ in range(5):
            with pytest.raises(hs.CircuitOpenError):
                await http.post("/chat/completions", json=CHAT)
        trial_answers.set()
        assert (await trial).status_code == 200
    assert breaker.state == "closed"
    assert lim.stats()["remaining"] == {"10 requests per minute": 10 - 2}


async def test_a_request_the_breaker_refuses_after_its_admission_gives_its_place_back() -> None:
    """The breaker may open while a request waits for the limiter: refused then, it was never sent, so
    its place in the rate windows goes back with its slot."""
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(10, per=60.0)], max_concurrency=1)
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=30.0)
    failing_sent, fail_now = asyncio.Event(), asyncio.Event()

    async def handle(request: httpx2.Request) -> httpx2.Response:
        failing_sent.set()
        await fail_now.wait()
        return httpx2.Response(503)

    async with client(handle, limiter=lim, retry=hs.RetryPolicy(max_attempts=1), breaker=breaker) as http:
        failing = asyncio.create_task(http.post("/chat/completions", json=CHAT))
        await failing_sent.wait()
        waiting = asyncio.create_task(http.post("/chat/completions", json=CHAT))
        await asyncio.sleep(0.01)  # past the breaker's check, waiting for the slot
        fail_now.set()
        assert (await failing).status_code == 503
        with pytest.raises(hs.CircuitOpenError):
            await waiting
    assert lim.stats()["remaining"] == {"10 requests per minute": 10 - 1}
    assert lim.stats()["in_flight"] == 0


@pytest.mark.parametrize(
    "failing",
    [httpx2.Response(408), httpx2.Response(503, headers={"x-should-retry": "false"})],
    ids=["408", "503 asking not to be retried"],
)
async def test_the_breaker_opens_on_what_the_table_counts_against_it(failing: httpx2.Response) -> None:
    # Issue 15: the transport used to decide by its own rule (status >= 500), so a 408, or a 5xx the
    # server asked not to retry, never counted for the breaker.
    breaker = hs.CircuitBreaker(failure_threshold=3, recovery_timeout=30.0)
    handle, calls = answers(failing)
    async with client(handle, retry=hs.RetryPolicy(max_attempts=1), breaker=breaker) as http:
        while breaker.state == "closed" and len(calls) < 20:
            assert (await http.post("/chat/completions", json=CHAT)).status_code == failing.status_code
        with pytest.raises(hs.CircuitOpenError):
            await http.post("/chat/completions", json=CHAT)
    assert len(calls) == 3


async def test_a_failure_is_classified_once_per_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is asked once per failed attempt; the breaker, the retry policy and the fallback read
    the verdict the failure carries."""
    from holysheep import classify

    asked: list[tuple[Any, ...]] = []

    def counting(*args: Any) -> tuple[bool, str, bool]:
        asked.append(args)
        return classify_failure(*args)

    classify_failure = classify.classify_failure
    monkeypatch.setattr(classify, "classify_failure", counting)
    breakers = hs.KeyedBreaker(failure_threshold=100)
    handle, asked_models = by_model({"gpt-4.1": httpx2.Response(503), "deepseek-v3.2": httpx2.ConnectError("down")})
    fallbacks = {"gpt-4.1": ["deepseek-v3.2"]}
    async with client(handle, retry=FAST, breaker=breakers, fallback_models=fallbacks) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post("/chat/completions", json=CHAT)
    assert len(asked_models) == 2 * FAST.max_attempts
    assert len(asked) == 2 * FAST.max_attempts


async def test_a_model_that_keeps_timing_out_hands_over_to_its_fallback() -> None:
    handle, asked = by_model({"gpt-4.1": httpx2.ReadTimeout("slow"), "deepseek-v3.2": ok()})
    async with client(handle, retry=FAST, fallback_models={"gpt-4.1": ["deepseek-v3.2"]}) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.headers["x-holysheep-model"] == "deepseek-v3.2"
    assert asked == ["gpt-4.1"] * FAST.max_attempts + ["deepseek-v3.2"]


@pytest.mark.parametrize(
    ("failing", "handed_over"),
    [
        (httpx2.Response(503, headers={"x-should-retry": "false"}), True),
        (httpx2.Response(400, json={"error": {"message": "bad request"}}), False),
        (httpx2.Response(429, json={"error": {"code": "insufficient_quota"}}), False),
    ],
    ids=["503 not to be retried", "400", "out of credit"],
)
async def test_the_fallback_reads_the_failures_verdict(failing: httpx2.Response, handed_over: bool) -> None:
    handle, asked = by_model({"gpt-4.1": failing, "deepseek-v3.2": ok()})
    async with client(handle, retry=FAST, fallback_models={"gpt-4.1": ["deepseek-v3.2"]}) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert asked == (["gpt-4.1", "deepseek-v3.2"] if handed_over else ["gpt-4.1"])
    assert response.status_code == (200 if handed_over else failing.status_code)


async def test_usage_settles_the_token_estimate() -> None:
    lim = hs.HolySheepRateLimiter(tpm=1_000)
    handle, _ = answers(ok(usage_tokens=40))
    body = {**CHAT, "max_tokens": 800}
    async with client(handle, limiter=lim) as http:
        await http.post("/chat/completions", json=body)
    assert lim.stats()["remaining"] == {"1000 tokens per minute": 960}


#: Counts no answer can really report: too large to be real, or not a plain integer.
UNREAL_USAGE = [
    b'"total_tokens": 999999999999999999',
    b'"total_tokens": 99999999999999999999999',
    b'"total_tokens": 1e+308',
    b'"total_tokens": 7.5',
    b'"total_tokens": -3',
    b'"total_tokens": "many"',
    b"",
]


def answering_usage(usage: bytes, streamed: bool) -> Callable[[httpx2.Request], httpx2.Response]:
    """A handler whose answers end with ``"usage": {<usage>}``, as a JSON body or a stream's last event."""

    async def events() -> AsyncIterator[bytes]:
        yield b'data: {"choices": [{"delta": {"content": "baa"}}]}\n\n'
        yield b'data: {"choices": [], "usage": {' + usage + b"}}\n\n"
        yield b"data: [DONE]\n\n"

    def handle(request: httpx2.Request) -> httpx2.Response:
        if streamed:
            return httpx2.Response(200, content=events(), headers={"content-type": "text/event-stream"})
        body = b'{"object": "chat.completion", "usage": {' + usage + b"}}"
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    return handle


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("usage", UNREAL_USAGE)
async def test_a_usage_that_cannot_be_real_leaves_the_estimate_and_returns_the_slot(usage: bytes, streamed: bool) -> None:
    """Issue 15: one answer reporting 999999999999999999 tokens blocked every token-carrying request for
    the whole window, and 1e+308 was read as 1 token."""
    from holysheep._tokens import estimate_request_tokens

    lim = hs.HolySheepRateLimiter(tpm=10_000, max_concurrency=1)
    body = {**CHAT, "max_tokens": 800}
    async with client(answering_usage(usage, streamed), limiter=lim, acquire_timeout=0.5) as http:
        response = await http.post("/chat/completions", json=body)
        assert response.status_code == 200
        stats = lim.stats()
        assert stats["in_flight"] == 0
        assert stats["remaining"]["10000 tokens per minute"] == 10_000 - estimate_request_tokens(body)
        assert (await http.post("/chat/completions", json=body)).status_code == 200


def json_answer(body: bytes) -> httpx2.Response:
    return httpx2.Response(200, content=body, headers={"content-type": "application/json", "x-request-id": "req_1"})


CUT_OFF = b'{"id": "chatcmpl-mock", "object": "chat.comp'


async def test_a_json_answer_that_is_not_json_is_retried_like_a_bad_gateway() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=5)
    handle, calls = answers(json_answer(CUT_OFF), ok())
    async with client(handle, retry=FAST, breaker=breaker) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 200 and len(calls) == 2
    assert breaker.stats()["failures"] == 1


@pytest.mark.parametrize("body", [CUT_OFF, b"", b"<html><body>502 Bad Gateway</body></html>", b"OK", b"null"])
async def test_a_json_answer_that_stays_broken_comes_back_as_a_502_saying_what_came(body: bytes) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    handle, calls = answers(json_answer(body))
    async with client(handle, limiter=lim, retry=FAST) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert len(calls) == FAST.max_attempts
    assert response.status_code == 502 and response.headers["x-request-id"] == "req_1"
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "not a JSON object or array" in error["message"]
    assert lim.stats()["in_flight"] == 0


@pytest.mark.parametrize("body", [b'{"object": "list"}', b' \r\n[1, 2]\n', b"\n" * 100 + b'{"a": 1}' + b" " * 100])
async def test_json_answers_of_any_layout_pass_unchanged(body: bytes) -> None:
    handle, calls = answers(json_answer(body))
    async with client(handle, retry=FAST) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert (response.status_code, response.content, len(calls)) == (200, body, 1)


async def test_answers_without_a_body_are_not_taken_for_broken_json() -> None:
    empty = {"content-type": "application/json"}
    handle, calls = answers(httpx2.Response(204, headers=empty), httpx2.Response(200, headers=empty))
    async with client(handle, retry=FAST) as http:
        assert (await http.delete("/files/file-1")).status_code == 204
        assert (await http.head("/models")).status_code == 200
    assert len(calls) == 2


async def test_an_answer_saying_the_server_has_less_left_lowers_that_units_rate_before_any_429() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per="minute"), hs.Limit(10_000, per="minute", unit="tokens")])
    said = {"x-ratelimit-remaining-requests": "39", "X-RateLimit-Remaining-Tokens": "20000"}
    handle, _ = answers(httpx2.Response(200, json={"object": "chat.completion"}, headers=said))
    async with client(handle, limiter=lim) as http:
        await http.post("/chat/completions", json=CHAT)
    # One request counted here, 39 left there: the server allows 40 of our 100. Tokens: more than ours.
    stats = lim.stats()
    assert (stats["rate_factor"], stats["tokens_rate_factor"]) == (0.4, 1.0)
    assert stats["remaining"]["100 requests per minute"] == 39
    assert stats["server_429s"] == 0


@pytest.mark.parametrize(("reset", "factor"), [("1s", 1.0), ("500ms", 1.0), ("59.5s", 0.4), ("1m0s", 0.4)])
async def test_what_is_left_is_read_against_a_limit_only_as_long_as_the_servers_window(reset: str, factor: float) -> None:
    # A server whole again within a second counts per second: its 39 left say nothing of our minute.
    lim = hs.HolySheepRateLimiter(rpm=100)
    said = {"x-ratelimit-remaining-requests": "39", "x-ratelimit-reset-requests": reset}
    handle, _ = answers(httpx2.Response(200, json={"object": "chat.completion"}, headers=said))
    async with client(handle, limiter=lim) as http:
        await http.post("/chat/completions", json=CHAT)
    assert lim.stats()["rate_factor"] == factor


def test_what_is_left_is_read_from_headers_that_only_give_raw_pairs() -> None:
    """Headers are read from their public ``raw`` (name, value) pairs, as any httpx-like library gives
    them."""

    class RawOnly:
        raw = [(b"Content-Type", b"application/json"), (b"X-RateLimit-Remaining-Requests", b"39")]

    lim = hs.HolySheepRateLimiter(rpm=100)
    admitted = lim._admit_at_once(0, 0.0)
    assert admitted is not None
    admitted.observe(200, RawOnly())
    assert lim.stats()["rate_factor"] == 0.4


@pytest.mark.parametrize("value", [b"", b"many", b"-1", b"1e3", b"inf", b"NaN", b"9" * 400, b"\xff\xfe", b" 2 0 "])
async def test_a_remaining_header_that_cannot_be_read_is_ignored(value: bytes) -> None:
    lim = hs.HolySheepRateLimiter(rpm=100)
    reply = httpx2.Response(200, json={"object": "chat.completion"}, headers=[(b"x-ratelimit-remaining-requests", value)])
    handle, _ = answers(reply)
    async with client(handle, limiter=lim) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert lim.stats()["rate_factor"] == 1.0


def sse(*events: dict[str, Any]) -> Callable[[httpx2.Request], httpx2.Response]:
    """A handler answering each request with a fresh server-sent event stream, sent chunk by chunk
    as a server's is (an answer built from bytes in memory would come already read)."""

    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})

    return handle


async def test_a_stream_holds_its_slot_until_read_to_the_end() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, tpm=10_000, max_concurrency=1)
    handle = sse({"choices": [{"delta": {"content": "baa"}}]}, {"choices": [], "usage": {"total_tokens": 7}})
    async with client(handle, limiter=lim) as http:
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            assert lim.stats()["in_flight"] == 1
            chunks = [line async for line in response.aiter_lines()]
            assert lim.stats()["in_flight"] == 0
    assert any("[DONE]" in line for line in chunks)
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 7


async def test_a_stream_closed_early_or_abandoned_by_an_error_returns_its_slot() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    handle = sse(*({"choices": [{"delta": {"content": "baa"}}]} for _ in range(50)))
    async with client(handle, limiter=lim) as http:
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            async for _ in response.aiter_lines():
                break
        assert lim.stats()["in_flight"] == 0
        with pytest.raises(RuntimeError):
            async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
                async for _ in response.aiter_lines():
                    raise RuntimeError("the consumer failed")
        assert lim.stats()["in_flight"] == 0


@pytest.mark.parametrize("counts_tokens", [False, True])
def test_a_blocking_stream_holds_its_slot_until_read_or_closed_and_settles_its_usage(counts_tokens: bool) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, tpm=10_000 if counts_tokens else None, max_concurrency=1)
    events = [b'data: {"choices": [{"delta": {"content": "baa"}}]}\n\n'] * 20
    events.append(b'data: {"choices": [], "usage": {"total_tokens": 7}}\n\n')

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=iter(events), headers={"content-type": "text/event-stream"})

    transport = hs.Transport(lim, FAST, inner=httpx2.MockTransport(handle))
    with httpx2.Client(transport=transport, base_url="http://gateway.test/v1") as http:
        with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            assert lim.stats()["in_flight"] == 1
            lines = list(response.iter_lines())
            assert lim.stats()["in_flight"] == 0
        assert any("total_tokens" in line for line in lines)
        if counts_tokens:
            assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 7
        with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            next(response.iter_lines())
        assert lim.stats()["in_flight"] == 0


@pytest.mark.parametrize("counts_tokens", [False, True])
async def test_a_stream_dropped_unread_and_unclosed_returns_its_slot(counts_tokens: bool) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, tpm=10_000 if counts_tokens else None, max_concurrency=1)
    handle = sse({"choices": [{"delta": {"content": "baa"}}]})
    async with client(handle, limiter=lim) as http:
        response = await http.send(http.build_request("POST", "/chat/completions", json=CHAT), stream=True)
        assert lim.stats()["in_flight"] == 1
        del response
        gc.collect()
        assert lim.stats()["in_flight"] == 0


async def test_cancelling_a_backoff_stops_retrying_at_once() -> None:
    slow = hs.RetryPolicy(max_attempts=5, base_delay=10.0, jitter="none")
    handle, calls = answers(httpx2.Response(503))
    async with client(handle, retry=slow) as http:
        task = asyncio.create_task(http.post("/chat/completions", json=CHAT))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(calls) == 1


def test_a_blocking_exchange_that_would_suspend_fails_loudly() -> None:
    from holysheep.transport import _run_blocking

    with pytest.raises(RuntimeError, match="suspended"):
        _run_blocking(asyncio.sleep(0))


def test_the_same_transport_serves_blocking_clients() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    handle, calls = answers(httpx2.Response(503), ok())
    transport = hs.Transport(lim, FAST, inner=httpx2.MockTransport(handle))
    with httpx2.Client(transport=transport, base_url="http://gateway.test/v1") as http:
        assert http.post("/chat/completions", json=CHAT).status_code == 200
    assert len(calls) == 2
    assert lim.stats()["in_flight"] == 0


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), "1"])
def test_an_acquire_timeout_that_cannot_work_is_refused_at_construction(timeout: Any) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.Transport(hs.HolySheepRateLimiter(max_qps=1), acquire_timeout=timeout)
    assert info.value.field == "acquire_timeout"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"limiter": 5}, "limiter"),
        ({"retry": 5}, "retry"),
        ({"breaker": "default"}, "breaker"),
        ({"inner": object()}, "inner"),
        ({"fallback_models": ["deepseek-v3.2"]}, "fallback_models"),
        ({"fallback_models": {"gpt-4.1": "deepseek-v3.2"}}, "fallback_models"),
        ({"prices": {"gpt-4.1": -8.0}}, "prices"),
        ({"prices": {"gpt-4.1": float("nan")}}, "prices"),
        ({"prices": {"gpt-4.1": "8"}}, "prices"),
        ({"prices": 8.0}, "prices"),
    ],
)
def test_arguments_that_cannot_work_are_refused_at_construction(settings: dict[str, Any], field: str) -> None:
    """Issue 15: a retry=5 failed at the first request with AttributeError."""
    with pytest.raises(hs.ConfigError) as info:
        hs.Transport(**settings)
    assert info.value.field == field


async def test_a_request_that_would_wait_past_the_acquire_timeout_fails_at_once() -> None:
    lim = hs.HolySheepRateLimiter(rpm=1)
    handle, calls = answers(ok())
    async with client(handle, limiter=lim, acquire_timeout=1.0) as http:
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 200
        started = time.monotonic()
        with pytest.raises(hs.RateLimitExceeded) as info:
            await http.post("/chat/completions", json=CHAT)
    assert time.monotonic() - started < 0.5
    assert info.value.retry_after is not None and info.value.retry_after > 50
    assert len(calls) == 1


def test_a_blocking_request_waits_its_turn_then_goes() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=10, burst=1)
    handle, calls = answers(ok())
    transport = hs.Transport(lim, FAST, inner=httpx2.MockTransport(handle), acquire_timeout=1.0)
    with httpx2.Client(transport=transport, base_url="http://gateway.test/v1") as http:
        started = time.monotonic()
        for _ in range(3):
            assert http.post("/chat/completions", json=CHAT).status_code == 200
    assert time.monotonic() - started >= 0.18
    assert len(calls) == 3
    assert lim.stats()["in_flight"] == 0


async def test_a_request_cancelled_in_flight_returns_its_slot_and_leaves_the_breaker_alone() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=100, max_concurrency=1)
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=0.01, half_open_max_calls=1)

    async def hang(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(10)
        raise AssertionError("never answered")

    transport = hs.Transport(lim, hs.RetryPolicy(max_attempts=1), breaker, inner=httpx2.MockTransport(hang))
    async with httpx2.AsyncClient(transport=transport, base_url="http://gateway.test/v1") as http:
        task = asyncio.create_task(http.post("/chat/completions", json=CHAT))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert lim.stats()["in_flight"] == 0
    assert breaker.stats()["state"] == "closed"


def by_model(
    replies: dict[str, httpx2.Response | Exception],
) -> tuple[Callable[[httpx2.Request], httpx2.Response], list[str]]:
    """A handler answering (or raising) by the model asked for, and the models asked in order."""
    asked: list[str] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        model = json.loads(request.content)["model"]
        asked.append(model)
        reply = replies[model]
        if isinstance(reply, Exception):
            raise type(reply)(*reply.args)  # a fresh one each time, as a real transport raises
        return reply

    return handle, asked


async def test_a_model_still_failing_after_its_retries_hands_over_to_its_fallback() -> None:
    handle, asked = by_model({"gpt-4.1": httpx2.Response(429), "deepseek-v3.2": ok()})
    fallbacks = {"gpt-4.1": ["deepseek-v3.2"]}
    async with client(handle, retry=FAST, fallback_models=fallbacks) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-holysheep-model"] == "deepseek-v3.2"
    assert asked == ["gpt-4.1"] * FAST.max_attempts + ["deepseek-v3.2"]


async def test_an_open_breaker_sends_straight_to_the_fallback() -> None:
    breakers = hs.KeyedBreaker(failure_threshold=1, recovery_timeout=30.0)
    handle, asked = by_model({"gpt-4.1": httpx2.Response(500), "deepseek-v3.2": ok()})
    fallbacks = {"gpt-4.1": ["deepseek-v3.2"]}
    async with client(handle, retry=hs.RetryPolicy(max_attempts=1), breaker=breakers, fallback_models=fallbacks) as http:
        assert (await http.post("/chat/completions", json=CHAT)).headers["x-holysheep-model"] == "deepseek-v3.2"
        assert breakers["gpt-4.1"].state == "open" and breakers["deepseek-v3.2"].state == "closed"
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 200
    assert asked == ["gpt-4.1", "deepseek-v3.2", "deepseek-v3.2"]


async def test_the_last_models_failure_is_the_answer() -> None:
    handle, asked = by_model({"gpt-4.1": httpx2.Response(503), "deepseek-v3.2": httpx2.Response(503)})
    async with client(handle, retry=hs.RetryPolicy(max_attempts=1), fallback_models={"gpt-4.1": ["deepseek-v3.2"]}) as http:
        response = await http.post("/chat/completions", json=CHAT)
    assert (response.status_code, response.headers["x-holysheep-model"]) == (503, "deepseek-v3.2")
    assert asked == ["gpt-4.1", "deepseek-v3.2"]


async def test_a_breaker_per_model_keeps_one_failing_model_from_stopping_the_others() -> None:
    breakers = hs.KeyedBreaker(failure_threshold=1, recovery_timeout=30.0)
    handle, asked = by_model({"gpt-4.1": httpx2.Response(500), "deepseek-v3.2": ok()})
    async with client(handle, retry=hs.RetryPolicy(max_attempts=1), breaker=breakers) as http:
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 500
        with pytest.raises(hs.CircuitOpenError):
            await http.post("/chat/completions", json=CHAT)
        assert (await http.post("/chat/completions", json={**CHAT, "model": "deepseek-v3.2"})).status_code == 200
    assert asked == ["gpt-4.1", "deepseek-v3.2"]


class SlowFirstConnection(httpx2.AsyncBaseTransport, httpx2.BaseTransport):
    """A transport whose first request waits a while for its connection before writing the body, as
    one does in a pool busy with a burst, and that logs when each body arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def _waits(self) -> float:
        return 0.0 if self.arrivals else 0.3

    def _arrived(self, body: bytes) -> httpx2.Response:
        self.arrivals.append(time.monotonic())
        return httpx2.Response(200, content=body)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(self._waits())
        return self._arrived(b"".join([chunk async for chunk in request.stream]))  # type: ignore[union-attr]

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        time.sleep(self._waits())
        return self._arrived(b"".join(request.stream))  # type: ignore[union-attr]


async def uploaded(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize("streamed", [False, True], ids=["json body", "streamed upload"])
async def test_an_admission_counts_from_when_its_body_was_sent(streamed: bool) -> None:
    """A server counts a request when it arrives: one that waited for its connection must not give its
    place in the window back before the server does."""
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=1.0)])
    slow = SlowFirstConnection()
    async with httpx2.AsyncClient(transport=hs.Transport(lim, inner=slow), base_url="http://gateway.test/v1") as http:
        for _ in range(2):
            if streamed:
                response = await http.post("/upload", content=uploaded(b"baa ", b"baa"))
            else:
                response = await http.post("/chat/completions", json=CHAT)
    assert slow.arrivals[1] - slow.arrivals[0] >= 1.0
    echoed = response.content if streamed else json.loads(response.content)
    assert echoed == (b"baa baa" if streamed else CHAT)


def test_a_blocking_admission_counts_from_when_its_body_was_sent() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=1.0)])
    slow = SlowFirstConnection()
    with httpx2.Client(transport=hs.Transport(lim, inner=slow), base_url="http://gateway.test/v1") as http:
        for _ in range(2):
            http.post("/chat/completions", json=CHAT)
    assert slow.arrivals[1] - slow.arrivals[0] >= 1.0


# --- streamed events the SDK could not parse (issue 15: json.JSONDecodeError out of the consumer's loop) ---

#: Streams as servers send them, good and broken, with each kind of line end.
EVENT_STREAMS = [
    b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n',
    b'data: {"a": 1}\r\n\r\n: keep-alive\r\n\r\nevent: delta\ndata: {"b":\ndata: 2}\rid: 4\r\r',
    b'data: {"a": 1}\n\ndata: {not json\n\ndata: {"b": 2}\n\n',
    b'data: {"a": 1}\r\rdata: ping\r\r',
    b'data: {"a": 1}\n\ndata: \xff\xfe\n\n',
    b'event: error\ndata: <html>502 Bad Gateway</html>\n\n',
    b"retry: 100\n\n",
    b'retry: soon\n\ndata: {"a": 1}\n\n',
    b'id: 7\ndata: {"a": 1}\n\n\n',
    b'data: [DONE]\n\ndata: {not json, but after the end\n\n',
    b'data: {"a": 1}\n\ndata: {"cut off',
    b'data: {"a": 1}\n\n: a comment, then a line never ended',
]


def sdk_reading(chunks: list[bytes]) -> tuple[list[Any], BaseException | None]:
    """What the openai SDK's stream makes of ``chunks``: the data of each event up to ``[DONE]``, and
    the error that ended its reading, if any."""
    from openai._streaming import SSEDecoder

    payloads: list[Any] = []
    try:
        for event in SSEDecoder().iter_bytes(iter(chunks)):
            if event.data.startswith("[DONE]"):
                break
            payloads.append(event.json())
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        return payloads, exc
    return payloads, None


def checked(chunks: list[bytes]) -> list[bytes]:
    from holysheep.transport._events import EventCheck

    check, passed = EventCheck(), []
    for chunk in chunks:
        passed.append(check.feed(chunk))
        if check.broken:
            return passed
    return [*passed, check.finish()]


def every_split(stream: bytes) -> list[list[bytes]]:
    """The stream in one chunk, cut in two at each byte, and byte by byte."""
    halves = [[stream[:at], stream[at:]] for at in range(1, len(stream))]
    return [[stream], *halves, [stream[at : at + 1] for at in range(len(stream))]]


@pytest.mark.parametrize("stream", EVENT_STREAMS)
def test_a_stream_passes_unchanged_until_an_event_the_sdk_cannot_parse_which_ends_it_with_an_error_event(
    stream: bytes,
) -> None:
    """However the stream is cut into chunks, the SDK reads the same events through the check, and in
    place of the first one it would fail on, an error event it raises as APIError (code invalid_json)."""
    expected, failure = sdk_reading([stream])
    for chunks in every_split(stream):
        passed = checked(chunks)
        if failure is None:
            assert b"".join(passed) == stream
            continue
        payloads, error = sdk_reading(passed)
        assert error is None and payloads[:-1] == expected
        assert payloads[-1]["error"]["code"] == "invalid_json" and "not JSON" in payloads[-1]["error"]["message"]


async def test_a_broken_event_ends_the_stream_and_returns_its_slot_before_the_client_closes_it() -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    sent = [b'data: {"a": 1}\n\n', b"data: {not", b" json\n\n", b'data: {"b": 2}\n\n']

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in sent:
            yield chunk

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})

    async with client(handle, limiter=lim) as http:
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            lines = []
            async for line in response.aiter_lines():
                lines.append(line)
                if line.startswith("data: {\"type\": \"error\""):
                    assert lim.stats()["in_flight"] == 0
    assert lines[:3] == ['data: {"a": 1}', "", "event: error"]
    assert json.loads(lines[3].removeprefix("data: "))["error"]["code"] == "invalid_json"
    assert not any('"b"' in line for line in lines)
