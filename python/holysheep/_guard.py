"""The decorators' plain-function wrapper: a native ``SyncGuard`` dressed as the function it wraps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

from holysheep._holysheep import BreakerCore, RetryCore, SyncGuard
from holysheep.errors import ConfigError

__all__ = ["OnError", "check_callable", "check_decorated", "guard_sync", "reraise"]


class OnError(Protocol):
    """Handles an exception of a guarded call's first attempt: returns the call's result or raises."""

    def __call__(
        self, permit: int | None, exc: BaseException, started: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


def check_callable(fn: object, operation: str) -> None:
    """:raises ConfigError: when ``fn``, what ``operation`` calls, cannot be called."""
    if not callable(fn):
        raise ConfigError(f"fn: {operation} takes a function or other callable, got {fn!r}", "fn")


def check_decorated(fn: Callable[..., Any], decorator: str) -> None:
    """What a decorator can wrap: a callable, and not a generator function, which runs after the call
    returns, so no decorator here could see how it ends.

    :raises ConfigError: when ``fn`` cannot be called.
    :raises TypeError: for a generator or async generator function.
    """
    check_callable(fn, decorator)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(f"{decorator} cannot wrap the generator function {name}: it would only see it start")


def reraise(permit: int | None, exc: BaseException, started: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``on_error`` of a guard with nothing to settle and nothing to retry."""
    raise exc


def guard_sync(
    fn: Callable[..., Any],
    *,
    on_error: OnError,
    announce: Callable[[tuple[str, str]], None] | None = None,
    breaker: BreakerCore | None = None,
    timer: RetryCore | None = None,
    limiter: object | None = None,
) -> Callable[..., Any]:
    """``fn`` behind a native guard, with ``fn``'s name, docstring and signature."""
    guard = SyncGuard(fn, on_error=on_error, announce=announce, breaker=breaker, timer=timer, limiter=limiter)
    return functools.update_wrapper(guard, fn)
