"""The decorators: @hs.retry, @hs.rate_limited and @hs.resilient, on def and async def."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType

import pytest

import holysheep as hs
from fakes import FakeStatusError

FAST = hs.RetryPolicy(base_delay=0.001, max_delay=0.002)


class RecordingLimiter:
    """The limiter protocol the decorators use (as ``hs.HolySheepRateLimiter`` has it), recording what
    happens to it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.in_flight = 0
        self.exits: list[type[BaseException] | None] = []

    async def __aenter__(self) -> None:
        await asyncio.sleep(0)  # a real limiter may wait here
        self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __enter__(self) -> None:
        self.events.append("acquire")
        self.in_flight += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.events.append("release")
        self.exits.append(exc_type)
        self.in_flight -= 1


def test_retry_decorates_def_and_keeps_its_name() -> None:
    calls = []

    @hs.retry(FAST)
    def flaky(x: int) -> int:
        """Fails once."""
        calls.append(x)
        if len(calls) == 1:
            raise FakeStatusError(503)
        return x * 2

    assert flaky(21) == 42
    assert calls == [21, 21]
    assert (flaky.__name__, flaky.__doc__) == ("flaky", "Fails once.")


async def test_retry_decorates_async_def() -> None:
    calls = []

    @hs.retry(FAST)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError()
        return "ok"

    assert await flaky() == "ok"
    assert len(calls) == 3


def test_retry_without_a_policy_uses_the_defaults() -> None:
    @hs.retry()
    def fine() -> str:
        return "ok"

    assert fine() == "ok"


async def test_timed_policy_decorates_both_kinds() -> None:
    policy = hs.RetryPolicy(base_delay=0.001, max_delay=0.002, max_elapsed=5.0, retry_budget=0.5)
    calls = []

    @policy
    def flaky() -> str:
        calls.append(1)
        if len(calls) % 2:
            raise ConnectionError()
        return "ok"

    @policy
    async def async_flaky() -> str:
        return flaky()

    assert flaky() == "ok"
    assert await async_flaky() == "ok"
    assert len(calls) == 4


def test_retry_works_on_methods_and_passes_the_same_arguments_again() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []

        @hs.retry(FAST)
        def fetch(self, url: str, *, page: int) -> int:
            self.calls.append((url, page))
            if len(self.calls) == 1:
                raise FakeStatusError(502)
            return len(self.calls)

    client = Client()
    assert client.fetch("/v1/models", page=2) == 2
    assert client.calls == [("/v1/models", 2)] * 2


def test_rate_limited_holds_a_slot_around_each_sync_call() -> None:
    events: list[str] = []
    limiter = RecordingLimiter(events)

    @hs.rate_limited(limiter)
    def work() -> str:
        events.append("call")
        return "done"

    assert work() == "done"
    assert events == ["acquire", "call", "release"]


def test_rate_limited_sync_releases_when_the_call_fails() -> None:
    events: list[str] = []
    limiter = RecordingLimiter(events)

    @hs.rate_limited(limiter)
    def work() -> None:
        events.append("call")
        raise FakeStatusError(500)

    with pytest.raises(FakeStatusError):
        work()
    assert events == ["acquire", "call", "release"]
    assert limiter.exits == [FakeStatusError], "the limiter's __exit__ sees the exception"


async def test_rate_limited_releases_when_the_call_fails_or_is_cancelled() -> None:
    events: list[str] = []
    limiter = RecordingLimiter(events)

    @hs.rate_limited(limiter)
    async def work(fail: bool) -> None:
        events.append("call")
        if fail:
            raise ValueError("bad")
        await asyncio.sleep(30)

    with pytest.raises(ValueError):
        await work(True)
    task = asyncio.create_task(work(False))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["acquire", "call", "release"] * 2
    assert limiter.in_flight == 0


async def test_resilient_reacquires_the_limiter_for_every_attempt() -> None:
    events: list[str] = []
    limiter = RecordingLimiter(events)
    breaker = hs.CircuitBreaker(failure_threshold=10)

    @hs.resilient(limiter=limiter, retry=FAST, breaker=breaker)
    async def complete() -> str:
        events.append("call")
        if events.count("call") < 3:
            raise FakeStatusError(503)
        return "ok"

    assert await complete() == "ok"
    assert events == ["acquire", "call", "release"] * 3
    assert breaker.stats()["failures"] == 2 and breaker.stats()["successes"] == 1


@pytest.mark.parametrize("asynchronous", [False, True], ids=["def", "async def"])
async def test_resilient_classifies_each_failure_once(monkeypatch: pytest.MonkeyPatch, asynchronous: bool) -> None:
    """The breaker and the retry policy both read the verdict the failure carries (issue 15)."""
    from holysheep import classify

    asked: list[tuple[object, ...]] = []
    classify_failure = classify.classify_failure
    monkeypatch.setattr(classify, "classify_failure", lambda *args: asked.append(args) or classify_failure(*args))
    breaker = hs.CircuitBreaker(failure_threshold=10)

    def fail() -> None:
        raise FakeStatusError(503)

    async def fail_async() -> None:
        fail()

    with pytest.raises(FakeStatusError):
        if asynchronous:
            await hs.resilient(retry=hs.RetryPolicy(max_attempts=3, base_delay=0.001), breaker=breaker)(fail_async)()
        else:
            hs.resilient(retry=hs.RetryPolicy(max_attempts=3, base_delay=0.001), breaker=breaker)(fail)()
    assert breaker.stats()["failures"] == 3
    assert len(asked) == 3


