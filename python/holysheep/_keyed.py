"""`KeyedLimiter`: the same limits applied to each key (user, API key, endpoint, model) on its own."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Callable, Union

from holysheep._holysheep import Limit, _KeyedTable
from holysheep._limiter import HolySheepRateLimiter
from holysheep._waiting import sleep_exactly

__all__ = ["KeyedLimiter"]

LimiterFactory = Callable[[Hashable], HolySheepRateLimiter]
KeyedConfig = Union[Limit, Sequence[Limit], LimiterFactory]


class _PerKeyLimiters:
    """A limiter made per key by a factory, least recently used first; idle ones are forgotten."""

    __slots__ = ("_factory", "_idle_ttl", "_last_used", "_limiters", "_max_keys")

    def __init__(self, factory: LimiterFactory, max_keys: int, idle_ttl: float) -> None:
        self._factory = factory
        self._max_keys = max_keys
        self._idle_ttl = idle_ttl
        self._limiters: OrderedDict[Hashable, HolySheepRateLimiter] = OrderedDict()
        self._last_used: dict[Hashable, float] = {}

    def get(self, key: Hashable) -> HolySheepRateLimiter:
        now = time.monotonic()
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = self._factory(key)
            self._last_used[key] = now
            self._forget(now)
        else:
            self._limiters.move_to_end(key)
            self._last_used[key] = now
        return limiter

    @staticmethod
    def _busy(limiter: HolySheepRateLimiter) -> bool:
        stats = limiter.stats()
        return bool(stats["in_flight"] or stats["waiting"])

    def _forget(self, now: float) -> None:
        """Drops idle limiters from the least recently used end: any past the idle time, and then as
        many as needed to stay within max_keys. A limiter in use is never dropped."""
        doomed: list[Hashable] = []
        excess = len(self._limiters) - self._max_keys
        for key, limiter in self._limiters.items():
            idle = now - self._last_used[key] >= self._idle_ttl
            if not (idle or len(doomed) < excess):
                break
            if not self._busy(limiter):
                doomed.append(key)
        for key in doomed:
            del self._limiters[key]
            del self._last_used[key]

    def __len__(self) -> int:
        return len(self._limiters)


class KeyedLimiter:
    """The same limits for each key on its own: per user, API key, endpoint or model.

        per_user = KeyedLimiter(Limit(20, per="minute", algorithm="gcra", burst=5))
        await per_user.acquire(user_id)

        per_model = KeyedLimiter(lambda model: HolySheepRateLimiter(rpm=60, max_concurrency=4))
        async with per_model[model]: ...

    Given GCRA limits, each key costs 8 bytes plus 8 per limit in a compact native table (a million
    keys fit in tens of megabytes); a key unused until its limits have refilled is forgotten without
    loss. Given other limits or a factory, each key gets its own `HolySheepRateLimiter` (the full API,
    concurrency included), made on first use.

    :param limits_or_factory: a `Limit`, a list of them, or a function from key to limiter.
    :param max_keys: the most keys kept; beyond it the key closest to refilled (table) or the least
        recently used idle limiter (factory) is forgotten first.
    :param idle_ttl: seconds after which an unused key is forgotten.
    :raises ConfigError: a bad limit, ``max_keys`` below 1 or a negative ``idle_ttl``.
    """

    __slots__ = ("_per_key", "_table")

    def __init__(self, limits_or_factory: KeyedConfig, *, max_keys: int = 100_000, idle_ttl: float = 600.0) -> None:
        self._table: _KeyedTable | None = None
        self._per_key: _PerKeyLimiters | None = None
        if isinstance(limits_or_factory, Limit):
            limits_or_factory = [limits_or_factory]
        if callable(limits_or_factory):
            factory = limits_or_factory
        else:
            limits = list(limits_or_factory)
            if limits and all(limit.algorithm == "gcra" for limit in limits):
                self._table = _KeyedTable(limits, max_keys, idle_ttl)
                return
            HolySheepRateLimiter(limits=limits)  # refuses a bad config now, not at the first key

            def factory(key: Hashable) -> HolySheepRateLimiter:
                return HolySheepRateLimiter(limits=limits)

        _KeyedTable.check_bounds(max_keys, idle_ttl)
        self._per_key = _PerKeyLimiters(factory, max_keys, idle_ttl)

    def __getitem__(self, key: Hashable) -> HolySheepRateLimiter | _KeyHandle:
        """The limiter for ``key``, for ``async with keyed[key]:`` (and ``with`` from threads)."""
        if self._per_key is not None:
            return self._per_key.get(key)
        return _KeyHandle(self, key)

    def _limiter(self, key: Hashable) -> HolySheepRateLimiter:
        assert self._per_key is not None, "a per-key limiter exists only without a GCRA table"
        return self._per_key.get(key)

    def try_acquire(self, key: Hashable, tokens: int = 0) -> bool:
        """Admits one request for ``key`` now if its limits allow; never waits."""
        if self._table is not None:
            return self._table.try_acquire(key, tokens)
        return self._limiter(key).try_acquire(tokens)

    async def acquire(self, key: Hashable, tokens: int = 0, timeout: float | None = None) -> None:
        """Waits until ``key`` may send one request; requests for one key pass in arrival order.

        :raises RateLimitExceeded: at once, when the wait would pass ``timeout`` or never ends.
        """
        if self._table is None:
            await self._limiter(key).acquire(tokens, timeout)
            return
        wait, receipt = self._table.reserve(key, tokens, timeout)
        if wait > 0.0:
            try:
                await sleep_exactly(wait)
            except BaseException:
                self._table.give_back(key, tokens, receipt)
                raise

    def acquire_blocking(self, key: Hashable, tokens: int = 0, timeout: float | None = None) -> None:
        """`acquire` for threads: blocks with the GIL released."""
        if self._table is None:
            self._limiter(key).acquire_blocking(tokens, timeout)
            return
        wait, _ = self._table.reserve(key, tokens, timeout)
        if wait > 0.0:
            time.sleep(wait)

    def release(self, key: Hashable) -> None:
        """Returns the concurrency slot of ``key`` (per-key limiters only; GCRA limits hold none)."""
        if self._per_key is not None:
            self._limiter(key).release()

    def time_until_ready(self, key: Hashable, tokens: int = 0) -> float:
        """Seconds until ``key`` may send one request; 0.0 when now."""
        if self._table is not None:
            return self._table.time_until_ready(key, tokens)
        return self._limiter(key).time_until_ready(tokens)

    def __len__(self) -> int:
        """Keys held now."""
        if self._table is not None:
            return len(self._table)
        assert self._per_key is not None
        return len(self._per_key)

    def __repr__(self) -> str:
        kind = "table" if self._table is not None else "per-key limiters"
        return f"<KeyedLimiter {kind} keys={len(self)}>"


class _KeyHandle:
    """``keyed[key]`` over a GCRA table: ``async with`` / ``with`` waits for that key."""

    __slots__ = ("_key", "_keyed")

    def __init__(self, keyed: KeyedLimiter, key: Hashable) -> None:
        self._keyed = keyed
        self._key = key

    async def __aenter__(self) -> None:
        await self._keyed.acquire(self._key)

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def __enter__(self) -> None:
        self._keyed.acquire_blocking(self._key)

    def __exit__(self, *exc_info: object) -> None:
        return None
