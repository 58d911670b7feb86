"""`HolySheepRateLimiter` and its presets: rate limits plus a concurrency cap, for asyncio and threads."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar, cast

from holysheep import _holysheep
from holysheep._holysheep import Limit, _Limiter
from holysheep.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

    from holysheep._redis import RedisBackend

__all__ = ["ConcurrencyLimiter", "HolySheepRateLimiter", "Permit", "SlidingWindow", "TokenBucket"]

F = TypeVar("F", bound=Callable[..., Any])


class Admitted(Protocol):
    """What an acquire hands a `Permit`: the tokens counted for the request, and how to correct them."""

    @property
    def tokens(self) -> int: ...

    def settle(self, actual_tokens: int) -> None: ...


#: The most tokens one request may carry: what the core counts in 64 bits.
_MAX_TOKENS = 2**64 - 1


def _check_timeout(timeout: float | None, field: str = "timeout") -> None:
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0 and not math.isnan(timeout)):
        raise ConfigError(f"{field}: must be None or 0 or more seconds, got {timeout!r}", field)


class HolySheepRateLimiter(_Limiter):
    """Keeps requests inside rate limits and a concurrency cap; waiters are served in arrival order.

        lim = HolySheepRateLimiter(max_qps=10, max_concurrency=20)
        async with lim:
            await client.chat.completions.create(...)

    A limit of n per period admits at most n in ANY interval of that length (the whole n may go at
    once, then one more as each old admission leaves the window), so a server enforcing the same limit
    never answers 429 because of us.

    :param max_qps: requests per second.
    :param max_concurrency: requests in flight at once (between acquire and release).
    :param rpm: requests per minute.
    :param tpm: LLM tokens per minute; pass ``tokens=`` to acquire or use ``slot(tokens=...)``.
    :param burst: pace ``max_qps``/``rpm`` evenly with GCRA, with room for this many at once.
    :param limits: more limits, e.g. ``[Limit(1_000, per="day")]``; all must admit a request.
    :param tier: a HolySheep plan's limits (``"free"``, ``"starter"``, ``"pro"``, ``"enterprise"``);
        explicit ``rpm``/``tpm``/``max_concurrency`` override it.
    :param backend: a `RedisBackend`: every decision is made in Redis, so all processes passing the
        same ``key`` share these limits (see `SharedRateLimiter`).
    :param key: names the shared limit; required with ``backend``.
    :raises ConfigError: a value that cannot work, named in the message and in ``.field``.
    """

    __slots__ = ()

    def __new__(
        cls,
        max_qps: float | None = None,
        max_concurrency: int | None = None,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float | None = None,
        limits: Sequence[Limit] | None = None,
        tier: str | None = None,
        backend: RedisBackend | None = None,
        key: str | None = None,
    ) -> Self:
        if backend is not None or key is not None:
            # Chosen here, at construction, so the local limiter's fast path never checks for a backend.
            from holysheep._redis import shared_class

            # A subclass of `cls` deciding in Redis, so still a Self.
            cls = cast("type[Self]", shared_class(cls))
        return super().__new__(cls, max_qps, max_concurrency, rpm=rpm, tpm=tpm, burst=burst, limits=limits, tier=tier)

    def __init__(
        self,
        max_qps: float | None = None,
        max_concurrency: int | None = None,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float | None = None,
        limits: Sequence[Limit] | None = None,
        tier: str | None = None,
        backend: RedisBackend | None = None,
        key: str | None = None,
    ) -> None:
        pass

    @classmethod
    def from_tier(cls, tier: str) -> HolySheepRateLimiter:
        """The limits of a HolySheep plan: ``"free"``, ``"starter"``, ``"pro"`` or ``"enterprise"``.

        :raises ConfigError: an unknown tier (the message lists the known ones).
        """
        return cls(tier=tier)

    def slot(self, tokens: int = 0, timeout: float | None = None, priority: int = 0) -> Permit:
        """One request carrying an estimate of ``tokens`` LLM tokens, as a context manager whose
        permit can `Permit.settle` the real count once the response says it.

            async with lim.slot(tokens=850) as permit:
                resp = await client.chat.completions.create(...)
                permit.settle(resp.usage.total_tokens)
        """
        return Permit(self, tokens, timeout, priority)

    def __call__(self, fn: F) -> F:
        """Decorates a ``def`` or ``async def``: each call holds one admission while it runs."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def limited_async(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return limited_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def limited(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return limited  # type: ignore[return-value]


