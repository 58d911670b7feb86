"""holysheep.testing.MockGateway, driven by the real openai SDK and by plain HTTP over 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import holysheep
import openai
import pytest
from holysheep.testing import AdmissionRecord, Faults, MockGateway

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]  # 11 characters: 3 tokens + 3 framing


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    with MockGateway() as gw:
        yield gw


def request(
    gw: MockGateway, method: str, path: str, body: Any = None, key: str | None = "hs_test"
) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client, bypassing any SDK retries."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def chat(gw: MockGateway, key: str = "hs_test") -> tuple[int, dict[str, str], bytes]:
    return request(gw, "POST", "/v1/chat/completions", {"model": "gpt-4.1", "messages": MESSAGES}, key)


# --- the openai SDK parses everything --------------------------------------------------------------------


def test_sync_sdk_parses_chat_embeddings_and_models(gateway: MockGateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key="hs_test", max_retries=0) as client:
        completion = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert completion.choices[0].message.content == " ".join(["baa"] * 16)
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 16)
        assert completion.usage.total_tokens == 22

        short = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_tokens=3)
        assert short.choices[0].finish_reason == "length"
        assert short.choices[0].message.content == "baa baa baa"

        embeddings = client.embeddings.create(model="text-embedding-3-small", input=["abcd", "abcdefgh"])
        assert [len(item.embedding) for item in embeddings.data] == [1536, 1536]
        assert embeddings.usage.prompt_tokens == 1 + 2
        again = client.embeddings.create(model="text-embedding-3-small", input="abcd", dimensions=8)
        assert len(again.data[0].embedding) == 8

        assert "gpt-4.1" in [model.id for model in client.models.list()]
    tokens = [record.tokens for record in gateway.admission_log()]
    assert tokens == [22, 9, 3, 1, 0]


def test_embeddings_are_deterministic_in_both_encodings(gateway: MockGateway) -> None:
    body = {"model": "e", "input": "same text", "dimensions": 4}
    _, _, first = request(gateway, "POST", "/v1/embeddings", {**body, "encoding_format": "float"})
    with openai.OpenAI(base_url=gateway.base_url, api_key="hs_test", max_retries=0) as client:
        # The SDK asks for base64 and decodes it.
        decoded = client.embeddings.create(model="e", input="same text", dimensions=4).data[0].embedding
    floats = json.loads(first)["data"][0]["embedding"]
    assert decoded == pytest.approx(floats, rel=1e-6)
    assert sum(x * x for x in floats) == pytest.approx(1.0, rel=1e-5)


async def test_async_sdk_streams_chunks_then_usage(gateway: MockGateway) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="hs_test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        completion = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "baa baa baa baa"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (6, 4)
    assert completion.usage is not None and completion.usage.total_tokens == 22


def test_sync_sdk_streams_without_usage_unless_asked(gateway: MockGateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key="hs_test", max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "baa baa"


# --- limits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rpm", "tpm"), [(25, 100_000), (1_000, 400)], ids=["requests_bind", "tokens_bind"])
def test_load_beyond_the_limits_never_exceeds_any_window(rpm: int, tpm: int) -> None:
    window_s = 0.4
    with MockGateway(rpm=rpm, tpm=tpm, window_s=window_s) as gw:
        deadline = time.monotonic() + 1.3

        def hammer(key: str) -> None:
            for _ in range(3_000):  # bounded in count and in time
                if time.monotonic() > deadline:
                    return
                chat(gw, key)

        workers = [threading.Thread(target=hammer, args=(key,)) for key in ["hs_a", "hs_a", "hs_a", "hs_b"]]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        log = gw.admission_log()
        peaks = [gw.peak_admitted(key=key) for key in ("hs_a", "hs_b")]
        token_peaks = [gw.peak_admitted("tokens", key=key) for key in ("hs_a", "hs_b")]
    # No window of either key went over a limit (each request counts 22 tokens).
    assert all(peak <= min(rpm, tpm // 22) for peak in peaks)
    assert all(peak <= tpm for peak in token_peaks)
    assert max_in_any_window(log, "hs_a", window_s) == peaks[0]
    # Key a's three clients went past its limit, so its window was full: the gateway admits the whole limit.
    assert any(record.status == 429 and record.key == "hs_a" for record in log)
    assert peaks[0] == min(rpm, tpm // 22)
    assert log[-1].at - log[0].at > 2 * window_s


def max_in_any_window(log: list[AdmissionRecord], key: str, window_s: float) -> int:
    """peak_admitted's check redone in Python from the records' float times (1 µs of slack at the edge)."""
    times = [record.at for record in log if record.admitted and record.key == key]
    return max(sum(1 for t in times if start <= t < start + window_s - 1e-6) for start in times)


def test_429_carries_retry_after_and_rate_limit_headers() -> None:
    with MockGateway(rpm=2, tpm=1000, window_s=2.0) as gw:
        assert [chat(gw)[0] for _ in range(2)] == [200, 200]
        status, headers, body = chat(gw)
    assert status == 429
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    retry_ms = int(headers["retry-after-ms"])
    assert 0 < retry_ms <= 2000
    assert int(headers["retry-after"]) == -(-retry_ms // 1000)  # whole seconds, rounded up
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - 2 * 22)
    assert headers["x-ratelimit-reset-tokens"].endswith("s")


def test_sdk_raises_rate_limit_error_with_the_headers() -> None:
    with MockGateway(rpm=1, window_s=5.0) as gw:
        with openai.OpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0) as client:
            client.chat.completions.create(model="m", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="m", messages=MESSAGES)
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < float(refused.value.response.headers["retry-after-ms"]) <= 5000


def test_sdk_retry_waits_the_time_the_429_names() -> None:
    window_s = 0.6
    with MockGateway(rpm=1, window_s=window_s) as gw:
        with openai.OpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=2) as client:
            client.chat.completions.create(model="m", messages=MESSAGES)
            client.chat.completions.create(model="m", messages=MESSAGES)
        first, refused, retried = gw.admission_log()
    # One 429 only: the SDK slept for retry-after-ms (what was left of the window), not its own shorter
    # backoff, and then retried promptly.
    assert (first.status, refused.status, retried.status) == (200, 429, 200)
    assert first.at + window_s <= retried.at < first.at + window_s + 1.0


def test_package_reaches_the_gateway_as_hs_testing() -> None:
    assert holysheep.testing.MockGateway is MockGateway


def test_concurrency_limit_refuses_requests_beyond_it() -> None:
    with MockGateway(concurrency=2, latency=0.8) as gw:
        answered: list[int] = []
        slow = [threading.Thread(target=lambda: answered.append(chat(gw)[0])) for _ in range(2)]
        for thread in slow:
            thread.start()
        deadline = time.monotonic() + 5
        while len(gw.admission_log()) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        # Both slots are held for the 0.8 s latency of the first two.
        refused = [chat(gw)[0] for _ in range(2)]
        for thread in slow:
            thread.join()
    assert (answered, refused) == ([200, 200], [429, 429])


def test_insufficient_quota_once_the_credit_is_spent() -> None:
    with MockGateway(credit_tokens=50) as gw:
        with openai.OpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0) as client:
            client.chat.completions.create(model="m", messages=MESSAGES)
            client.chat.completions.create(model="m", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="m", messages=MESSAGES)
    assert refused.value.code == "insufficient_quota"


def test_quota_reports_minute_hour_and_day() -> None:
    with MockGateway(rpm=10, tpm=1000, rpd=100, credit_tokens=500) as gw:
        chat(gw)
        status, _, body = request(gw, "GET", "/v1/quota")
    quota = json.loads(body)
    assert status == 200
    assert quota["requests"]["minute"] == {
        "limit": 10,
        "remaining": 8,
        "reset_seconds": pytest.approx(60, abs=1),
    }
    assert quota["requests"]["hour"] is None
    assert quota["requests"]["day"]["remaining"] == 98
    assert quota["tokens"]["minute"]["remaining"] == 1000 - 22
    assert quota["credit"] == {"limit_tokens": 500, "remaining_tokens": 500 - 22}


def test_missing_or_unknown_key_gets_401() -> None:
    with MockGateway(api_keys=["hs_good"]) as gw:
        assert request(gw, "GET", "/v1/models", key=None)[0] == 401
        with openai.OpenAI(base_url=gw.base_url, api_key="hs_wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
        assert request(gw, "GET", "/v1/models", key="hs_good")[0] == 200
        log = gw.admission_log()
    assert [(r.status, r.admitted, r.key) for r in log] == [
        (401, False, ""),
        (401, False, ""),
        (200, True, "hs_good"),
    ]
    with MockGateway(api_keys="hs_only") as gw:
        assert [request(gw, "GET", "/v1/models", key=key)[0] for key in ("hs_only", "h")] == [200, 401]


# --- faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "raised"),
    [
        (Faults(server_error=1.0), openai.InternalServerError),
        (Faults(bad_gateway=1.0), openai.InternalServerError),
        (Faults(unavailable=1.0), openai.InternalServerError),
        (Faults(reset=1.0), openai.APIConnectionError),
        (Faults(malformed=1.0), json.JSONDecodeError),
    ],
)
def test_each_fault_does_what_it_says(faults: Faults, raised: type[Exception]) -> None:
    with MockGateway(faults=faults) as gw:
        with openai.OpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0) as client:
            with pytest.raises(raised):
                client.chat.completions.create(model="m", messages=MESSAGES)
        (record,) = gw.admission_log()
    expected_status = {
        "server_error": 500,
        "bad_gateway": 502,
        "unavailable": 503,
        "reset": 0,
        "malformed": 200,
    }
    assert record.fault is not None and record.admitted
    assert record.status == expected_status[record.fault]


def test_a_request_that_never_answers_is_ended_by_the_client_timeout() -> None:
    with MockGateway(faults=Faults(timeout=1.0)) as gw:
        with openai.OpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=0, timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="m", messages=MESSAGES)
            assert 0.3 <= time.monotonic() - started < 2.0
        assert [(r.status, r.fault) for r in gw.admission_log()] == [(0, "timeout")]


def test_fault_fractions_are_reproducible_with_the_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with MockGateway(faults=Faults(server_error=0.3, unavailable=0.2), seed=seed) as gw:
            return [chat(gw)[0] for _ in range(40)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 500, 503} == set(first)


def test_outage_starts_and_ends_on_time() -> None:
    with MockGateway(faults=Faults(outage=(0.3, 0.7))) as gw:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            status, headers, _ = chat(gw)
            if status == 503:
                assert 0 < float(headers["retry-after-ms"]) <= 400
            time.sleep(0.02)
        log = gw.admission_log()
    in_outage = [0.3 <= record.at < 0.7 for record in log]
    assert [record.fault == "outage" for record in log] == in_outage
    assert [record.status == 503 for record in log] == in_outage
    assert any(in_outage) and not all(in_outage) and not in_outage[-1]


# --- life cycle -----------------------------------------------------------------------------------------


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_start_stop_restart_on_the_same_port_leaves_no_thread() -> None:
    baseline = native_threads()
    gw = MockGateway()
    with gw:
        port = gw.port
        assert chat(gw)[0] == 200
        assert native_threads() > baseline
    assert not gw.running
    gw.stop()  # again: nothing happens
    assert native_threads() == baseline
    assert len(gw.admission_log()) == 1  # the last run's log outlives stop()
    with gw:
        assert gw.port == port and gw.base_url == f"http://127.0.0.1:{port}/v1"
        assert chat(gw)[0] == 200
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            MockGateway(port=port).start()
    assert native_threads() == baseline


def test_several_gateways_serve_at_once() -> None:
    with MockGateway(rpm=1) as strict, MockGateway() as open_:
        assert strict.port != open_.port
        assert [chat(strict)[0], chat(strict)[0]] == [200, 429]
        assert [chat(open_)[0], chat(open_)[0]] == [200, 200]


EXIT_SCRIPTS = {
    "stopped_by_atexit": "from holysheep.testing import MockGateway\ngw = MockGateway().start()\n",
    "dropped_at_finalization": (
        "from holysheep._holysheep import MockGatewayConfig, MockGatewayServer\n"
        "server = MockGatewayServer(MockGatewayConfig())\n"
    ),
    "with_a_request_hanging": (
        "import socket\nfrom holysheep.testing import Faults, MockGateway\n"
        "gw = MockGateway(faults=Faults(timeout=1.0)).start()\n"
        "s = socket.create_connection(('127.0.0.1', gw.port))\n"
        "s.sendall(b'GET /v1/models HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer k\\r\\n\\r\\n')\n"
    ),
}


@pytest.mark.parametrize("script", EXIT_SCRIPTS.values(), ids=EXIT_SCRIPTS.keys())
def test_interpreter_exits_cleanly_with_a_gateway_running(script: str) -> None:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stderr) == (0, "")


# --- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rpm": 0}, "rpm"),
        ({"tpm": -5}, "tpm"),
        ({"window_s": -1.0}, "window_s"),
        ({"window_s": 0.0}, "window_s"),
        ({"latency": (0.5, 0.1)}, "latency"),
        ({"latency": float("nan")}, "latency"),
        ({"faults": Faults(timeout=2.0)}, "faults.timeout"),
        ({"faults": Faults(timeout=0.6, reset=0.6)}, "faults"),
        ({"faults": Faults(outage=(3.0, 1.0))}, "faults.outage"),
        ({"api_keys": []}, "api_keys"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"credit_tokens": 0}, "credit_tokens"),
        ({"concurrency": -1}, "concurrency"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(holysheep.ConfigError) as refused:
        MockGateway(**kwargs)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")
    assert isinstance(refused.value, ValueError)


def test_bad_port_is_a_config_error_at_start() -> None:
    with pytest.raises(holysheep.ConfigError, match="port"):
        MockGateway(port=70_000).start()


# --- the command line -----------------------------------------------------------------------------------


def test_cli_mock_server_serves_until_interrupted() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "holysheep", "mock-server", "--rpm", "1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert "rpm=1" in banner
        port = int(banner.split("http://127.0.0.1:")[1].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(2):
            connection.request("GET", "/v1/models", headers={"Authorization": "Bearer hs_cli"})
            connection.getresponse().read()
        connection.close()
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=10)
    finally:
        server.kill()
    assert server.returncode == 0
    assert "2 requests, 1 admitted, 1 answered 429" in out


def test_cli_reports_bad_config_with_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    from holysheep.cli import main

    assert main(["mock-server", "--rpm", "0", "--port", "0"]) == 2
    assert "rpm: must be at least 1" in capsys.readouterr().err