def test_resilient_checks_the_breaker_before_the_limiter() -> None:
    events: list[str] = []
    limiter = RecordingLimiter(events)
    breaker = hs.CircuitBreaker(failure_threshold=2, recovery_timeout=30.0)

    @hs.resilient(
        limiter=limiter, retry=hs.RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.002), breaker=breaker
    )
    def complete() -> str:
        events.append("call")
        raise FakeStatusError(503)

    with pytest.raises(hs.CircuitOpenError) as info:
        complete()
    assert events == ["acquire", "call", "release"] * 2, "the open breaker stopped the third attempt before the limiter"
    assert isinstance(info.value.__cause__, FakeStatusError), "the last real error is kept as the cause"
    events.clear()
    with pytest.raises(hs.CircuitOpenError):
        complete()
    assert events == []


async def test_resilient_without_retry_or_breaker_is_just_limited() -> None:
    events: list[str] = []

    @hs.resilient(limiter=RecordingLimiter(events))
    async def work() -> int:
        events.append("call")
        return 1

    assert await work() == 1
    assert events == ["acquire", "call", "release"]


def test_resilient_needs_at_least_one_part() -> None:
    with pytest.raises(hs.ConfigError):
        hs.resilient()


async def test_cancelling_a_resilient_call_in_backoff_releases_everything() -> None:
    events: list[str] = []
    limiter = RecordingLimiter(events)
    breaker = hs.CircuitBreaker(failure_threshold=5)

    @hs.resilient(
        limiter=limiter, retry=hs.RetryPolicy(base_delay=30.0, max_delay=30.0, jitter="none"), breaker=breaker
    )
    async def complete() -> None:
        raise FakeStatusError(500)

    task = asyncio.create_task(complete())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.in_flight == 0
    assert breaker.state == "closed"


def test_keyboard_interrupt_passes_through_every_sync_decorator_at_once() -> None:
    calls = []
    breaker = hs.CircuitBreaker(failure_threshold=1)

    @hs.resilient(retry=hs.RetryPolicy(retry_on=lambda e: True), breaker=breaker)
    def interrupted() -> None:
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert calls == [1]
    assert breaker.state == "closed", "an interrupt says nothing about the service"


async def test_async_resilient_stops_at_an_open_breaker_and_recovers_through_trials() -> None:
    events: list[str] = []
    changes: list[str] = []
    breaker = hs.CircuitBreaker(
        failure_threshold=2,
        recovery_timeout=0.05,
        half_open_max_calls=1,
        on_state_change=lambda b, old, new: changes.append(new),
    )
    healthy = False

    @hs.resilient(limiter=RecordingLimiter(events), retry=FAST, breaker=breaker)
    async def complete() -> str:
        events.append("call")
        if not healthy:
            raise FakeStatusError(502)
        return "ok"

    with pytest.raises(hs.CircuitOpenError) as info:
        await complete()
    assert events == ["acquire", "call", "release"] * 2
    assert isinstance(info.value.__cause__, FakeStatusError)
    await asyncio.sleep(0.1)
    healthy = True
    assert await complete() == "ok"
    assert changes == ["open", "half_open", "closed"]


def test_generator_functions_are_refused_at_decoration() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def stream() -> AsyncIterator[str]:
        yield "token"

    decorators = [
        hs.retry(FAST),
        hs.CircuitBreaker(),
        hs.KeyedBreaker(key=lambda: "k"),
        hs.rate_limited(RecordingLimiter([])),
        hs.resilient(retry=FAST),
    ]
    for decorate in decorators:
        for fn in (numbers, stream):
            with pytest.raises(TypeError, match="cannot wrap the generator function"):
                decorate(fn)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: hs.retry(lambda: None), "policy"),  # type: ignore[arg-type]
        (lambda: hs.rate_limited(object()), "limiter"),  # type: ignore[arg-type]
        (lambda: hs.resilient(limiter=object()), "limiter"),  # type: ignore[arg-type]
        (lambda: hs.resilient(retry=hs.CircuitBreaker()), "retry"),  # type: ignore[arg-type]
        (lambda: hs.resilient(breaker=FAST), "breaker"),  # type: ignore[arg-type]
        # What is decorated or called (issue 15: these were accepted, to fail at the first call)
        (lambda: FAST(5), "fn"),  # type: ignore[arg-type]
        (lambda: hs.CircuitBreaker()("f"), "fn"),  # type: ignore[arg-type]
        (lambda: hs.KeyedBreaker(key=lambda: "k")(None), "fn"),  # type: ignore[arg-type]
        (lambda: hs.rate_limited(RecordingLimiter([]))(5), "fn"),  # type: ignore[arg-type]
        (lambda: hs.resilient(retry=FAST)(5), "fn"),  # type: ignore[arg-type]
        (lambda: FAST.call_sync(5), "fn"),  # type: ignore[arg-type]
        (lambda: hs.CircuitBreaker().call_sync(5), "fn"),  # type: ignore[arg-type]
    ],
)
def test_decorator_arguments_of_the_wrong_kind_are_refused(make: Callable[[], object], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        make()
    assert info.value.field == field


def test_a_decorated_closure_that_calls_itself_is_collected() -> None:
    def make() -> Callable[[int], int]:
        @hs.retry(FAST)
        def countdown(n: int) -> int:
            return countdown(n - 1) if n else 0

        return countdown

    countdown = make()
    assert countdown(3) == 0
    function = weakref.ref(countdown.__wrapped__)  # type: ignore[attr-defined]
    del countdown
    gc.collect()
    assert function() is None, "the cycle through the native guard was collected"
