"""OpenTelemetry and Prometheus: GenAI client metrics and a span per request through the transport
(checked against an InMemoryMetricReader and the MockGateway's log), the limiters' ``holysheep.*``
metrics agreeing with ``stats()``, Prometheus text scraped over 127.0.0.1, and nothing recorded (one
flag checked) when not instrumented."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import holysheep as hs
from holysheep.metrics import _hook, uninstrument
from holysheep.testing import Faults, MockGateway

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


class Telemetry:
    """An SDK meter and tracer provider whose metrics and spans the test reads."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer_provider = tracer_provider

    def metrics(self) -> dict[str, Any]:
        """Each metric by name, as collected now (none before anything was recorded)."""
        data = self.reader.get_metrics_data()
        if data is None:
            return {}
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def points(self, name: str) -> list[Any]:
        metric = self.metrics().get(name)
        return [] if metric is None else list(metric.data.data_points)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    seen = Telemetry()
    yield seen
    uninstrument()
    seen.meter_provider.shutdown()


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    with MockGateway(latency=0.002) as gw:
        yield gw


def scrape(port: int) -> str:
    """The Prometheus text served on 127.0.0.1:``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
    return text


def value_by(points: list[Any], attribute: str) -> dict[str, float]:
    return {point.attributes[attribute]: point.value for point in points}


def test_nothing_is_imported_or_recorded_until_instrumented() -> None:
    code = (
        "import sys, holysheep, holysheep.transport\n"
        "from holysheep.metrics import _hook\n"
        "assert _hook.recorder is None\n"
        "heavy = {'opentelemetry', 'prometheus_client', 'holysheep.metrics._recorder'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_requests_are_recorded_in_the_genai_conventions(telemetry: Telemetry, gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(rpm=600, tpm=100_000)
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=lim) as client:
        for _ in range(3):
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        await client.embeddings.create(model="text-embedding-3-small", input="one text")

    metrics = telemetry.metrics()
    usage, duration = metrics["gen_ai.client.token.usage"], metrics["gen_ai.client.operation.duration"]
    assert (usage.unit, duration.unit) == ("{token}", "s")
    chat_input = [p for p in usage.data.data_points if p.attributes["gen_ai.operation.name"] == "chat" and p.attributes["gen_ai.token.type"] == "input"]
    assert len(chat_input) == 1
    attributes = dict(chat_input[0].attributes)
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.token.type": "input",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.response.model": "gpt-4.1",
        "server.address": "127.0.0.1",
        "server.port": gateway.port,
    }
    log = gateway.admission_log()
    chat_log = [record for record in log if record.endpoint == "/v1/chat/completions"]
    assert chat_input[0].count == len(chat_log) == 3
    token_types = {(p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.token.type"]): p.sum for p in usage.data.data_points}
    assert token_types[("chat", "input")] + token_types[("chat", "output")] == sum(record.tokens for record in chat_log)
    assert ("embeddings", "output") not in token_types
    assert sum(p.count for p in duration.data.data_points) == len(log) == 4
    assert {p.attributes["gen_ai.operation.name"] for p in duration.data.data_points} == {"chat", "embeddings"}
    assert list(usage.data.data_points)[0].explicit_bounds[:3] == (1, 4, 16)

    spans = telemetry.spans.get_finished_spans()
    assert [span.name for span in spans] == ["chat gpt-4.1"] * 3 + ["embeddings text-embedding-3-small"]
    first = spans[0].attributes or {}
    assert first["holysheep.rate_limiting.result"] == "admitted"
    assert first["gen_ai.usage.input_tokens"] > 0 and first["holysheep.rate_limiting.wait_s"] == 0.0


async def test_a_failed_request_records_its_error_type(telemetry: Telemetry) -> None:
    with MockGateway(rpm=1, latency=0.0) as gateway:
        hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
        async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, retry=hs.RetryPolicy(max_attempts=1)) as client:
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    errors = [p.attributes.get("error.type") for p in telemetry.points("gen_ai.client.operation.duration")]
    assert sorted(errors, key=str) == ["429", None]
    assert telemetry.metrics()["holysheep.server.remaining"] is not None
    assert value_by(telemetry.points("holysheep.server.remaining"), "holysheep.limit.unit")["requests"] == 0


async def test_the_decision_and_the_wait_are_on_the_span(telemetry: Telemetry, gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=2, limits=[hs.Limit(0.0005, per="day", unit="usd")])
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=lim, prices={"gpt-4.1": 8.0}) as client:
        await asyncio.gather(*(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=5) for _ in range(3)))
        with pytest.raises(hs.BudgetExceeded):
            for _ in range(20):
                await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=5)
        spans = telemetry.spans.get_finished_spans()
        results = [(span.attributes or {})["holysheep.rate_limiting.result"] for span in spans]
        assert results[:3].count("waited") == 1 and results[-1] == "budget"
        waited = next(span for span in spans if (span.attributes or {})["holysheep.rate_limiting.result"] == "waited")
        assert 0.3 < (waited.attributes or {})["holysheep.rate_limiting.wait_s"] < 1.5
        queued = {p.attributes["holysheep.rate_limiting.result"]: p.count for p in telemetry.points("holysheep.rate_limiting.request.time_in_queue")}
        assert queued == {"waited": results.count("waited")}, "only those that queued, as ASP.NET Core's time_in_queue"


@pytest.mark.parametrize("limited", [True, False], ids=["with a limiter", "without"])
async def test_a_streamed_answer_is_recorded_when_its_body_ends_with_the_usage_of_its_last_event(
    telemetry: Telemetry, gateway: MockGateway, limited: bool
) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    lim = hs.HolySheepRateLimiter(rpm=600, tpm=100_000) if limited else None
    async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=lim) as client:
        stream = await client.chat.completions.create(
            model="gpt-4.1", messages=MESSAGES, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
        assert telemetry.points("gen_ai.client.operation.duration") == [], "not at its headers"
        async for _ in stream:
            await asyncio.sleep(0.05)
    [duration] = telemetry.points("gen_ai.client.operation.duration")
    assert duration.count == 1 and duration.sum >= 0.05 * 3, "the whole stream's time, the reader's pace included"
    [record] = gateway.admission_log()
    usage = {p.attributes["gen_ai.token.type"]: p.sum for p in telemetry.points("gen_ai.client.token.usage")}
    assert usage["input"] + usage["output"] == record.tokens
    [span] = telemetry.spans.get_finished_spans()
    assert (span.attributes or {})["gen_ai.response.model"] == "gpt-4.1"


async def test_a_requests_points_and_span_belong_to_the_context_it_started_in_even_when_its_stream_ends_elsewhere(
    telemetry: Telemetry, gateway: MockGateway
) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url) as client:
        with tracer.start_as_current_span("caller") as caller:
            stream = await client.chat.completions.create(
                model="gpt-4.1", messages=MESSAGES, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
        async for _ in stream:  # read after the caller's span ended: another span may be current by then
            await asyncio.sleep(0.02)
    caller_id = caller.get_span_context().span_id
    [duration] = telemetry.points("gen_ai.client.operation.duration")
    assert [exemplar.span_id for exemplar in duration.exemplars] == [caller_id], "the SDK's trace-based exemplar"
    [span] = [span for span in telemetry.spans.get_finished_spans() if span.name == "chat gpt-4.1"]
    assert span.parent is not None and span.parent.span_id == caller_id
    assert caller.end_time is not None and span.start_time is not None and span.end_time is not None
    assert span.start_time < caller.end_time < span.end_time, "dated from the request's start to the stream's end"
    assert abs((span.end_time - span.start_time) / 1e9 - duration.sum) < 1e-3, "one clock for the span and the point"


def test_the_attribute_caches_start_again_once_full() -> None:
    from holysheep.metrics._recorder import CACHED_KINDS, Recorder

    recorder = Recorder()
    first = recorder.target("chat", "127.0.0.1", 80, "model-0")
    assert recorder.target("chat", "127.0.0.1", 80, "model-0") is first, "one per kind of request"
    for n in range(1, CACHED_KINDS + 1):
        recorder.target("chat", "127.0.0.1", 80, f"model-{n}")
    again = recorder.target("chat", "127.0.0.1", 80, "model-0")
    assert again is not first and again.attributes == first.attributes
    assert len(recorder._targets) <= CACHED_KINDS


async def test_streams_abandoned_with_the_garbage_collector_off_still_free_their_slots_and_are_recorded(
    telemetry: Telemetry, gateway: MockGateway
) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    lim = hs.HolySheepRateLimiter(max_concurrency=2)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=lim, acquire_timeout=10) as client:

            async def abandon_each_stream() -> None:
                for _ in range(3):
                    stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=32, stream=True)
                    async for _chunk in stream:
                        break

            await asyncio.wait_for(asyncio.gather(abandon_each_stream(), abandon_each_stream()), timeout=20)
    finally:
        if was_enabled:
            gc.enable()
    assert len(gateway.admission_log()) == 6
    recorded = sum(p.count for p in telemetry.points("gen_ai.client.operation.duration"))
    assert 4 <= recorded <= 6, "each ended stream once; the last two may still be waiting for their end"
    assert lim.stats()["in_flight"] <= 2


def test_an_abandoned_blocking_stream_is_recorded_when_closed_and_once(telemetry: Telemetry, gateway: MockGateway) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    with hs.HolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=hs.HolySheepRateLimiter(max_concurrency=1)) as client:
        stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=64, stream=True)
        next(iter(stream))
        assert telemetry.points("gen_ai.client.operation.duration") == []
        stream.close()
        stream.close()
    [duration] = telemetry.points("gen_ai.client.operation.duration")
    assert duration.count == 1
    assert telemetry.points("gen_ai.client.token.usage") == [], "no usage was read: none is made up"
    assert len(telemetry.spans.get_finished_spans()) == 1


def batch_file(path: Path, chats: int, embeddings: int) -> Path:
    chat = {"model": "gpt-4.1", "messages": MESSAGES, "max_tokens": 4}
    embed = {"model": "text-embedding-3-small", "input": "a document"}
    lines = [{"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions", "body": chat} for n in range(chats)]
    lines += [{"custom_id": f"e{n}", "method": "POST", "url": "/v1/embeddings", "body": embed} for n in range(embeddings)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("awaited", [False, True], ids=["run_batch", "arun_batch"])
async def test_the_batch_engines_requests_are_recorded_as_the_clients_are(
    telemetry: Telemetry, gateway: MockGateway, tmp_path: Path, awaited: bool
) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider)
    requests, output = batch_file(tmp_path / "in.jsonl", chats=5, embeddings=2), tmp_path / "out.jsonl"
    if awaited:
        report = await hs.arun_batch(requests, output, base_url=gateway.base_url, api_key="hs_test")
    else:
        report = hs.run_batch(requests, output, base_url=gateway.base_url, api_key="hs_test")
    assert report.ok == 7
    durations = telemetry.points("gen_ai.client.operation.duration")
    assert {p.attributes["gen_ai.operation.name"]: p.count for p in durations} == {"chat": 5, "embeddings": 2}
    assert all(p.sum > 0 for p in durations)
    log = gateway.admission_log()
    usage = {(p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.token.type"]): p.sum for p in telemetry.points("gen_ai.client.token.usage")}
    assert usage[("chat", "input")] + usage[("chat", "output")] == sum(r.tokens for r in log if r.endpoint == "/v1/chat/completions")
    spans = telemetry.spans.get_finished_spans()
    assert sorted(span.name for span in spans) == ["chat gpt-4.1"] * 5 + ["embeddings text-embedding-3-small"] * 2
    for span in spans:
        attributes = span.attributes or {}
        assert attributes["server.port"] == gateway.port and attributes["http.response.status_code"] == 200
        assert span.start_time is not None and span.end_time is not None and 0 < span.end_time - span.start_time < 10e9


def test_a_batch_request_that_failed_records_its_status_as_its_error_type(telemetry: Telemetry, tmp_path: Path) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider)
    with MockGateway(faults=Faults(server_error=1.0)) as gw:
        report = hs.run_batch(
            batch_file(tmp_path / "in.jsonl", chats=2, embeddings=0), tmp_path / "out.jsonl",
            base_url=gw.base_url, api_key="hs_test", retry=hs.RetryPolicy(max_attempts=1),
        )
    assert report.failed == 2
    [point] = telemetry.points("gen_ai.client.operation.duration")
    assert (point.attributes["error.type"], point.count) == ("500", 2)


async def test_coalescing_is_seen_in_the_metrics_as_in_coalesce_stats(telemetry: Telemetry) -> None:
    hs.instrument(meter_provider=telemetry.meter_provider)
    with MockGateway(embedding_dim=4) as gateway:
        async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, coalesce=hs.Coalesce(max_wait_ms=20)) as client:
            await asyncio.gather(*(client.embeddings.create(model="text-embedding-3-small", input=f"text {n}") for n in range(40)))
            stats = client.coalesce_stats()
            assert stats is not None
            calls = value_by(telemetry.points("holysheep.coalescing.calls"), "holysheep.coalescing.result")
            assert calls == {"merged": 40, "alone": 0, "left": 0}
            [requests] = telemetry.points("holysheep.coalescing.requests")
            assert requests.value == stats["requests"] == len(gateway.admission_log())
            sizes = value_by(telemetry.points("holysheep.coalescing.batch_size.quantile"), "quantile")
            assert sizes == {"0.5": stats["callers_per_request_p50"], "1": stats["callers_per_request_max"]}
            waits = value_by(telemetry.points("holysheep.coalescing.wait.quantile"), "quantile")
            assert waits == {"0.5": stats["wait_s_p50"], "0.99": stats["wait_s_p99"]} and waits["0.5"] > 0


async def test_the_limiters_metrics_agree_with_its_stats(telemetry: Telemetry, gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=3, max_concurrency=4, tpm=50_000)
    hs.instrument(meter_provider=telemetry.meter_provider, limiters={"chat": lim})
    async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=lim) as client:
        await asyncio.gather(*(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(5)))
        with pytest.raises(hs.RateLimitExceeded):
            lim.try_acquire(tokens=60_000)  # never passes: a rejection
        stats = lim.stats()
        metrics = telemetry.metrics()
        requests = metrics["holysheep.rate_limiting.requests"]
        assert requests.unit == "{request}" and requests.data.is_monotonic
        by_result = value_by(list(requests.data.data_points), "holysheep.rate_limiting.result")
        assert by_result == {"admitted": stats["admitted"] - stats["waited"], "waited": stats["waited"], "rejected": 1, "budget": 0}
        assert by_result["admitted"] + by_result["waited"] == 5 == len(gateway.admission_log())
        assert {p.attributes["holysheep.limiter"] for p in requests.data.data_points} == {"chat"}
        tokens = value_by(telemetry.points("holysheep.rate_limiting.tokens"), "holysheep.token.state")
        assert tokens == {"reserved": stats["tokens_reserved"], "settled": stats["tokens_settled"], "refunded": stats["tokens_refunded"]}
        assert tokens["settled"] == sum(record.tokens for record in gateway.admission_log())
        remaining = value_by(telemetry.points("holysheep.rate_limiting.remaining"), "holysheep.limit")
        assert remaining == {name: float(left) for name, left in stats["remaining"].items()}
        assert value_by(telemetry.points("holysheep.rate_limiting.active_request_leases"), "holysheep.limiter") == {"chat": 0}
        assert value_by(telemetry.points("holysheep.rate_limiting.queued_requests"), "holysheep.limiter") == {"chat": 0}
        assert metrics["holysheep.rate_limiting.request.time_in_queue.quantile"].unit == "s"


async def test_shadow_and_breaker_state_are_metrics_too(telemetry: Telemetry, gateway: MockGateway) -> None:
    shadow = hs.HolySheepRateLimiter(max_qps=1, shadow=True)
    breaker = hs.CircuitBreaker(name="gateway")
    hs.instrument(meter_provider=telemetry.meter_provider)
    async with hs.AsyncHolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=shadow, breaker=breaker) as client:
        for _ in range(3):
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        held_back = value_by(telemetry.points("holysheep.rate_limiting.shadow.requests"), "holysheep.rate_limiting.result")
        assert held_back == {"would_wait": 2, "would_wait_for_slot": 0, "would_reject": 0} == {k: shadow.stats()[k] for k in held_back}
        states = {p.attributes["holysheep.breaker.state"]: p.value for p in telemetry.points("holysheep.breaker.state")}
        assert states == {"closed": 1, "open": 0, "half_open": 0}


def test_prometheus_text_is_served_on_loopback(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(rpm=600)
    server = hs.serve_metrics(0, limiters={"chat": lim})
    try:
        with hs.HolySheep(api_key="hs_test", base_url=gateway.base_url, limiter=lim) as client:
            for _ in range(2):
                client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            text = scrape(server.port)
    finally:
        uninstrument()
    assert 'holysheep_rate_limiting_requests_total{holysheep_limiter="chat",holysheep_rate_limiting_result="admitted"} 2.0' in text
    assert 'holysheep_rate_limiting_remaining{holysheep_limit="600 requests per minute",holysheep_limit_unit="requests",holysheep_limiter="chat"} 598.0' in text
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in text
    count = next(line for line in text.splitlines() if line.startswith("gen_ai_client_operation_duration_seconds_count"))
    assert 'gen_ai_operation_name="chat"' in count and count.endswith(" 2.0")
    assert 'gen_ai_client_token_usage_count{' in text and 'gen_ai_token_type="input"' in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=1)


@pytest.mark.parametrize("port", [-1, 70_000, "9464", 1.5])
def test_serve_metrics_refuses_a_bad_port_naming_it(port: Any) -> None:
    with pytest.raises(hs.ConfigError) as err:
        hs.serve_metrics(port)
    assert err.value.field == "port"
    assert _hook.recorder is None


def test_instrumenting_twice_keeps_one_set_of_instruments_and_watches_the_new_limiters(telemetry: Telemetry) -> None:
    first, second = hs.HolySheepRateLimiter(max_qps=5), hs.TokenBucket(rate=5, capacity=5)
    hs.instrument(meter_provider=telemetry.meter_provider, limiters={"first": first})
    hs.instrument(meter_provider=telemetry.meter_provider, limiters={"second": second})
    assert second.try_acquire()
    admitted = {
        p.attributes["holysheep.limiter"]: p.value
        for p in telemetry.points("holysheep.rate_limiting.requests")
        if p.attributes["holysheep.rate_limiting.result"] == "admitted"
    }
    assert admitted == {"first": 0, "second": 1}


def test_two_ports_serve_the_same_metrics(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(rpm=600)
    servers = [hs.serve_metrics(0, limiters={"chat": lim}) for _ in range(2)]
    try:
        assert lim.try_acquire()
        texts = [scrape(server.port) for server in servers]
    finally:
        uninstrument()
    line = 'holysheep_rate_limiting_requests_total{holysheep_limiter="chat",holysheep_rate_limiting_result="admitted"} 1.0'
    assert all(line in text for text in texts)
