"""A circuit breaker shared by a fleet through a real redis-server (issue 19): one process trips it and
the others see it open within the cache's staleness; half-open trials are the fleet's, not each
process's; the success path sends nothing to Redis; the backend's failure policy decides when Redis is
away."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Event

import pytest
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from fakes import FakeStatusError

# Fresh interpreters: a forked child would inherit the parent's Redis runtime without its threads.
spawn = multiprocessing.get_context("spawn")

#: How stale a busy process's view may be (src/backend/redis/breaker.rs, SYNC_INTERVAL_NS), plus slack
#: for a loaded 2-core machine.
STALENESS = 0.05
SLACK = 0.5


def shared(url: str, on_error: str = "fail_closed", **settings: object) -> hs.CircuitBreaker:
    return hs.CircuitBreaker(backend=hs.RedisBackend(url, on_error=on_error), key="gateway", **settings)  # type: ignore[arg-type]


def fail(breaker: hs.CircuitBreaker, error: Exception | None = None) -> None:
    def broken() -> None:
        raise error if error is not None else FakeStatusError(503)

    with pytest.raises(FakeStatusError):
        breaker.call_sync(broken)


def trip_then_signal(url: str, tripped: Event) -> None:
    breaker = shared(url, failure_threshold=3, recovery_timeout=30.0)
    for _ in range(3):
        try:
            breaker.call_sync(_raise_503)
        except FakeStatusError:
            pass
    assert breaker.state == "open"
    tripped.set()


def _raise_503() -> None:
    raise FakeStatusError(503)


def take_trials(url: str, start: Event, out: "multiprocessing.Queue[int]") -> None:
    """Asks for as many trials as it can get for a while, holding each; sends back how many it got."""
    breaker = shared(url, failure_threshold=1, recovery_timeout=0.3, half_open_max_calls=2)
    start.wait()
    granted = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            breaker._core.allow()  # held: never settled
            granted += 1
        except hs.CircuitOpenError:
            time.sleep(0.01)
    out.put(granted)


def test_one_process_trips_it_and_another_sees_it_open_within_the_staleness(redis_url: str) -> None:
    breaker = shared(redis_url, failure_threshold=3, recovery_timeout=30.0)
    assert breaker.shared and breaker.call_sync(lambda: "ok") == "ok"
    tripped = spawn.Event()
    child = spawn.Process(target=trip_then_signal, args=(redis_url, tripped))
    child.start()
    assert tripped.wait(30)
    child.join(10)
    assert child.exitcode == 0
    seen = time.monotonic()
    passed = 0
    while True:
        try:
            breaker.call_sync(lambda: None)
            passed += 1
        except hs.CircuitOpenError as refused:
            assert 29.0 < refused.retry_after <= 30.001
            break
        time.sleep(0.005)
    assert time.monotonic() - seen < STALENESS + SLACK
    assert breaker.state == "open"


def test_half_open_trials_are_shared_by_the_fleet_not_multiplied_by_its_processes(redis_url: str) -> None:
    breaker = shared(redis_url, failure_threshold=1, recovery_timeout=0.3, half_open_max_calls=2)
    fail(breaker)
    start, out = spawn.Event(), spawn.Queue()
    workers = [spawn.Process(target=take_trials, args=(redis_url, start, out)) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # past the recovery timeout once they start asking
    start.set()
    granted = [out.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    assert sum(granted) == 2, f"trials per process: {granted}"


def test_a_trial_lost_with_its_process_is_handed_out_again(redis_url: str) -> None:
    settings = {"failure_threshold": 1, "recovery_timeout": 0.2, "half_open_max_calls": 1, "slow_call_s": 0.3}
    gone, survivor = shared(redis_url, **settings), shared(redis_url, **settings)
    fail(gone)
    time.sleep(0.25)
    gone._core.allow()  # the trial, never answered: its process is "gone"
    with pytest.raises(hs.CircuitOpenError):
        survivor._core.allow()
    time.sleep(0.35)
    assert survivor.call_sync(lambda: "back") == "back"
    assert survivor.state == "closed"


def test_the_fleets_trials_close_it_for_every_process(redis_url: str) -> None:
    one = shared(redis_url, failure_threshold=1, recovery_timeout=0.2, half_open_max_calls=1)
    other = shared(redis_url, failure_threshold=1, recovery_timeout=0.2, half_open_max_calls=1)
    fail(one)
    time.sleep(0.3)
    assert one.call_sync(lambda: "back") == "back"
    assert one.state == "closed"
    time.sleep(STALENESS * 2)
    other.state  # a read after the interval starts a re-read in the background
    deadline = time.monotonic() + SLACK
    while other.state != "closed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other.state == "closed"


def test_a_503_with_retry_after_opens_it_for_the_whole_fleet_for_that_long(redis_url: str) -> None:
    one = shared(redis_url, recovery_timeout=30.0)
    other = shared(redis_url, recovery_timeout=30.0)
    fail(one, FakeStatusError(503, {"retry-after": "4"}))
    assert one.state == "open", "its report landed: this process's next look waits for it"
    other._core.sync()
    with pytest.raises(hs.CircuitOpenError) as info:
        other.call_sync(lambda: None)
    assert 3.5 < info.value.retry_after <= 4.001


def test_isolate_and_reset_reach_every_process(redis_url: str) -> None:
    one, other = shared(redis_url), shared(redis_url)
    one.isolate()
    other._core.sync()
    assert other.isolated and other.state == "open"
    with pytest.raises(hs.CircuitOpenError) as info:
        other.call_sync(lambda: None)
    assert info.value.retry_after == float("inf")
    other.reset()
    one._core.sync()
    assert one.state == "closed" and one.call_sync(lambda: 1) == 1


def test_the_success_path_sends_nothing_to_redis_beyond_a_re_read_per_interval(redis_server: RedisServer, redis_url: str) -> None:
    breaker = shared(redis_url)
    redis_server.cli("CONFIG", "RESETSTAT")
    started = time.monotonic()
    for _ in range(2_000):
        breaker.call_sync(lambda: None)
    elapsed = time.monotonic() - started
    calls = redis_server.script_calls()
    assert calls <= elapsed / STALENESS + 2, f"{calls} script calls for 2,000 successes in {elapsed:.3f} s"


def test_a_shared_breakers_successes_reach_redis_in_a_batch_and_end_the_fleets_streak(redis_url: str) -> None:
    one = shared(redis_url, failure_threshold=2)
    other = shared(redis_url, failure_threshold=2)
    fail(one)
    other.call_sync(lambda: None)  # counted in this process...
    time.sleep(STALENESS * 2)
    other.call_sync(lambda: None)  # ...and reported with the re-read this call starts
    time.sleep(0.2)
    fail(one)
    assert one.state == "closed", "a success between the failures ended the streak"


def test_a_failure_rate_shared_by_a_fleet_is_over_seconds(redis_url: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        shared(redis_url, failure_rate=0.5, window=100)
    assert info.value.field == "window"
    breaker = shared(redis_url, failure_rate=0.5, window_s=10.0, minimum_calls=2)
    fail(breaker)
    fail(breaker)
    assert breaker.state == "open"


@pytest.mark.parametrize("on_error", ["local", "fail_open", "fail_closed"])
def test_without_redis_the_backends_failure_policy_decides(redis_server: RedisServer, redis_url: str, on_error: str) -> None:
    breaker = shared(redis_url, on_error=on_error, failure_threshold=1, recovery_timeout=30.0)
    redis_server.stop()
    time.sleep(0.15)  # past the cache's age at which a call re-reads first
    try:
        if on_error == "local":
            fail(breaker, FakeStatusError(500))
            assert breaker.stats()["degraded"]
            assert breaker.state == "open", "the local breaker counted the failure"
            with pytest.raises(hs.CircuitOpenError):
                breaker.call_sync(lambda: None)
        elif on_error == "fail_open":
            fail(breaker, FakeStatusError(500))
            for _ in range(3):
                assert breaker.call_sync(lambda: "passes") == "passes", "uncounted"
        else:
            with pytest.raises(hs.BackendUnavailable):
                breaker.call_sync(lambda: None)
        assert breaker.stats()["degraded"]
    finally:
        redis_server.start()
    deadline = time.monotonic() + 3.0
    while breaker.stats()["degraded"] and time.monotonic() < deadline:
        try:
            breaker.call_sync(lambda: None)
        except (hs.CircuitOpenError, hs.BackendUnavailable):
            pass
        time.sleep(0.05)
    assert not breaker.stats()["degraded"], "the fleet's state decides again once Redis answers"
