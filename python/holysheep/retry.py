"""RetryPolicy: try again after failures that may pass, with backoff, jitter and the server's own delay.

The decisions (delays, when to give up, the retry budget, how long an attempt may run) are the Rust
core's; this module runs the loop: the call, the classification of its failure, and the sleep
(``asyncio.sleep`` on the running loop for coroutines, ``time.sleep`` for threads). Cancellation and
``KeyboardInterrupt`` are never caught, so they stop the loop at once, even mid-sleep.

Timeouts: a coroutine's attempt that runs past ``attempt_timeout`` (or past what ``max_elapsed``
leaves of the whole call) is cancelled and raises ``TimeoutError``, which the classification table
retries. A cancellation from elsewhere propagates as ``CancelledError``. A first attempt that never
waits needs no timer, and those that wait share one per loop (:mod:`holysheep._first_attempts`);
retries, after their backoff, use ``asyncio.timeout``. A plain function cannot be interrupted from
outside: its attempts run to their end, and ``max_elapsed`` bounds only whether another starts.
(Through the openai clients, ``attempt_timeout`` becomes the SDK's own per-request timeout, which
cuts blocking requests too.)
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, Union, cast

from holysheep._first_attempts import FirstAttempts
from holysheep._guard import OnError, check_callable, check_decorated, guard_sync
from holysheep._holysheep import RetryCore
from holysheep.classify import is_retryable, server_retry_after
from holysheep.errors import CircuitOpenError, ConfigError

__all__ = ["RetryOn", "RetryPolicy"]

#: ``asyncio.timeout`` (Python 3.11+), which cuts the running task itself.
_timeout = getattr(asyncio, "timeout", None)

# The start of the call whose attempts a `_bounding` wrapper is cutting (a composed decorator's
# attempts are made by code that does not pass it along).
_CALL_STARTED: contextvars.ContextVar[int] = contextvars.ContextVar("holysheep_call_started", default=0)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: What ``retry_on`` accepts: exception classes to retry, or a predicate over the exception.
RetryOn = Union[type[BaseException], tuple[type[BaseException], ...], Callable[[BaseException], bool]]


class RetryPolicy:
    """How to retry: capped exponential backoff with jitter, obeying ``Retry-After``.

    Example::

        policy = hs.RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=60.0)
        reply = await policy.call(client.chat.completions.create, model="gpt-4.1", messages=msgs)
        @policy                      # or @hs.retry(policy), on def and async def

    :param max_attempts: attempts in all, the first included.
    :param base_delay: seconds before the first retry (before jitter).
    :param max_delay: the cap on any one backoff, in seconds.
    :param multiplier: growth of the backoff per failure (``decorrelated`` uses 3 x the last delay).
    :param jitter: ``"full"`` (uniform in [0, d]), ``"equal"`` ([d/2, d]), ``"decorrelated"`` or ``"none"``.
    :param respect_retry_after: wait what the server asks (``retry-after-ms``, ``retry-after``,
        ``x-ratelimit-reset-*``) when it is at most ``max_retry_after``; longer or unreadable values fall
        back to the backoff.
    :param max_retry_after: the longest server-given delay obeyed, in seconds.
    :param max_elapsed: seconds for the whole call from its first attempt, waits included: no retry
        starts past it, and a coroutine's running attempt is cut at it.
    :param attempt_timeout: seconds one attempt of a coroutine may run before it is cancelled and
        counted as a timeout (``TimeoutError``, retried). Plain functions are not interruptible: for
        them it applies only through the openai clients, where it is the SDK's per-request timeout.
    :param retry_budget: retries may add at most this fraction of the calls made with this policy over the
        last 10 s (at least 10 retries per 10 s always pass), so an outage does not become a retry storm.
    :param retry_on: exception classes to retry, or a predicate; default :func:`holysheep.classify.is_retryable`.
    :raises ConfigError: for a setting that cannot work, naming it.
    """

    __slots__ = ("_bounded", "_core", "_first", "_retryable", "_timed")

    def __init__(
        self,
        max_attempts: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        multiplier: float = 2.0,
        jitter: str = "full",
        respect_retry_after: bool = True,
        max_retry_after: float = 120.0,
        max_elapsed: float | None = None,
        retry_budget: float | None = None,
        retry_on: RetryOn | None = None,
        attempt_timeout: float | None = None,
    ) -> None:
        self._core = RetryCore(
            max_attempts=max_attempts,
            base_delay=base_delay,
            max_delay=max_delay,
            multiplier=multiplier,
            jitter=jitter,
            respect_retry_after=respect_retry_after,
            max_retry_after=max_retry_after,
            max_elapsed=max_elapsed,
            retry_budget=retry_budget,
            attempt_timeout=attempt_timeout,
        )
        self._retryable = _predicate(retry_on)
        # Only these need the start of each call; without them a successful call never enters Rust.
        self._timed = max_elapsed is not None or retry_budget is not None
        # A coroutine's attempts run under a timeout only when one of these bounds them.
        self._bounded = attempt_timeout is not None or max_elapsed is not None
        self._first = FirstAttempts(self._core.first_attempt_left, self._first_cut)

    @property
    def max_attempts(self) -> int:
        """Attempts in all, the first included."""
        return self._core.max_attempts

    @property
    def base_delay(self) -> float:
        """Seconds before the first retry, before jitter."""
        return self._core.base_delay

    @property
    def max_delay(self) -> float:
        """The cap on any one backoff, in seconds."""
        return self._core.max_delay

    @property
    def multiplier(self) -> float:
        """Growth of the backoff per failure."""
        return self._core.multiplier

    @property
    def jitter(self) -> str:
        """``"full"``, ``"equal"``, ``"decorrelated"`` or ``"none"``."""
        return self._core.jitter

    @property
    def respect_retry_after(self) -> bool:
        """Whether server-given delays are obeyed."""
        return self._core.respect_retry_after

    @property
    def max_retry_after(self) -> float:
        """The longest server-given delay obeyed, in seconds."""
        return self._core.max_retry_after

    @property
    def max_elapsed(self) -> float | None:
        """Seconds from the first attempt past which no retry starts, or ``None``."""
        return self._core.max_elapsed

    @property
    def attempt_timeout(self) -> float | None:
        """Seconds one attempt of a coroutine may run, or ``None``."""
        return self._core.attempt_timeout

    @property
    def retry_budget(self) -> float | None:
        """The fraction of calls that retries may add, or ``None``."""
        return self._core.retry_budget

    def delays(self) -> list[float]:
        """The waits, in seconds, of a call that keeps failing without a server-given delay.

        Exact for ``jitter="none"`` (e.g. ``[1.0, 2.0, 4.0, 8.0]`` by default); one random draw otherwise.
        """
        return self._core.delays()

    def should_retry(self, exc: BaseException) -> bool:
        """Whether this policy retries ``exc`` (cancellation and interrupts: never)."""
        return isinstance(exc, Exception) and self._retryable(exc)

    def __call__(self, fn: F) -> F:
        """Decorates ``fn`` (``def`` or ``async def``) so each call is retried by this policy."""
        check_decorated(fn, "RetryPolicy")
        if inspect.iscoroutinefunction(fn):
            return cast(F, self._wrap_async(fn))
        return cast(F, self._wrap_sync(fn))

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Awaits ``fn(*args, **kwargs)``, retrying by this policy; raises the last real error."""
        check_callable(fn, "RetryPolicy.call")
        started = self._core.begin() if self._timed else 0
        if not self._bounded:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                return await self._retry_async(exc, started, fn, args, kwargs)
        try:
            return await self._first.run(fn(*args, **kwargs), started)
        except Exception as exc:
            return await self._retry_async(exc, started, fn, args, kwargs)

    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Calls ``fn(*args, **kwargs)``, retrying by this policy; raises the last real error."""
        check_callable(fn, "RetryPolicy.call_sync")
        started = self._core.begin() if self._timed else 0
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            return self._retry_sync(exc, started, fn, args, kwargs)

    def _wrap_sync(self, fn: Callable[..., T]) -> Callable[..., T]:
        # The first attempt runs in a native guard: on success, one call into Rust and no Python frame.
        return guard_sync(fn, on_error=self._on_first_error(fn), timer=self._core if self._timed else None)

    def _on_first_error(self, attempt: Callable[..., T]) -> OnError:
        """The ``on_error`` of a guard whose first attempt failed: retries with ``attempt``."""
        retry_sync = self._retry_sync

        def on_error(permit: int | None, exc: BaseException, started: int, args: Any, kwargs: Any) -> T:
            if not isinstance(exc, Exception):
                raise exc
            return retry_sync(exc, started, attempt, args, kwargs)

        return on_error

    def _wrap_async(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        # The first attempt is inlined: on success, one Python frame and no call into Rust.
        retry_async = self._retry_async
        if self._bounded:
            begin, first_step, until_done = self._core.begin, RetryCore.first_step, self._first.until_done

            @functools.wraps(fn)
            async def bounded_retrying(*args: Any, **kwargs: Any) -> T:
                started = begin()
                try:  # FirstAttempts.run, inlined: a coroutine frame less
                    ended, value, steps = first_step(fn(*args, **kwargs))
                    if ended:
                        return cast(T, value)  # it never waited, so nothing could cut it: no timer
                    return cast(T, await until_done(steps, value, started))
                except Exception as exc:
                    return await retry_async(exc, started, fn, args, kwargs)

            return bounded_retrying
        if self._timed:
            begin = self._core.begin

            @functools.wraps(fn)
            async def timed_retrying(*args: Any, **kwargs: Any) -> T:
                started = begin()
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:
                    return await retry_async(exc, started, fn, args, kwargs)

            return timed_retrying

        @functools.wraps(fn)
        async def retrying(*args: Any, **kwargs: Any) -> T:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                return await retry_async(exc, 0, fn, args, kwargs)

        return retrying

    def _retry_sync(
        self, error: Exception, started: int, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        attempts, previous = 1, 0.0
        while True:
            delay = self._next_delay(error, attempts, started, previous)
            time.sleep(delay)
            attempts, previous = attempts + 1, delay
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                error = _chain(exc, error)

    async def _retry_async(
        self,
        error: Exception,
        started: int,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        bound: bool = True,
    ) -> T:
        """The retries after a first attempt failed with ``error``; each attempt under this policy's
        timeout unless ``bound`` is false (``fn`` applies it itself)."""
        bounded = bound and self._bounded
        attempts, previous = 1, 0.0
        while True:
            delay = self._next_delay(error, attempts, started, previous)
            await asyncio.sleep(delay)
            attempts, previous = attempts + 1, delay
            try:
                return await (self._within(fn(*args, **kwargs), started) if bounded else fn(*args, **kwargs))
            except Exception as exc:
                error = _chain(exc, error)

    def _bounding(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """``fn`` with each call under this policy's attempt timeout, for the call whose start is in
        ``_CALL_STARTED`` (set by the composing decorator)."""
        within = self._within

        @functools.wraps(fn)
        async def bounded(*args: Any, **kwargs: Any) -> T:
            return await within(fn(*args, **kwargs), _CALL_STARTED.get())

        return bounded

    async def _within(self, attempt: Awaitable[T], started: int) -> T:
        """Awaits ``attempt``, cancelling it once it has run for what this policy allows an attempt (the
        attempt timeout, cut to what ``max_elapsed`` leaves); a cut attempt raises ``TimeoutError``."""
        budget = self._core.attempt_budget(started)
        if budget is None:
            return await attempt
        if _timeout is None:  # Python 3.10: wait_for, which runs the attempt in a task of its own
            loop = asyncio.get_running_loop()
            deadline = loop.time() + budget
            try:
                return await asyncio.wait_for(attempt, budget)
            except asyncio.TimeoutError as exc:
                if loop.time() < deadline:
                    raise  # the attempt's own timeout, not ours
                raise self._cut(budget) from exc
        # A timer that cancels this very task: no second task, about a microsecond.
        bound = _timeout(budget)
        try:
            async with bound:
                return await attempt
        except TimeoutError as exc:
            if not bound.expired():
                raise  # the attempt's own timeout, not ours
            raise self._cut(budget) from exc

    def _cut(self, budget: float) -> TimeoutError:
        """The error of an attempt cut after ``budget`` seconds, naming the setting that cut it."""
        setting = "attempt_timeout" if budget == self._core.attempt_timeout else "max_elapsed"
        return TimeoutError(f"the attempt was cut after {budget:.3f} s ({setting})")

    def _first_cut(self) -> TimeoutError:
        """The error of a first attempt cut at its budget (the attempt timeout, cut to ``max_elapsed``)."""
        budgets = [b for b in (self._core.attempt_timeout, self._core.max_elapsed) if b is not None]
        return self._cut(min(budgets))

    def _next_delay(self, error: Exception, attempts: int, started: int, previous: float) -> float:
        """Seconds to wait before the next attempt; raises ``error`` when there is none."""
        if not self.should_retry(error):
            if attempts > 1:
                _annotate(error, attempts, f"failed on attempt {attempts} with an error that is not retried")
            raise error
        server_delay = server_retry_after(error) if self._core.respect_retry_after else None
        decision = self._core.next_delay(attempts, started, previous, server_delay)
        if isinstance(decision, str):
            setting = getattr(self._core, decision)
            _annotate(error, attempts, f"gave up after {attempts} attempts ({decision}={setting})")
            raise error
        return decision

    def __repr__(self) -> str:
        c = self._core
        return (
            f"RetryPolicy(max_attempts={c.max_attempts}, base_delay={c.base_delay}, max_delay={c.max_delay}, "
            f"multiplier={c.multiplier}, jitter={c.jitter!r}, respect_retry_after={c.respect_retry_after}, "
            f"max_retry_after={c.max_retry_after}, max_elapsed={c.max_elapsed}, retry_budget={c.retry_budget}, "
            f"attempt_timeout={c.attempt_timeout})"
        )


def _predicate(retry_on: RetryOn | None) -> Callable[[BaseException], bool]:
    if retry_on is None:
        return is_retryable
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ConfigError(f"retry_on: must be exception classes or a predicate, got {retry_on!r}", "retry_on")
        classes = retry_on
        return lambda exc: isinstance(exc, classes)
    if callable(retry_on):
        return cast(Callable[[BaseException], bool], retry_on)
    raise ConfigError(f"retry_on: must be exception classes or a predicate, got {retry_on!r}", "retry_on")


def _annotate(error: BaseException, attempts: int, what: str) -> None:
    """Attaches the attempt count to the error users will see: an attribute and a note."""
    try:
        error.holysheep_attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:  # an exception class with __slots__: the note still tells
        pass
    add_note = getattr(error, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(f"holysheep: {what}")


def _chain(error: Exception, previous: Exception) -> Exception:
    """A breaker that opened during the retries hides the real error: keep it as the cause."""
    if isinstance(error, CircuitOpenError) and error.__cause__ is None:
        error.__cause__ = previous
    return error
