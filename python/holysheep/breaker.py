"""CircuitBreaker and KeyedBreaker: stop calling a service that is down, and try it again carefully.

The state machine is the Rust core's (one atomic word, exact under threads and tasks); this module feeds
it each call's outcome, the verdict :mod:`holysheep.classify` gave the failure, announces state changes (the
``holysheep`` logger and ``on_state_change``), and gives back the slot of a cancelled call.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, TypeVar, cast

from holysheep._guard import check_callable, check_decorated, guard_sync
from holysheep._holysheep import BreakerCore
from holysheep.classify import verdict
from holysheep.errors import ConfigError

__all__ = ["CircuitBreaker", "KeyedBreaker", "StateListener"]

logger = logging.getLogger("holysheep")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: ``on_state_change(breaker, old_state, new_state)``.
StateListener = Callable[["CircuitBreaker", str, str], object]

# A permit is an int from the core; an odd one means admitting that call turned the breaker half-open.
_OPENED_TRIALS = 1

# The permits of open `with breaker:` blocks, per thread and per task, innermost first:
# (breaker, permit, the entry of the enclosing block). One variable for all breakers, as context
# variables are never freed.
_Block = tuple["CircuitBreaker", int, Any]
_OPEN_BLOCKS: contextvars.ContextVar[_Block | None] = contextvars.ContextVar("holysheep_breaker_blocks", default=None)


class CircuitBreaker:
    """Fails fast while a service is down, then lets a few trial calls decide when it is back.

    Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls raise
    :class:`~holysheep.CircuitOpenError` (with ``retry_after``) without running. After
    ``recovery_timeout`` it is half-open: ``half_open_max_calls`` trial calls pass; when all succeed it
    closes, and the first that fails opens it again. Only failures that say the service is unwell count
    (5xx, timeouts, connection errors, unknown exceptions; see :mod:`holysheep.classify`); a cancelled
    call gives its trial slot back.

    Example::

        breaker = hs.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0)
        @breaker                       # on def and async def; also `with breaker:` / `async with breaker:`
        async def embed(texts): ...

    :param failure_threshold: consecutive failures that open the breaker.
    :param recovery_timeout: seconds it stays open before trial calls.
    :param half_open_max_calls: trial calls let through while half-open; all must succeed to close.
    :param name: shown in errors, logs and ``repr``.
    :param on_state_change: called as ``on_state_change(breaker, old, new)`` on each change; its errors
        are logged, never raised into the call.
    :raises ConfigError: for a setting that cannot work, naming it.
    """

    __slots__ = ("_core", "_on_state_change")

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 3,
        name: str = "default",
        on_state_change: StateListener | None = None,
    ) -> None:
        if on_state_change is not None and not callable(on_state_change):
            raise ConfigError(f"on_state_change: must be callable, got {on_state_change!r}", "on_state_change")
        self._core = BreakerCore(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            half_open_max_calls=half_open_max_calls,
            name=name,
        )
        self._on_state_change = on_state_change

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._core.name

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open reads half-open once the timeout has passed)."""
        return self._core.state

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open breaker lets a trial through; ``None`` unless open."""
        return self._core.retry_after

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the breaker."""
        return self._core.failure_threshold

    @property
    def recovery_timeout(self) -> float:
        """Seconds the breaker stays open before trial calls."""
        return self._core.recovery_timeout

    @property
    def half_open_max_calls(self) -> int:
        """Trial calls let through while half-open."""
        return self._core.half_open_max_calls

    def stats(self) -> dict[str, Any]:
        """State and counters: ``state``, ``consecutive_failures``, ``retry_after`` and the totals
        ``successes``, ``failures``, ``rejected`` (failed fast) and ``times_opened``."""
        successes, failures, rejected, times_opened = self._core.counters()
        return {
            "state": self._core.state,
            "consecutive_failures": self._core.consecutive_failures,
            "retry_after": self._core.retry_after,
            "successes": successes,
            "failures": failures,
            "rejected": rejected,
            "times_opened": times_opened,
        }

    def __call__(self, fn: F) -> F:
        """Decorates ``fn`` (``def`` or ``async def``) so every call goes through the breaker."""
        check_decorated(fn, "CircuitBreaker")
        if inspect.iscoroutinefunction(fn):
            return cast(F, self._wrap_async(fn))
        return cast(F, self._wrap_sync(fn))

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Awaits ``fn(*args, **kwargs)`` through the breaker."""
        check_callable(fn, "CircuitBreaker.call")
        permit = self._admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(permit, exc)
            raise
        self._succeeded(permit)
        return result

    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Calls ``fn(*args, **kwargs)`` through the breaker."""
        check_callable(fn, "CircuitBreaker.call_sync")
        permit = self._admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(permit, exc)
            raise
        self._succeeded(permit)
        return result

    def __enter__(self) -> CircuitBreaker:
        _OPEN_BLOCKS.set((self, self._admit(), _OPEN_BLOCKS.get()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        block = _OPEN_BLOCKS.get()
        if block is None or block[0] is not self:
            raise RuntimeError(f"{self!r}: __exit__ without its __enter__ in this thread or task")
        _, permit, enclosing = block
        _OPEN_BLOCKS.set(enclosing)
        if exc is None:
            self._succeeded(permit)
        else:
            self._settle(permit, exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _wrap_sync(self, fn: Callable[..., T]) -> Callable[..., T]:
        # Admission, the call and the verdict of a success are one call into Rust (holysheep._guard).
        settle = self._settle

        def on_error(permit: int | None, exc: BaseException, started: int, args: Any, kwargs: Any) -> Any:
            assert permit is not None
            settle(permit, exc)
            raise exc

        return guard_sync(fn, on_error=on_error, announce=self._announce, breaker=self._core)

    def _wrap_async(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        # Bound methods captured once: the success path is two calls into Rust and no attribute lookups.
        allow, success, settle, announce = self._core.allow, self._core.success, self._settle, self._announce

        @functools.wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            permit = allow()
            if permit & _OPENED_TRIALS:
                announce(("open", "half_open"))
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                settle(permit, exc)
                raise
            changed = success(permit)
            if changed is not None:
                announce(changed)
            return result

        return guarded

    def _admit(self) -> int:
        permit = self._core.allow()
        if permit & _OPENED_TRIALS:
            self._announce(("open", "half_open"))
        return permit

    def _succeeded(self, permit: int) -> None:
        changed = self._core.success(permit)
        if changed is not None:
            self._announce(changed)

    def _settle(self, permit: int, exc: BaseException) -> None:
        """Feeds a failed call's outcome to the core as the failure's verdict says: a failure, an answer,
        or just the slot back."""
        outcome = verdict(exc).breaker
        if outcome == "failure":
            changed = self._core.failure(permit)
        elif outcome == "success":
            changed = self._core.success(permit)
        else:
            self._core.release(permit)
            return
        if changed is not None:
            self._announce(changed)

    def _announce(self, change: tuple[str, str]) -> None:
        old, new = change
        level = logging.WARNING if new == "open" else logging.INFO
        logger.log(level, "circuit breaker %r: %s -> %s", self.name, old, new)
        if self._on_state_change is not None:
            try:
                self._on_state_change(self, old, new)
            except Exception:
                logger.exception("circuit breaker %r: on_state_change raised", self.name)

    def __repr__(self) -> str:
        c = self._core
        return (
            f"<CircuitBreaker {c.name!r} {c.state} failures={c.consecutive_failures}/{c.failure_threshold} "
            f"recovery_timeout={c.recovery_timeout} half_open_max_calls={c.half_open_max_calls}>"
        )


class KeyedBreaker:
    """One :class:`CircuitBreaker` per key (model, endpoint, host), so one failing model does not stop
    the others. Breakers are made on first use with the same settings and named ``name[key]``, and kept
    (a few hundred bytes each): key by something with few values, not by request or user.

    Example::

        breakers = hs.KeyedBreaker(failure_threshold=3, key=lambda *args, model, **kw: model)
        @breakers                      # the key function receives the call's arguments
        async def complete(prompt, *, model): ...
        breakers["gpt-4.1"].state      # one key's breaker

    :param key: for use as a decorator: computes the key from the decorated call's arguments.
    :param name: the prefix of each breaker's name.
    :raises ConfigError: for a setting that cannot work, naming it (checked at construction).
    """

    __slots__ = ("_breakers", "_key", "_lock", "_settings")

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 3,
        name: str = "keyed",
        on_state_change: StateListener | None = None,
        key: Callable[..., Hashable] | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise ConfigError(f"key: must be callable, got {key!r}", "key")
        self._settings: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "recovery_timeout": recovery_timeout,
            "half_open_max_calls": half_open_max_calls,
            "name": name,
            "on_state_change": on_state_change,
        }
        CircuitBreaker(**self._settings)  # refuse a bad setting now, not at the first call
        self._key = key
        self._breakers: dict[Hashable, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: Hashable) -> CircuitBreaker:
        """The breaker for ``key``, made on first use."""
        breaker = self._breakers.get(key)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(key)
                if breaker is None:
                    settings = {**self._settings, "name": f"{self._settings['name']}[{key}]"}
                    breaker = self._breakers[key] = CircuitBreaker(**settings)
        return breaker

    def states(self) -> dict[Hashable, str]:
        """Each key's breaker state."""
        return {key: breaker.state for key, breaker in list(self._breakers.items())}

    def __len__(self) -> int:
        return len(self._breakers)

    def __call__(self, fn: F) -> F:
        """Decorates ``fn`` so each call goes through the breaker of its key (``key=`` is required)."""
        key_of = self._key
        if key_of is None:
            raise ConfigError("key: KeyedBreaker needs key= to be used as a decorator", "key")
        check_decorated(fn, "KeyedBreaker")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await self[key_of(*args, **kwargs)].call(fn, *args, **kwargs)

            return cast(F, guarded_async)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self[key_of(*args, **kwargs)].call_sync(fn, *args, **kwargs)

        return cast(F, guarded)

    def __repr__(self) -> str:
        return f"<KeyedBreaker {self._settings['name']!r} keys={len(self._breakers)}>"
