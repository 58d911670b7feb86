"""A breaker shared through Redis reports its calls' outcomes without holding up the calls (issue 19):
a failure goes to Redis in the background, so a failing call returns at once even when Redis is
stalled; this process's next call waits for the report (at most the backend's timeouts), so the process
whose failure opens the breaker is refused at that very call, and the change is announced on the
caller's thread."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from fakes import FakeStatusError

COMMAND_TIMEOUT = 0.5


def shared(url: str, on_error: str = "fail_closed", **settings: object) -> hs.CircuitBreaker:
    backend = hs.RedisBackend(url, on_error=on_error, command_timeout=COMMAND_TIMEOUT)  # type: ignore[arg-type]
    return hs.CircuitBreaker(backend=backend, key="reports", **settings)  # type: ignore[arg-type]


def broken() -> None:
    raise FakeStatusError(503)


def fail(breaker: hs.CircuitBreaker) -> None:
    with pytest.raises(FakeStatusError):
        breaker.call_sync(broken)


@contextmanager
def stalled(server: RedisServer) -> Iterator[None]:
    """Redis stopped in its tracks (SIGSTOP): connections stay open, nothing answers."""
    pid = int(server.cli("INFO", "server").split("process_id:")[1].split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_failing_call_does_not_wait_for_its_report_to_a_stalled_redis(redis_server: RedisServer, redis_url: str) -> None:
    breaker = shared(redis_url, on_error="local", failure_threshold=3, recovery_timeout=30.0)
    assert breaker.call_sync(lambda: "fresh") == "fresh"  # the next call decides from a fresh cache
    with stalled(redis_server):
        started = time.monotonic()
        fail(breaker)
        assert time.monotonic() - started < 0.1, "the failing call waited for Redis"
        # The next call waits for the report, no longer than the backend allows one call; then the
        # `local` policy decides, its breaker having counted the failure Redis did not hear.
        started = time.monotonic()
        assert breaker.call_sync(lambda: "passes") == "passes"
        assert time.monotonic() - started < COMMAND_TIMEOUT + 2.0 + 0.5
        assert breaker.stats()["degraded"]


async def test_a_failing_coroutine_does_not_block_the_event_loop_on_a_stalled_redis(
    redis_server: RedisServer, redis_url: str
) -> None:
    breaker = shared(redis_url, on_error="local", failure_threshold=3)

    @breaker
    async def call() -> None:
        raise FakeStatusError(503)

    with stalled(redis_server):
        started = time.monotonic()
        with pytest.raises(FakeStatusError):
            await call()
        assert time.monotonic() - started < 0.1, "the event loop waited for Redis"
        await asyncio.sleep(COMMAND_TIMEOUT + 0.2)  # the report gives up in the background


def test_the_process_whose_failure_opens_it_is_refused_at_its_very_next_call(redis_url: str) -> None:
    changes: list[tuple[str, str, int]] = []
    breaker = shared(
        redis_url,
        failure_threshold=1,
        recovery_timeout=30.0,
        on_state_change=lambda b, old, new: changes.append((old, new, threading.get_ident())),
    )
    fail(breaker)
    with pytest.raises(hs.CircuitOpenError) as refused:
        breaker.call_sync(lambda: None)
    assert 29.0 < refused.value.retry_after <= 30.001
    assert changes == [("closed", "open", threading.get_ident())], "announced on the caller's thread"


def test_failures_reported_in_the_background_reach_the_fleet_in_order(redis_url: str) -> None:
    one, other = shared(redis_url, failure_threshold=3), shared(redis_url, failure_threshold=3)
    for _ in range(3):
        fail(one)
    one.reset()  # after its failures, never before them
    other._core.sync()
    assert one.state == "closed" and other.state == "closed"
    fail(one)
    assert one.stats()["state"] == "closed", "the streak began again at the reset"


def test_threads_deciding_together_after_a_quiet_spell_share_one_reread_of_the_fleets_state(
    redis_server: RedisServer, redis_url: str
) -> None:
    # After a quiet spell a call reads the fleet's state before deciding: once for every thread deciding
    # then, not once each. Redis is held still while they decide, so all come while the read is out.
    threads = 16
    breaker = shared(redis_url)
    time.sleep(0.15)  # quiet: the cache is old enough to be read again before deciding
    redis_server.cli("CONFIG", "RESETSTAT")
    together = threading.Barrier(threads + 1)
    results: list[str] = []

    def call() -> None:
        together.wait()
        results.append(breaker.call_sync(lambda: "passed"))

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    with stalled(redis_server):
        together.wait()
        time.sleep(0.3)
    for worker in workers:
        worker.join(10)
    assert results == ["passed"] * threads
    assert 1 <= redis_server.script_calls() <= 2, f"{redis_server.script_calls()} calls to Redis for {threads} threads"
