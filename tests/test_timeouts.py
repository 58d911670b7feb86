"""Timeouts (issue 19): `RetryPolicy(attempt_timeout=)` cuts a running attempt of a coroutine, which
counts as a timeout and is retried; `max_elapsed` bounds the whole call, the running attempt included;
blocking functions are not interruptible; the openai clients take the attempt timeout as the SDK's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

import holysheep as hs
from fakes import Err


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, None), (None, None), (0, Err("attempt_timeout")), (-1.0, Err("attempt_timeout")), ("5", Err("attempt_timeout")), (float("nan"), Err("attempt_timeout"))],
)
def test_attempt_timeout_is_checked_at_construction(value: Any, expected: Err | None) -> None:
    if expected is None:
        assert hs.RetryPolicy(attempt_timeout=value).attempt_timeout == value
        return
    with pytest.raises(hs.ConfigError) as info:
        hs.RetryPolicy(attempt_timeout=value)
    assert info.value.field == expected.field


async def test_an_attempt_past_attempt_timeout_is_cancelled_and_retried() -> None:
    attempts: list[str] = []

    @hs.RetryPolicy(max_attempts=3, base_delay=0.01, jitter="none", attempt_timeout=0.1)
    async def hangs_once() -> str:
        attempts.append("start")
        try:
            await asyncio.sleep(10 if len(attempts) == 1 else 0)
        except asyncio.CancelledError:
            attempts.append("cancelled")
            raise
        return "answer"

    started = time.monotonic()
    assert await hangs_once() == "answer"
    assert attempts == ["start", "cancelled", "start"]
    assert time.monotonic() - started < 2.0


async def test_every_attempt_cut_raises_timeout_error_naming_the_setting() -> None:
    policy = hs.RetryPolicy(max_attempts=2, base_delay=0.01, jitter="none", attempt_timeout=0.05)

    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError, match="attempt_timeout") as info:
        await policy.call(hangs)
    assert getattr(info.value, "holysheep_attempts", None) == 2
    assert hs.classify.is_retryable(info.value), "a cut attempt is a timeout, which the table retries"


async def test_max_elapsed_cuts_the_running_attempt_not_only_the_next_one() -> None:
    # issue 19: max_elapsed only stopped new attempts; a hanging first attempt ran for as long as it liked
    @hs.RetryPolicy(max_attempts=5, max_elapsed=0.2)
    async def hangs() -> None:
        await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="max_elapsed"):
        await hangs()
    assert time.monotonic() - started < 2.0


async def test_an_attempts_own_timeout_error_is_left_as_it_is() -> None:
    @hs.RetryPolicy(max_attempts=1, attempt_timeout=5.0)
    async def own() -> None:
        raise asyncio.TimeoutError("the callee's own")

    with pytest.raises(asyncio.TimeoutError, match="the callee's own"):
        await own()


async def test_under_resilient_a_cut_attempt_counts_for_the_breaker_as_a_timeout() -> None:
    breaker = hs.CircuitBreaker(failure_threshold=2)
    retry = hs.RetryPolicy(max_attempts=2, base_delay=0.01, jitter="none", attempt_timeout=0.05)

    @hs.resilient(retry=retry, breaker=breaker)
    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await hangs()
    assert breaker.state == "open", "two cut attempts, two timeouts"


def test_a_blocking_function_is_not_interrupted() -> None:
    @hs.RetryPolicy(attempt_timeout=0.01)
    def slow() -> str:
        time.sleep(0.05)
        return "done"

    assert slow() == "done"


@pytest.mark.parametrize("client_class", [hs.AsyncHolySheep, hs.HolySheep])
def test_the_openai_clients_take_attempt_timeout_as_the_sdks_per_request_timeout(client_class: Any) -> None:
    policy = hs.RetryPolicy(attempt_timeout=7.5)
    client = client_class(api_key="hs_test", base_url="http://127.0.0.1:9/v1", retry=policy)
    assert client.timeout == 7.5
    own = client_class(api_key="hs_test", base_url="http://127.0.0.1:9/v1", retry=policy, timeout=3.0)
    assert own.timeout == 3.0, "a timeout given to the client wins"


def test_wrap_takes_attempt_timeout_as_the_sdks_per_request_timeout() -> None:
    bare = openai.AsyncOpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    wrapped = hs.wrap(bare, retry=hs.RetryPolicy(attempt_timeout=4.0))
    assert wrapped.timeout == 4.0


# --- the first attempts' one timer per loop (issue 19: a timer per call cost 5.8 µs) -------------------

needs_cancel_counts = pytest.mark.skipif(not hasattr(asyncio.Task, "uncancel"), reason="Python 3.11+ counts cancellations")


async def test_many_first_attempts_share_the_timer_and_only_the_hanging_ones_are_cut() -> None:
    policy = hs.RetryPolicy(max_attempts=1, attempt_timeout=0.2)

    @policy
    async def answer(hang: bool) -> str:
        await asyncio.sleep(10 if hang else 0.01)
        return "answer"

    started = time.monotonic()
    results = await asyncio.gather(*(answer(i % 2 == 1) for i in range(40)), return_exceptions=True)
    assert results[0::2] == ["answer"] * 20
    assert all(isinstance(r, TimeoutError) and "attempt_timeout" in str(r) for r in results[1::2]), results[1::2]
    assert time.monotonic() - started < 2.0


async def test_a_younger_attempt_is_cut_at_its_own_deadline_when_the_older_one_ended_first() -> None:
    # The timer was armed for the older call; finding it gone, it must re-arm for the younger one.
    policy = hs.RetryPolicy(max_attempts=1, attempt_timeout=0.3)

    @policy
    async def sleeps(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    older = asyncio.create_task(sleeps(0.05))
    await asyncio.sleep(0.15)
    younger_started = time.monotonic()
    with pytest.raises(TimeoutError):
        await sleeps(10)
    took = time.monotonic() - younger_started
    assert await older == 0.05
    assert 0.25 < took < 1.5, f"cut after {took:.3f} s, its budget is 0.3 s"


async def test_a_deadline_that_passes_during_a_retrys_backoff_ends_the_call_with_the_last_error() -> None:
    attempts = 0

    @hs.RetryPolicy(max_attempts=10, base_delay=0.05, jitter="none", max_elapsed=0.3)
    async def fails() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("refused")

    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await fails()
    assert 2 <= attempts < 10 and time.monotonic() - started < 2.0


async def test_a_first_attempt_that_never_waits_returns_its_result_and_raises_its_error() -> None:
    policy = hs.RetryPolicy(max_attempts=1, max_elapsed=5.0)

    @policy
    async def at_once(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2

    assert await at_once(21) == 42
    with pytest.raises(ValueError, match="negative"):
        await at_once(-1)
    assert await policy.call(at_once, 4) == 8


async def test_a_callers_cancellation_during_an_attempt_propagates_and_is_not_retried() -> None:
    attempts = 0

    @hs.RetryPolicy(max_attempts=5, base_delay=0.01, attempt_timeout=5.0)
    async def hangs() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    task = asyncio.create_task(hangs())
    await asyncio.sleep(0.05)  # suspended, with the timer armed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1, "a cancellation is never mistaken for a timeout and retried"


@needs_cancel_counts
async def test_a_callers_cancellation_that_meets_the_cut_is_not_swallowed() -> None:
    # The caller cancels, and the timer cuts, before the task runs again: asyncio.timeout's rule says
    # the caller's cancellation wins, so CancelledError, not a TimeoutError to retry.
    attempts = 0

    @hs.RetryPolicy(max_attempts=5, base_delay=0.01, attempt_timeout=0.02)
    async def hangs() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    task = asyncio.create_task(hangs())
    await asyncio.sleep(0)  # the attempt is suspended, the timer armed
    loop = asyncio.get_running_loop()
    time.sleep(0.05)  # the loop is blocked past the deadline: the timer is due and has not run
    loop.call_soon(task.cancel)  # runs just before the due timer, both before the task resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1


async def test_the_users_own_timeout_around_the_call_stays_theirs() -> None:
    attempts = 0

    @hs.RetryPolicy(max_attempts=5, base_delay=0.01, attempt_timeout=5.0)
    async def hangs() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(hangs(), 0.05)
    assert attempts == 1, "the enclosing timeout's cancellation is not retried"


@needs_cancel_counts
async def test_a_cut_inside_the_users_longer_timeout_leaves_their_timeout_working() -> None:
    @hs.RetryPolicy(max_attempts=3, base_delay=0.01, jitter="none", attempt_timeout=0.05)
    async def hangs_once(state: list[int]) -> str:
        state.append(1)
        await asyncio.sleep(10 if len(state) == 1 else 0)
        return "answer"

    async with asyncio.timeout(5.0):
        assert await hangs_once([]) == "answer"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "the cut's cancellation was withdrawn"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await asyncio.sleep(1)  # the user's timeout still fires


@needs_cancel_counts
async def test_an_attempt_that_swallows_the_cut_and_returns_keeps_its_result() -> None:
    # As with asyncio.timeout: the cut is withdrawn, the result stands.
    @hs.RetryPolicy(max_attempts=1, attempt_timeout=0.05)
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "late"
        return "never"

    assert await stubborn() == "late"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_call_cuts_any_awaitable_not_only_coroutines() -> None:
    loop = asyncio.get_running_loop()
    policy = hs.RetryPolicy(max_attempts=1, attempt_timeout=0.1)

    def resolved_soon() -> asyncio.Future[str]:
        future: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, future.set_result, "answer")
        return future

    assert await policy.call(resolved_soon) == "answer"
    with pytest.raises(TimeoutError):
        await policy.call(loop.create_future)
    with pytest.raises(TypeError, match="can't be used in 'await' expression"):
        await policy.call(lambda: 5)


async def test_closing_a_suspended_call_closes_its_attempt() -> None:
    closed: list[str] = []

    @hs.RetryPolicy(max_attempts=1, attempt_timeout=5.0)
    async def holds() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            closed.append("attempt")

    call = holds()
    assert call.send(None) is not None  # suspended in its first attempt, as a task would see it
    call.close()
    assert closed == ["attempt"], "close() reached the attempt"


async def test_under_resilient_with_a_limiter_the_timeout_cuts_the_first_attempt_too() -> None:
    limiter = hs.HolySheepRateLimiter(max_qps=1000, max_concurrency=1)
    retry = hs.RetryPolicy(max_attempts=1, attempt_timeout=0.05)

    @hs.resilient(limiter=limiter, retry=retry)
    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await hangs()
    assert limiter.stats()["in_flight"] == 0, "the cut attempt gave its slot back"
