"""The fleet breaker's script on the server (issue 19): a function of holysheep's one Functions library
on Redis 7.0+, which a server that lost it (restarted without its data, flushed) gets again without an
error reaching the caller, and the same script by EVALSHA on a server without Functions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from redis_server import RedisServer, cluster_url, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from fakes import FakeStatusError


def shared(url: str, **settings: object) -> hs.CircuitBreaker:
    # fail_closed: an error reaching the breaker reaches its caller.
    backend = hs.RedisBackend(url, on_error="fail_closed", command_timeout=0.5)
    return hs.CircuitBreaker(backend=backend, key="scripts", **settings)  # type: ignore[arg-type]


def fail(breaker: hs.CircuitBreaker) -> None:
    def broken() -> None:
        raise FakeStatusError(503)

    with pytest.raises(FakeStatusError):
        breaker.call_sync(broken)


def breaker_listed(server: RedisServer) -> bool:
    return any(name.startswith("holysheep_") and name.endswith("_breaker") for name in server.cli("FUNCTION", "LIST").split())


def opens_across_flushes(one: hs.CircuitBreaker, other: hs.CircuitBreaker, flush: Callable[[], object]) -> None:
    """``one``'s failure opens the fleet's breaker and ``other`` reads it so, with the server's scripts
    flushed before each: both find the script gone and get it loaded again, without an error."""
    flush()
    fail(one)
    with pytest.raises(hs.CircuitOpenError):
        one.call_sync(lambda: None)
    flush()
    other._core.sync()
    assert other.state == "open", "the other process reads the state the failure left in Redis"


def test_the_breakers_function_is_loaded_again_after_a_flush_without_an_error(redis_server: RedisServer, redis_url: str) -> None:
    one, other = shared(redis_url, failure_threshold=1), shared(redis_url, failure_threshold=1)
    assert breaker_listed(redis_server), redis_server.cli("FUNCTION", "LIST")
    opens_across_flushes(one, other, lambda: redis_server.cli("FUNCTION", "FLUSH"))
    assert breaker_listed(redis_server)


def test_after_a_restart_without_data_the_breaker_decides_in_redis_again(redis_server: RedisServer, redis_url: str) -> None:
    breaker = shared(redis_url, failure_threshold=1, recovery_timeout=30.0)
    assert breaker.call_sync(lambda: "before") == "before"
    redis_server.stop()
    redis_server.start()
    assert redis_server.cli("FUNCTION", "LIST") == "", "a restarted server without data has no functions"
    time.sleep(0.15)  # the cache is old enough that the next call reads Redis first
    # The restart dropped the breaker's connection: the call that finds it so is an outage under
    # fail_closed. The calls after it reach the restarted server, whose missing function is loaded
    # again without an error.
    try:
        breaker.call_sync(lambda: None)
    except hs.BackendUnavailable:
        time.sleep(0.1)  # past the backend's pause after a failure
    for _ in range(3):
        time.sleep(0.15)
        assert breaker.call_sync(lambda: "after") == "after"
    assert not breaker.stats()["degraded"]
    assert breaker_listed(redis_server)
    fail(breaker)
    with pytest.raises(hs.CircuitOpenError):
        breaker.call_sync(lambda: None)
    assert shared(redis_url).state == "open", "its failure opened the fleet's breaker in the restarted server"


@pytest.fixture
def server_without_functions() -> Iterator[RedisServer]:
    """A server that does not know FCALL or FUNCTION, as one before Redis 7.0."""
    server = RedisServer()
    server.start("--rename-command", "FCALL", "", "--rename-command", "FUNCTION", "")
    try:
        yield server
    finally:
        server.stop()


def test_a_server_without_functions_runs_the_breakers_script_by_evalsha(
    redis_server: RedisServer,  # the fixture that skips without redis-server
    server_without_functions: RedisServer,
) -> None:
    server = server_without_functions
    one, other = shared(server.url, failure_threshold=1), shared(server.url, failure_threshold=1)
    opens_across_flushes(one, other, lambda: server.cli("SCRIPT", "FLUSH"))
    assert server.script_calls() > 0 and "cmdstat_evalsha" in server.cli("INFO", "commandstats")


def test_breakers_shared_through_a_redis_cluster_run_their_function_on_their_keys_nodes(cluster_url: str) -> None:
    def breaker(key: str) -> hs.CircuitBreaker:
        backend = hs.RedisBackend(cluster_url, cluster=True, on_error="fail_closed")
        return hs.CircuitBreaker(backend=backend, key=key, failure_threshold=1)

    for key in "abcdef":  # keys spread over the three nodes
        one, other = breaker(key), breaker(key)
        fail(one)
        with pytest.raises(hs.CircuitOpenError):
            one.call_sync(lambda: None)
        other._core.sync()
        assert other.state == "open", f"breaker {key}"
