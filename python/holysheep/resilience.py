"""The resilience decorators: ``@hs.retry(policy)``, ``@hs.rate_limited(lim)`` and ``@hs.resilient(...)``.

``resilient`` composes the three in the one right order, so each attempt, retries included, checks the
breaker, then takes a limiter slot, then calls::

    retry( breaker( rate_limited( fn ) ) )

A retry therefore never breaks a limit (it queues like any call) and never reaches a service the breaker
has given up on (it raises ``CircuitOpenError``, caused by the last real error).

A bare openai client retries on its own (``max_retries=2`` by default), inside the call, out of sight of
these decorators: past the limiter, on top of the retry policy. Its failures say so (the request's
``x-stainless-retry-count`` header), and ``rate_limited`` and ``resilient`` warn once per decorated
function when one passes through them, with the fix.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from holysheep._guard import check_decorated, guard_sync, reraise
from holysheep.breaker import CircuitBreaker
from holysheep.errors import ConfigError
from holysheep.retry import _CALL_STARTED, RetryPolicy

__all__ = ["Limiter", "rate_limited", "resilient", "retry"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Limiter(Protocol):
    """What the decorators need of a limiter (``hs.HolySheepRateLimiter`` and friends): ``async with``
    around coroutine calls, ``with`` around calls in threads; each holds one request and one
    concurrency slot for the length of the call. A limiter never suppresses the call's exception: the
    value ``__exit__`` returns is not used."""

    def __aenter__(self) -> Awaitable[object]:
        """Waits on the running loop for one request and a concurrency slot."""
        ...

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Awaitable[object]:
        """Gives back the concurrency slot."""
        ...

    def __enter__(self) -> object:
        """Waits, blocking the thread (not the GIL), for one request and a concurrency slot."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> object:
        """Gives back the concurrency slot."""
        ...


class _SdkRetries:
    """Watches the failures passing through one decorated function for an openai client that retried on
    its own, and warns the first time."""

    __slots__ = ("_fn", "_warned")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self._warned = False

    def saw(self, exc: BaseException) -> None:
        if self._warned:
            return
        retries = _sdk_retries(exc)
        if retries:
            self._warned = True
            name = getattr(self._fn, "__qualname__", repr(self._fn))
            message = (
                f"holysheep: the openai client called by {name} retried a request {retries} time(s) on its own, "
                "past the limiter (the server saw more requests than it admitted) and on top of the retry "
                "policy. Make that client with max_retries=0, or use hs.wrap(client, limiter=...) or "
                "hs.AsyncHolySheep / hs.HolySheep, whose transport retries under the limiter."
            )
            code = getattr(self._fn, "__code__", None)
            if code is None:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            else:  # attributed to the decorated function, wherever the failure surfaced
                warnings.warn_explicit(message, RuntimeWarning, code.co_filename, code.co_firstlineno)

    def on_error(self, permit: int | None, exc: BaseException, started: int, args: Any, kwargs: Any) -> Any:
        """The ``on_error`` of a guard that only watches: the error goes on."""
        self.saw(exc)
        raise exc


def _sdk_retries(exc: BaseException) -> int:
    """How many times the openai client retried the request ``exc`` failed on by itself: its
    ``x-stainless-retry-count`` header; 0 for any other error."""
    try:
        headers = exc.request.headers  # type: ignore[attr-defined]  # openai's errors carry their request
        count = headers.get("x-stainless-retry-count")
    except Exception:  # no request (or an httpx error's, which raises when unset): not the SDK's
        return 0
    return int(count) if isinstance(count, str) and count.strip().isdigit() else 0


def retry(policy: RetryPolicy | None = None) -> Callable[[F], F]:
    """Decorates a ``def`` or ``async def`` so failures that may pass are retried by ``policy``.

    Example::

        @hs.retry(hs.RetryPolicy(max_attempts=5))
        async def embed(texts): ...

    :param policy: the policy; ``RetryPolicy()`` (5 attempts, full jitter, Retry-After obeyed) if omitted.
    :raises ConfigError: when ``policy`` is not a RetryPolicy (as in ``@hs.retry`` without parentheses).
    """
    if policy is None:
        return RetryPolicy()
    if not isinstance(policy, RetryPolicy):
        raise ConfigError(
            f"policy: hs.retry takes a RetryPolicy (write @hs.retry() for the defaults), got {policy!r}", "policy"
        )
    return policy


def rate_limited(limiter: Limiter) -> Callable[[F], F]:
    """Decorates a ``def`` or ``async def`` so each call first waits for ``limiter``.

    Coroutines wait on the running loop (``async with limiter:``), plain functions in their thread
    (``with limiter:``). The slot is given back however the call ends, cancellation included.

    Example::

        lim = hs.HolySheepRateLimiter(rpm=500, max_concurrency=20)
        @hs.rate_limited(lim)
        async def complete(prompt): ...

    :raises ConfigError: when ``limiter`` cannot be used in ``async with`` and ``with``.
    """

    _check_limiter(limiter)

    def decorate(fn: F) -> F:
        check_decorated(fn, "rate_limited")
        if inspect.iscoroutinefunction(fn):
            return cast(F, _limit_async(limiter, fn, _SdkRetries(fn)))
        return cast(F, _limit_sync(limiter, fn, _SdkRetries(fn)))

    return decorate


