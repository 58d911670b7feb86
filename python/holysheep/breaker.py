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
import weakref
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, TypeVar, Union, cast

from holysheep._guard import check_callable, check_decorated, guard_sync
from holysheep._holysheep import BreakerCore, RedisBackend
from holysheep.classify import server_retry_after, verdict
from holysheep.errors import ConfigError

__all__ = ["CircuitBreaker", "FailureOn", "KeyedBreaker", "StateListener"]

logger = logging.getLogger("holysheep")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: ``on_state_change(breaker, old_state, new_state)``.
StateListener = Callable[["CircuitBreaker", str, str], object]

#: What ``failure_on`` accepts: exception classes that count as failures, or a predicate over the exception.
FailureOn = Union[type[BaseException], tuple[type[BaseException], ...], Callable[[BaseException], bool]]


def _is_instance(exc: BaseException, classes: tuple[type[BaseException], ...]) -> bool:
    return isinstance(exc, classes)


def _announcer(breaker: CircuitBreaker) -> Callable[[str, str], None]:
    """What announces the changes a shared breaker's reports to Redis made, which land after the call
    that sent them (the core calls it at this process's next call of the breaker); it holds the breaker
    weakly, so the breaker and its core are no cycle."""
    ref = weakref.ref(breaker)

    def announce(old: str, new: str) -> None:
        alive = ref()
        if alive is not None:
            alive._announce((old, new))

    return announce


def _counting(failure_on: FailureOn | None) -> Callable[[BaseException], str]:
    """What an exception means to the breaker: ``"failure"``, ``"success"`` or ``"neutral"``; by the
    classification table, or by ``failure_on`` (cancellation and interrupts stay neutral)."""
    if failure_on is None:
        return lambda exc: verdict(exc).breaker
    if isinstance(failure_on, type) and issubclass(failure_on, BaseException):
        failure_on = (failure_on,)
    counts: Callable[[BaseException], bool]
    if isinstance(failure_on, tuple):
        if not failure_on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in failure_on):
            raise ConfigError(f"failure_on: must be exception classes or a predicate, got {failure_on!r}", "failure_on")
        counts = functools.partial(_is_instance, classes=failure_on)
    elif callable(failure_on):
        counts = cast(Callable[[BaseException], bool], failure_on)
    else:
        raise ConfigError(f"failure_on: must be exception classes or a predicate, got {failure_on!r}", "failure_on")

    def outcome(exc: BaseException) -> str:
        if not isinstance(exc, Exception):
            return "neutral"
        return "failure" if counts(exc) else "success"

    return outcome


# A permit is an int from the core; an odd one means admitting that call turned the breaker half-open.
_OPENED_TRIALS = 1

# The permits of open `with breaker:` blocks, per thread and per task, innermost first:
# (breaker, permit, the entry of the enclosing block). One variable for all breakers, as context
# variables are never freed.
_Block = tuple["CircuitBreaker", int, Any]
_OPEN_BLOCKS: contextvars.ContextVar[_Block | None] = contextvars.ContextVar("holysheep_breaker_blocks", default=None)


