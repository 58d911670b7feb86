"""CircuitBreaker's modes (issue 19): what counts as a failure, a failure rate over a window, slow calls,
the server's Retry-After, manual isolation; end to end against stdlib HTTP servers."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import holysheep as hs
from holysheep.testing import MockGateway
from fakes import Err, FakeStatusError, fail, made_or_refused, succeed


class QuotaError(Exception):
    """A failure of the caller's own kind."""


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"failure_rate": 0.5}, None),
        ({"failure_rate": 0.5, "window_s": 60.0}, None),
        ({"failure_on": QuotaError}, None),
        ({"failure_on": (QuotaError, OSError)}, None),
        ({"failure_on": lambda exc: True}, None),
        ({"failure_rate": 0.0}, Err("failure_rate")),
        ({"failure_rate": 1.5}, Err("failure_rate")),
        ({"failure_rate": "50%"}, Err("failure_rate")),
        ({"failure_rate": 0.5, "window": 0}, Err("window")),
        ({"failure_rate": 0.5, "window": 2_000_000}, Err("window")),
        ({"failure_rate": 0.5, "window": 10, "window_s": 5.0}, Err("window_s")),
        ({"failure_rate": 0.5, "window_s": -1.0}, Err("window_s")),
        ({"failure_rate": 0.5, "minimum_calls": 0}, Err("minimum_calls")),
        ({"slow_call_s": 0}, Err("slow_call_s")),
        ({"slow_call_s": "1"}, Err("slow_call_s")),
        ({"failure_on": "TimeoutError"}, Err("failure_on")),
        ({"failure_on": (QuotaError, 3)}, Err("failure_on")),
        ({"failure_on": ()}, Err("failure_on")),
        ({"key": "team-a"}, Err("backend")),
        ({"backend": "redis://127.0.0.1", "key": "team-a"}, Err("backend")),
    ],
)
def test_the_new_settings_are_checked_at_construction(settings: dict[str, Any], expected: Err | None) -> None:
    made_or_refused(hs.CircuitBreaker, settings, expected)


def test_failure_on_classes_decide_what_counts_and_the_rest_counts_as_the_service_answering() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2, failure_on=QuotaError)
    fail(breaker, QuotaError())
    fail(breaker, FakeStatusError(503))  # not a failure here: it ends the streak
    fail(breaker, QuotaError())
    assert breaker.state == "closed"
    fail(breaker, QuotaError())
    assert breaker.state == "open"


def test_failure_on_a_predicate_can_count_what_the_table_calls_a_caller_bug() -> None:
    # issue 19: NotImplementedError was always neutral, with no way to say otherwise
    breaker = hs.CircuitBreaker(failure_threshold=1, failure_on=lambda exc: isinstance(exc, NotImplementedError))
    fail(breaker, NotImplementedError())
    assert breaker.state == "open"


async def test_cancellation_never_counts_even_when_failure_on_says_everything_does() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1, failure_on=lambda exc: True)

    @breaker
    async def hangs() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(hangs())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "closed"


def test_a_failure_rate_opens_it_once_the_minimum_calls_were_seen() -> None:
    breaker = hs.CircuitBreaker(failure_rate=0.5, window=10, minimum_calls=4)
    for _ in range(3):
        fail(breaker)
    assert breaker.state == "closed", "3 failures of 3 calls: under the minimum of 4"
    assert breaker.stats()["window"] == (3, 3)
    succeed(breaker)
    assert breaker.state == "open", "3 of 4 calls failed"


def test_with_only_a_failure_rate_a_streak_below_the_rate_does_not_open_it() -> None:
    breaker = hs.CircuitBreaker(failure_rate=0.5, window=20, minimum_calls=20)
    assert breaker.failure_threshold is None
    for _ in range(12):
        succeed(breaker)
    for _ in range(8):
        fail(breaker)
    assert breaker.state == "closed", "8 consecutive failures, 40% of the window"
    assert "failure_rate=0.5 over 20 calls" in repr(breaker)


def test_a_time_window_counts_only_recent_calls() -> None:
    breaker = hs.CircuitBreaker(failure_rate=0.5, window_s=0.2, minimum_calls=2)
    fail(breaker)
    time.sleep(0.3)
    succeed(breaker)
    assert breaker.stats()["window"] == (1, 0), "the failure left the 0.2 s window"
    assert breaker.window_s == pytest.approx(0.2)


def test_a_slow_success_counts_as_a_failure() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2, slow_call_s=0.05)

    @breaker
    def slow() -> str:
        time.sleep(0.08)
        return "late"

    assert slow() == "late", "the caller still gets its answer"
    assert slow() == "late"
    assert breaker.state == "open"
    assert breaker.stats()["slow_calls"] == 2


def test_retry_after_on_a_503_opens_it_at_once_for_that_long() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0)
    fail(breaker, FakeStatusError(503, {"retry-after": "7"}))
    assert breaker.state == "open", "one answer saying how long it is away"
    with pytest.raises(hs.CircuitOpenError) as info:
        succeed(breaker)
    assert 6.9 < info.value.retry_after <= 7.001


def test_retry_after_on_a_429_does_not_open_it_unless_failure_on_counts_429s() -> None:
    busy = FakeStatusError(429, {"retry-after": "3"})
    by_table = hs.CircuitBreaker(failure_threshold=5)
    fail(by_table, busy)
    assert by_table.state == "closed", "a busy gateway is not a broken one: the limiter handles 429s"
    storm = hs.CircuitBreaker(failure_on=lambda exc: getattr(getattr(exc, "response", None), "status_code", 0) == 429)
    fail(storm, busy)
    assert storm.state == "open"
    assert 2.9 < (storm.retry_after or 0) <= 3.001


