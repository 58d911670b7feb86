"""CircuitBreaker and KeyedBreaker: opening, failing fast, trials, announcements and concurrency."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import Any

import pytest

import holysheep as hs
from fakes import Err, FakeStatusError, fail, made_or_refused, succeed

RECOVERY = 0.05  # seconds; tests wait a little longer than this for half-open


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, None),
        ({"failure_threshold": 0}, Err("failure_threshold")),
        ({"failure_threshold": -3}, Err("failure_threshold")),
        ({"recovery_timeout": -1.0}, Err("recovery_timeout")),
        ({"recovery_timeout": float("nan")}, Err("recovery_timeout")),
        ({"half_open_max_calls": 0}, Err("half_open_max_calls")),
        ({"half_open_max_calls": 100_000}, Err("half_open_max_calls")),
        ({"on_state_change": "print"}, Err("on_state_change")),
        # Of the wrong kind (issue 15: these raised TypeError or OverflowError, or passed)
        ({"failure_threshold": "5"}, Err("failure_threshold")),
        ({"failure_threshold": True}, Err("failure_threshold")),
        ({"failure_threshold": 1.5}, Err("failure_threshold")),
        ({"failure_threshold": 2**64}, Err("failure_threshold")),
        ({"recovery_timeout": "30"}, Err("recovery_timeout")),
        ({"half_open_max_calls": None}, Err("half_open_max_calls")),
        ({"name": 5}, Err("name")),
    ],
)
def test_config_is_checked_at_construction(settings: dict[str, Any], expected: Err | None) -> None:
    made_or_refused(hs.CircuitBreaker, settings, expected)


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=3)
    fail(breaker)
    fail(breaker)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"


def test_a_success_ends_the_failure_streak() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2)
    fail(breaker)
    assert succeed(breaker) == "ok"
    fail(breaker)
    assert breaker.state == "closed"


def test_open_breaker_raises_circuit_open_with_retry_after() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=30.0, name="gateway")
    fail(breaker)
    calls = []
    with pytest.raises(hs.CircuitOpenError) as info:
        breaker.call_sync(lambda: calls.append(1))
    assert calls == [], "an open breaker does not run the call"
    assert 29.0 < info.value.retry_after <= 30.001, "the open period ends on a whole millisecond"
    assert 'circuit "gateway" is open' in str(info.value)
    assert breaker.stats()["rejected"] == 1


def test_client_errors_and_rate_limits_do_not_open_it() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1)
    fail(breaker, FakeStatusError(404))
    fail(breaker, FakeStatusError(429))
    fail(breaker, TypeError("caller bug"))
    assert breaker.state == "closed"


def test_half_open_after_recovery_then_closed_when_trials_succeed() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=RECOVERY, half_open_max_calls=2)
    fail(breaker)
    time.sleep(RECOVERY * 2)
    assert breaker.state == "half_open"
    succeed(breaker)
    assert breaker.state == "half_open", "one of two trials"
    succeed(breaker)
    assert breaker.state == "closed"


def test_a_failed_trial_opens_it_again() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=RECOVERY)
    fail(breaker)
    time.sleep(RECOVERY * 2)
    fail(breaker)
    assert breaker.state == "open"
    assert breaker.stats()["times_opened"] == 2


@pytest.mark.parametrize("via", ["decorator", "call_sync"])
def test_state_changes_are_announced_and_logged(caplog: pytest.LogCaptureFixture, via: str) -> None:
    changes: list[tuple[str, str]] = []
    breaker = hs.CircuitBreaker(
        failure_threshold=1,
        recovery_timeout=RECOVERY,
        half_open_max_calls=1,
        name="gw",
        on_state_change=lambda b, old, new: changes.append((old, new)),
    )

    @breaker
    def call(fail: bool) -> str:
        if fail:
            raise FakeStatusError(500)
        return "ok"

    def run(fail: bool) -> str:
        return call(fail) if via == "decorator" else breaker.call_sync(call.__wrapped__, fail)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="holysheep"):
        with pytest.raises(FakeStatusError):
            run(True)
        time.sleep(RECOVERY * 2)
        assert run(False) == "ok"
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "INFO"]
    assert "'gw': closed -> open" in caplog.records[0].getMessage()


def test_a_raising_listener_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken_listener(breaker: hs.CircuitBreaker, old: str, new: str) -> None:
        raise RuntimeError("listener bug")

    breaker = hs.CircuitBreaker(failure_threshold=1, on_state_change=broken_listener)
    fail(breaker)
    assert breaker.state == "open"
    assert "on_state_change raised" in caplog.text


def test_decorator_and_with_block_share_one_breaker() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2)

    @breaker
    def broken() -> None:
        """Always fails."""
        raise ConnectionError("down")

    assert broken.__doc__ == "Always fails."
    with pytest.raises(ConnectionError):
        broken()
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError("down")
    assert breaker.state == "open"
    with pytest.raises(hs.CircuitOpenError), breaker:
        pass


def test_nested_with_blocks_settle_their_own_permits() -> None:
    outer, inner = hs.CircuitBreaker(failure_threshold=1), hs.CircuitBreaker(failure_threshold=1)
    with outer:
        with pytest.raises(FakeStatusError), inner:
            raise FakeStatusError(500)
    assert (outer.state, inner.state) == ("closed", "open")


def test_decorated_methods_get_their_self_and_keep_their_signature() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1)

    class Client:
        @breaker
        def complete(self, prompt: str, *, model: str = "gpt-4.1") -> str:
            """Completes a prompt."""
            return f"{model}: {prompt}"

    assert Client().complete("hi", model="deepseek-v3.2") == "deepseek-v3.2: hi"
    assert str(inspect.signature(Client.complete)) == "(self, prompt: 'str', *, model: 'str' = 'gpt-4.1') -> 'str'"
    assert (Client.complete.__name__, Client.complete.__doc__) == ("complete", "Completes a prompt.")


async def test_async_decorator_and_async_with() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2)

    @breaker
    async def broken() -> None:
        raise TimeoutError()

    with pytest.raises(TimeoutError):
        await broken()
    with pytest.raises(TimeoutError):
        async with breaker:
            raise TimeoutError()
    assert breaker.state == "open"
    with pytest.raises(hs.CircuitOpenError):
        await breaker.call(broken)


async def test_cancelled_trial_does_not_leave_it_stuck_half_open() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=RECOVERY, half_open_max_calls=1)
    fail(breaker)
    await asyncio.sleep(RECOVERY * 2)
    trial = asyncio.create_task(breaker.call(asyncio.sleep, 30))
    await asyncio.sleep(0.01)
    with pytest.raises(hs.CircuitOpenError):
        succeed(breaker)  # the one trial slot is taken
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert succeed(breaker) == "ok"
    assert breaker.state == "closed"


async def test_only_half_open_max_calls_trials_pass_at_once() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=1, recovery_timeout=RECOVERY, half_open_max_calls=3)
    fail(breaker)
    await asyncio.sleep(RECOVERY * 2)
    release = asyncio.Event()
    results = await asyncio.gather(
        *(breaker.call(release.wait) for _ in range(3)),
        *(breaker.call(release.wait) for _ in range(7)),
        _set_soon(release),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results[:10]] == ["bool"] * 3 + ["CircuitOpenError"] * 7
    assert breaker.state == "closed"


async def _set_soon(event: asyncio.Event) -> None:
    await asyncio.sleep(0.01)
    event.set()


def test_many_threads_failing_at_once_open_it_exactly_once() -> None:
    opened = []
    breaker = hs.CircuitBreaker(failure_threshold=5, on_state_change=lambda b, old, new: opened.append(new))
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(200):
            try:
                breaker.call_sync(_raise_503)
            except (FakeStatusError, hs.CircuitOpenError):
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opened == ["open"]
    stats = breaker.stats()
    assert stats["times_opened"] == 1
    assert stats["failures"] + stats["rejected"] == 8 * 200


async def test_many_tasks_failing_at_once_open_it_exactly_once() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=3)

    async def slow_failure() -> None:
        await asyncio.sleep(0.01)
        raise FakeStatusError(500)

    results = await asyncio.gather(*(breaker.call(slow_failure) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, FakeStatusError) for r in results), "all were admitted before the first failed"
    assert breaker.stats()["times_opened"] == 1
    assert breaker.state == "open"


def _raise_503() -> None:
    raise FakeStatusError(503)


def test_keyed_breaker_keeps_one_breaker_per_key() -> None:
    breakers = hs.KeyedBreaker(failure_threshold=1, name="models", key=lambda *args, model: model)

    @breakers
    def complete(prompt: str, *, model: str) -> str:
        if model == "broken-model":
            raise FakeStatusError(500)
        return f"{model}: {prompt}"

    with pytest.raises(FakeStatusError):
        complete("hi", model="broken-model")
    with pytest.raises(hs.CircuitOpenError):
        complete("hi", model="broken-model")
    assert complete("hi", model="gpt-4.1") == "gpt-4.1: hi"
    assert breakers.states() == {"broken-model": "open", "gpt-4.1": "closed"}
    assert breakers["broken-model"].name == "models[broken-model]"
    assert breakers["gpt-4.1"] is breakers["gpt-4.1"]


async def test_keyed_breaker_decorates_coroutines() -> None:
    breakers = hs.KeyedBreaker(failure_threshold=1, key=lambda endpoint: endpoint)

    @breakers
    async def call(endpoint: str) -> str:
        raise ConnectionError(endpoint)

    with pytest.raises(ConnectionError):
        await call("/v1/embeddings")
    assert breakers["/v1/embeddings"].state == "open"
    assert breakers["/v1/chat/completions"].state == "closed"


def test_keyed_breaker_checks_config_and_key_up_front() -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.KeyedBreaker(failure_threshold=0)
    assert info.value.field == "failure_threshold"
    with pytest.raises(hs.ConfigError) as info:
        hs.KeyedBreaker()(lambda: None)
    assert info.value.field == "key"


def test_exit_without_enter_is_refused() -> None:
    breaker = hs.CircuitBreaker()
    with pytest.raises(RuntimeError, match="without its __enter__"):
        breaker.__exit__(None, None, None)