def resilient(
    limiter: Limiter | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
) -> Callable[[F], F]:
    """Decorates a ``def`` or ``async def`` with any of a limiter, a retry policy and a circuit breaker,
    in the order that keeps every promise: breaker check, then limiter, then the call, for every attempt.

    Example::

        @hs.resilient(limiter=lim, retry=hs.RetryPolicy(max_attempts=5), breaker=hs.CircuitBreaker())
        async def complete(prompt): ...

    :raises ConfigError: when none of the three is given, or one is not what its name says.
    """
    if limiter is None and retry is None and breaker is None:
        raise ConfigError("resilient: give at least one of limiter=, retry=, breaker=", "resilient")
    if limiter is not None:
        _check_limiter(limiter)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigError(f"retry: must be a RetryPolicy, got {retry!r}", "retry")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise ConfigError(f"breaker: must be a CircuitBreaker, got {breaker!r}", "breaker")

    def decorate(fn: F) -> F:
        check_decorated(fn, "resilient")
        watch = _SdkRetries(fn)
        asynchronous = inspect.iscoroutinefunction(fn)
        attempt: Callable[..., Any] = fn
        if limiter is not None:
            attempt = _limit_async(limiter, fn, watch) if asynchronous else _limit_sync(limiter, fn, watch)
        if asynchronous and retry is not None and retry._bounded:
            # The timeout cuts the call inside the breaker's permit, so a cut attempt counts as a timeout.
            attempt = retry._bounding(attempt)
        if breaker is not None:
            attempt = breaker(attempt)
        if asynchronous:
            return cast(F, _resilient_async(fn, attempt, limiter, retry, breaker, watch))
        return cast(F, _resilient_sync(fn, attempt, limiter, retry, breaker, watch))

    return decorate


def _check_limiter(limiter: object) -> None:
    if not all(hasattr(limiter, name) for name in ("__aenter__", "__aexit__", "__enter__", "__exit__")):
        message = f"limiter: must work with `async with` and `with`, like HolySheepRateLimiter; got {limiter!r}"
        raise ConfigError(message, "limiter")


def _resilient_sync(
    fn: Callable[..., T],
    attempt: Callable[..., T],
    limiter: Limiter | None,
    retry: RetryPolicy | None,
    breaker: CircuitBreaker | None,
    watch: _SdkRetries,
) -> Callable[..., T]:
    """All three in one native guard for the first attempt; retries go through ``attempt`` (breaker,
    then limiter, then ``fn``), as the composition would."""
    retry_first_error = retry._on_first_error(attempt) if retry is not None else reraise

    def on_error(permit: int | None, exc: BaseException, started: int, args: Any, kwargs: Any) -> T:
        watch.saw(exc)
        if breaker is not None and permit is not None:
            breaker._settle(permit, exc)
        return cast(T, retry_first_error(permit, exc, started, args, kwargs))

    return guard_sync(
        fn,
        on_error=on_error,
        announce=breaker._announce if breaker is not None else None,
        breaker=breaker._core if breaker is not None else None,
        timer=retry._core if retry is not None and retry._timed else None,
        limiter=limiter,
    )


def _resilient_async(
    fn: Callable[..., Awaitable[T]],
    attempt: Callable[..., Awaitable[T]],
    limiter: Limiter | None,
    retry: RetryPolicy | None,
    breaker: CircuitBreaker | None,
    watch: _SdkRetries,
) -> Callable[..., Awaitable[T]]:
    """The same in one coroutine frame for the first attempt (nested decorators would stack three);
    retries go through ``attempt`` (breaker, then the attempt timeout, then limiter, then ``fn``)."""
    begin = retry._core.begin if retry is not None and retry._timed else None
    first = retry._first if retry is not None and retry._bounded else None
    allow = breaker._core.allow if breaker is not None else None
    success = breaker._core.success if breaker is not None else None
    announce = breaker._announce if breaker is not None else None
    retry_async = retry._retry_async if retry is not None else None

    async def on_error(permit: int | None, exc: BaseException, started: int, args: Any, kwargs: Any) -> T:
        watch.saw(exc)
        if breaker is not None and permit is not None:
            breaker._settle(permit, exc)
        if retry_async is None or not isinstance(exc, Exception):
            raise exc
        if first is not None:
            _CALL_STARTED.set(started)  # for the retries' attempts (this task's own context)
        return await retry_async(exc, started, attempt, args, kwargs, bound=False)

    @functools.wraps(fn)
    async def resilient_call(*args: Any, **kwargs: Any) -> T:
        started = begin() if begin is not None else 0
        permit = None
        if allow is not None:
            permit = allow()
            if permit & 1 and announce is not None:  # admitting this call turned the breaker half-open
                announce(("open", "half_open"))
        try:
            if first is not None:  # the first attempt's timeout cuts the limiter's wait too
                attempt = _limited_call(limiter, fn, args, kwargs) if limiter is not None else fn(*args, **kwargs)
                result = await first.run(attempt, started)
            elif limiter is not None:
                async with limiter:
                    result = await fn(*args, **kwargs)
            else:
                result = await fn(*args, **kwargs)
        except BaseException as exc:
            return await on_error(permit, exc, started, args, kwargs)
        if permit is not None and success is not None and announce is not None:
            changed = success(permit)
            if changed is not None:
                announce(changed)
        return result

    return resilient_call


async def _limited_call(
    limiter: Limiter, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    async with limiter:
        return await fn(*args, **kwargs)


def _limit_sync(limiter: Limiter, fn: Callable[..., T], watch: _SdkRetries) -> Callable[..., T]:
    return guard_sync(fn, on_error=watch.on_error, limiter=limiter)


def _limit_async(limiter: Limiter, fn: Callable[..., Awaitable[T]], watch: _SdkRetries) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def limited(*args: Any, **kwargs: Any) -> T:
        async with limiter:
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                watch.saw(exc)
                raise

    return limited