def test_a_half_open_breaker_with_its_trials_out_says_to_look_again_in_a_second_not_the_recovery_timeout() -> None:
    # issue 19: retry_after was recovery_timeout (here 30 s) although a trial's answer may come any moment
    breaker = hs.CircuitBreaker(recovery_timeout=30.0, half_open_max_calls=1)
    fail(breaker, FakeStatusError(503, {"retry-after-ms": "50"}))
    time.sleep(0.1)
    with breaker:  # the one trial, out
        with pytest.raises(hs.CircuitOpenError) as info:
            succeed(breaker)
    assert info.value.retry_after == 1.0
    assert breaker.state == "closed", "the trial succeeded"


def test_isolate_holds_it_open_until_reset_and_both_are_announced() -> None:
    changes: list[tuple[str, str]] = []
    breaker = hs.CircuitBreaker(recovery_timeout=0.01, on_state_change=lambda b, old, new: changes.append((old, new)))
    breaker.isolate()
    time.sleep(0.05)
    assert (breaker.state, breaker.isolated) == ("open", True)
    with pytest.raises(hs.CircuitOpenError) as info:
        succeed(breaker)
    assert info.value.retry_after == float("inf")
    assert "until reset()" in str(info.value)
    breaker.reset()
    assert succeed(breaker) == "ok"
    assert changes == [("closed", "open"), ("open", "closed")]


def test_reset_closes_an_open_breaker_and_forgets_the_streak() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2)
    fail(breaker)
    breaker.reset()
    fail(breaker)
    assert breaker.state == "closed"
    fail(breaker)
    breaker.reset()
    assert breaker.state == "closed"


async def test_async_calls_through_one_breaker_run_at_once() -> None:
    breaker = hs.CircuitBreaker(failure_rate=0.5, window=10, slow_call_s=5.0)
    running = 0
    most = 0

    @breaker
    async def call() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(20)))
    assert most == 20, "no lock held across the call"
    assert time.monotonic() - started < 1.0


def test_keyed_breakers_take_the_new_settings_for_every_key() -> None:
    breakers = hs.KeyedBreaker(failure_rate=0.5, window=4, minimum_calls=2)
    assert breakers["gpt-4.1"].failure_rate == 0.5
    with pytest.raises(hs.ConfigError) as info:
        hs.KeyedBreaker(backend=None, key=lambda: "x")  # key= is the key function; backend is refused
    assert info.value.field == "backend"


# --- end to end: a stdlib server answering 503 with Retry-After, then recovering -------------------


class _Outage(http.server.BaseHTTPRequestHandler):
    """503 with Retry-After while `down` is set, 200 otherwise; counts what it was sent."""

    down = threading.Event()
    retry_after = "1"
    seen: list[int] = []

    def do_GET(self) -> None:
        status = 503 if self.down.is_set() else 200
        self.seen.append(status)
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stdlib server of ``handler`` on a free loopback port, in a thread; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def outage_server() -> Iterator[str]:
    _Outage.seen = []
    _Outage.down.clear()
    yield from serving(_Outage)


def test_an_outage_with_retry_after_opens_the_breaker_for_that_long_then_trials_close_it(outage_server: str) -> None:
    breaker = hs.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0, half_open_max_calls=2)

    @breaker
    def get() -> int:
        with urllib.request.urlopen(outage_server, timeout=5) as answer:
            return int(answer.status)

    assert get() == 200
    _Outage.down.set()
    with pytest.raises(urllib.error.HTTPError) as refused:
        get()
    refused.value.close()
    assert breaker.state == "open", "one 503 saying Retry-After: 1"
    sent = len(_Outage.seen)
    with pytest.raises(hs.CircuitOpenError) as info:
        get()
    assert 0.5 < info.value.retry_after <= 1.001, "the server's 1 s, not the 30 s recovery timeout"
    assert len(_Outage.seen) == sent, "failing fast sends nothing"
    _Outage.down.clear()
    time.sleep(1.05)
    assert breaker.state == "half_open"
    assert get() == 200 and get() == 200
    assert breaker.state == "closed"


# --- end to end: slow answers count as failures --------------------------------------------------


class _Slow(http.server.BaseHTTPRequestHandler):
    """200 after `delay` seconds; counts what it was sent."""

    delay = 0.0
    seen: list[float] = []

    def do_GET(self) -> None:
        self.seen.append(time.monotonic())
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    _Slow.seen, _Slow.delay = [], 0.0
    yield from serving(_Slow)


def test_answers_slower_than_slow_call_s_open_the_breaker_though_each_succeeded(slow_server: str) -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2, recovery_timeout=30.0, slow_call_s=0.1)

    @breaker
    def get() -> int:
        with urllib.request.urlopen(slow_server, timeout=5) as answer:
            return int(answer.status)

    assert get() == 200 and breaker.state == "closed", "a fast answer is a success"
    _Slow.delay = 0.2
    assert get() == 200 and get() == 200, "slow answers still return"
    assert breaker.state == "open", "two answers over 0.1 s"
    sent = len(_Slow.seen)
    with pytest.raises(hs.CircuitOpenError):
        get()
    assert len(_Slow.seen) == sent, "failing fast sends nothing"


async def test_slow_answers_through_the_openai_client_open_its_breaker() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2, recovery_timeout=30.0, slow_call_s=0.1)
    with MockGateway(latency=0.2) as gw:
        client = hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", breaker=breaker)
        try:
            for _ in range(2):
                await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
            assert breaker.state == "open", "two answers over 0.1 s, each a success"
            with pytest.raises(hs.CircuitOpenError):
                await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
            assert len(gw.admission_log()) == 2, "failing fast sends nothing"
        finally:
            await client.close()