class CircuitBreaker:
    """Fails fast while a service is down, then lets a few trial calls decide when it is back.

    Closed: calls pass. It opens on ``failure_threshold`` consecutive failures (5 by default), or,
    with ``failure_rate``, when failures reach that fraction of the last ``window`` calls (or of the
    calls of the last ``window_s`` seconds) once ``minimum_calls`` were seen there; a failure that says
    how long the service is away (a 503 with ``Retry-After``) opens it at once for that long (up to 10
    minutes, or ``recovery_timeout`` if longer). Open: calls raise :class:`~holysheep.CircuitOpenError`
    (with ``retry_after``) without running. After ``recovery_timeout`` it is half-open:
    ``half_open_max_calls`` trial calls pass; when all succeed it closes, and the first that fails
    opens it again. ``isolate()`` holds it open until ``reset()``.

    What counts as a failure: by default the classification table (5xx, 408, timeouts, connection
    errors, unknown exceptions; see :mod:`holysheep.classify`), or ``failure_on``. A call slower than
    ``slow_call_s`` counts as a failure even when it succeeds. A cancelled call gives its slot back.

    Example::

        breaker = hs.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0)
        @breaker                       # on def and async def; also `with breaker:` / `async with breaker:`
        async def embed(texts): ...

    :param failure_threshold: consecutive failures that open the breaker; 5 unless ``failure_rate`` is
        given, when only the rate opens it unless this is given too.
    :param recovery_timeout: seconds it stays open before trial calls.
    :param half_open_max_calls: trial calls let through while half-open; all must succeed to close.
    :param name: shown in errors, logs and ``repr``.
    :param on_state_change: called as ``on_state_change(breaker, old, new)`` on each change; its errors
        are logged, never raised into the call.
    :param failure_on: exception classes, or a predicate over the exception, that count as failures;
        other exceptions count as the service answering (pybreaker's ``exclude`` is its negation).
        Cancellation never counts.
    :param failure_rate: open when failures reach this fraction (0 to 1, e.g. 0.5) of the window.
    :param window: the failure rate's window in calls (100 when neither it nor ``window_s`` is given).
    :param window_s: the failure rate's window in seconds instead (ten buckets of a tenth each).
    :param minimum_calls: calls the window must hold before its rate counts (at most ``window``).
    :param slow_call_s: a call that takes longer counts as a failure.
    :param backend: a :class:`~holysheep.RedisBackend`: with ``key``, one state for every process
        naming that key (see the README's "A breaker for the fleet"); the rate's window is then
        ``window_s``. When Redis is away, the backend's ``on_error`` decides: ``"local"`` uses a
        breaker in this process alone, ``"fail_open"`` lets calls pass uncounted, ``"fail_closed"``
        raises ``BackendUnavailable``.
    :param key: names the shared state.
    :raises ConfigError: for a setting that cannot work, naming it.
    """

    __slots__ = ("__weakref__", "_core", "_counts", "_failure_on", "_on_state_change")

    def __init__(
        self,
        failure_threshold: int | None = None,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 3,
        name: str = "default",
        on_state_change: StateListener | None = None,
        *,
        failure_on: FailureOn | None = None,
        failure_rate: float | None = None,
        window: int | None = None,
        window_s: float | None = None,
        minimum_calls: int = 20,
        slow_call_s: float | None = None,
        backend: RedisBackend | None = None,
        key: str | None = None,
    ) -> None:
        if on_state_change is not None and not callable(on_state_change):
            raise ConfigError(f"on_state_change: must be callable, got {on_state_change!r}", "on_state_change")
        self._failure_on = failure_on
        self._counts = _counting(failure_on)
        self._core = BreakerCore(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            half_open_max_calls=half_open_max_calls,
            name=name,
            failure_rate=failure_rate,
            window=window,
            window_s=window_s,
            minimum_calls=minimum_calls,
            slow_call_s=slow_call_s,
            backend=backend,
            key=key,
            announce=_announcer(self),
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
    def failure_threshold(self) -> int | None:
        """Consecutive failures that open the breaker; ``None`` when only the failure rate does."""
        return self._core.failure_threshold

    @property
    def failure_rate(self) -> float | None:
        """The failure rate that opens the breaker, or ``None``."""
        return self._core.failure_rate

    @property
    def window(self) -> int | None:
        """The failure rate's window in calls, or ``None``."""
        return self._core.window

    @property
    def window_s(self) -> float | None:
        """The failure rate's window in seconds, or ``None``."""
        return self._core.window_s

    @property
    def minimum_calls(self) -> int | None:
        """Calls the window must hold before its rate counts, or ``None`` without a rate."""
        return self._core.minimum_calls

    @property
    def slow_call_s(self) -> float | None:
        """Calls slower than this count as failures, or ``None``."""
        return self._core.slow_call_s

    @property
    def failure_on(self) -> FailureOn | None:
        """What counts as a failure, as given; ``None``: the classification table."""
        return self._failure_on

    @property
    def isolated(self) -> bool:
        """Whether it was isolated by hand (and not reset since)."""
        return self._core.isolated

    @property
    def shared(self) -> bool:
        """Whether its state is shared by a fleet through a backend."""
        return self._core.shared

    def isolate(self) -> None:
        """Opens the breaker until :meth:`reset`, whatever its state (for the whole fleet when shared):
        calls raise ``CircuitOpenError`` with ``retry_after`` infinite."""
        changed = self._core.isolate()
        if changed is not None:
            self._announce(changed)

    def reset(self) -> None:
        """Closes the breaker and forgets its failures, whatever its state (for the whole fleet when
        shared)."""
        changed = self._core.reset()
        if changed is not None:
            self._announce(changed)

    @property
    def recovery_timeout(self) -> float:
        """Seconds the breaker stays open before trial calls."""
        return self._core.recovery_timeout

    @property
    def half_open_max_calls(self) -> int:
        """Trial calls let through while half-open."""
        return self._core.half_open_max_calls

    def stats(self) -> dict[str, Any]:
        """State and counters: ``state``, ``isolated``, ``consecutive_failures``, ``retry_after``,
        ``window`` (``(calls, failures)`` in the failure-rate window, or ``None``) and the totals
        ``successes``, ``failures``, ``slow_calls`` (among the failures), ``rejected`` (failed fast) and
        ``times_opened``. A shared breaker's totals are those of the local breaker that stands in while
        Redis is away; ``degraded`` says whether it does now."""
        successes, failures, slow_calls, rejected, times_opened = self._core.counters()
        return {
            "state": self._core.state,
            "isolated": self._core.isolated,
            "consecutive_failures": self._core.consecutive_failures,
            "retry_after": self._core.retry_after,
            "window": self._core.window_counts,
            "successes": successes,
            "failures": failures,
            "slow_calls": slow_calls,
            "rejected": rejected,
            "times_opened": times_opened,
            "shared": self._core.shared,
            "degraded": self._core.degraded,
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
        """Feeds a failed call's outcome to the core as ``failure_on`` or the failure's verdict says: a
        failure (open at once for as long as the server said it is away, when it said), an answer, or
        just the slot back."""
        outcome = self._counts(exc)
        if outcome == "failure":
            changed = self._core.failure(permit, server_retry_after(exc))
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
        rule = f" failures={c.consecutive_failures}/{c.failure_threshold}" if c.failure_threshold else ""
        if c.failure_rate is not None:
            over = f"{c.window} calls" if c.window is not None else f"{c.window_s} s"
            rule += f" failure_rate={c.failure_rate} over {over}"
        shared = " shared" if c.shared else ""
        return (
            f"<CircuitBreaker {c.name!r} {c.state}{shared}{rule} "
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
    :param options: any other :class:`CircuitBreaker` setting (``failure_on``, ``failure_rate``,
        ``window``, ``window_s``, ``minimum_calls``, ``slow_call_s``), for every key's breaker.
    :raises ConfigError: for a setting that cannot work, naming it (checked at construction).
    """

    __slots__ = ("_breakers", "_key", "_lock", "_settings")

    def __init__(
        self,
        failure_threshold: int | None = None,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 3,
        name: str = "keyed",
        on_state_change: StateListener | None = None,
        key: Callable[..., Hashable] | None = None,
        **options: Any,
    ) -> None:
        if key is not None and not callable(key):
            raise ConfigError(f"key: must be callable, got {key!r}", "key")
        shared = {"backend", "key"} & options.keys()
        if shared:
            field = sorted(shared)[0]
            raise ConfigError(f"{field}: a KeyedBreaker's breakers are this process's own", field)
        self._settings: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "recovery_timeout": recovery_timeout,
            "half_open_max_calls": half_open_max_calls,
            "name": name,
            "on_state_change": on_state_change,
            **options,
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