class Permit:
    """One admission taken by `HolySheepRateLimiter.slot`; held until the ``with`` block ends."""

    __slots__ = ("_limiter", "_priority", "_reservation", "_timeout", "_tokens")

    def __init__(self, limiter: HolySheepRateLimiter, tokens: int, timeout: float | None, priority: int) -> None:
        _holysheep._check_count("tokens", tokens, 0, _MAX_TOKENS)
        _holysheep._check_timeout("timeout", timeout)
        _holysheep._check_priority("priority", priority)
        self._limiter = limiter
        self._tokens = tokens
        self._timeout = timeout
        self._priority = priority
        self._reservation: Admitted | None = None

    @property
    def tokens(self) -> int:
        """The LLM tokens counted for this request now: the estimate, or the last settled count."""
        return self._tokens if self._reservation is None else self._reservation.tokens

    def settle(self, actual_tokens: int) -> None:
        """Replaces the estimate by the real token count: refunds the difference or charges it."""
        if self._reservation is None:
            raise RuntimeError("settle() needs an acquired permit: call it inside the `with` block")
        self._limiter._settle_admitted(self._reservation, actual_tokens)

    async def __aenter__(self) -> Permit:
        self._reservation = await self._limiter._acquire(self._tokens, self._timeout, self._priority)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def __enter__(self) -> Permit:
        self._reservation = self._limiter._acquire_blocking(self._tokens, self._timeout, self._priority)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._reservation is not None:
            self._limiter._release_admitted(self._reservation)

    def __repr__(self) -> str:
        state = "held" if self._reservation is not None else "not acquired"
        return f"<Permit tokens={self.tokens} {state}>"


def _renamed(err: ConfigError, names: dict[str, str]) -> ConfigError:
    """The same error under the parameter names of a preset's signature."""
    field = names.get(err.field or "", err.field)
    message = str(err)
    if err.field and message.startswith(err.field + ":"):
        message = f"{field}{message[len(err.field):]}"
    return ConfigError(message, field)


class TokenBucket(HolySheepRateLimiter):
    """A token bucket: ``rate`` admissions per second on average, up to ``capacity`` at once (GCRA).

        bucket = TokenBucket(rate=5, capacity=10)
        if bucket.try_acquire(): ...
    """

    __slots__ = ()

    def __new__(
        cls, rate: float, capacity: float = 1, *, backend: RedisBackend | None = None, key: str | None = None
    ) -> TokenBucket:
        try:
            limit = Limit(rate, per=1.0, algorithm="gcra", burst=capacity, guard=0.0)
        except ConfigError as err:
            raise _renamed(err, {"amount": "rate", "burst": "capacity"}) from None
        return super().__new__(cls, limits=[limit], backend=backend, key=key)

    def __init__(
        self, rate: float, capacity: float = 1, *, backend: RedisBackend | None = None, key: str | None = None
    ) -> None:
        super().__init__()


class SlidingWindow(HolySheepRateLimiter):
    """At most ``limit`` admissions in any interval of ``window_s`` seconds (an exact log).

        window = SlidingWindow(limit=100, window_s=60)
    """

    __slots__ = ()

    def __new__(
        cls, limit: float, window_s: float, *, backend: RedisBackend | None = None, key: str | None = None
    ) -> SlidingWindow:
        try:
            spec = Limit(limit, per=window_s)
        except ConfigError as err:
            raise _renamed(err, {"amount": "limit", "per": "window_s"}) from None
        return super().__new__(cls, limits=[spec], backend=backend, key=key)

    def __init__(
        self, limit: float, window_s: float, *, backend: RedisBackend | None = None, key: str | None = None
    ) -> None:
        super().__init__()


class ConcurrencyLimiter(HolySheepRateLimiter):
    """At most ``n`` holders at once, no rate limit: an asyncio- and thread-friendly semaphore that
    serves waiters in arrival order.

        gate = ConcurrencyLimiter(20)
        async with gate: ...
    """

    __slots__ = ()

    def __new__(cls, n: int, *, backend: RedisBackend | None = None, key: str | None = None) -> ConcurrencyLimiter:
        try:
            return super().__new__(cls, max_concurrency=n, backend=backend, key=key)
        except ConfigError as err:
            raise _renamed(err, {"max_concurrency": "n"}) from None

    def __init__(self, n: int, *, backend: RedisBackend | None = None, key: str | None = None) -> None:
        super().__init__()
