"""`HolySheepRateLimiter` (native: rate limits plus a concurrency cap, for asyncio and threads, over
this process or a Redis backend) and its presets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from holysheep._holysheep import HolySheepRateLimiter, Limit, Permit
from holysheep.errors import ConfigError

if TYPE_CHECKING:
    from holysheep._holysheep import RedisBackend

__all__ = ["ConcurrencyLimiter", "HolySheepRateLimiter", "Permit", "SlidingWindow", "TokenBucket"]


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
