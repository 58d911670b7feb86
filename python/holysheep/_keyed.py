"""`KeyedLimiter`: the same limits applied to each key (user, API key, endpoint, model) on its own."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Callable, NoReturn, TypeVar, Union

from holysheep._holysheep import Limit, _check_count, _check_timeout, _KeyedTable
from holysheep._limiter import HolySheepRateLimiter
from holysheep._waiting import sleep_exactly
from holysheep.errors import ConfigError, RateLimitExceeded

__all__ = ["KeyedLimiter"]

LimiterFactory = Callable[[Hashable], HolySheepRateLimiter]
KeyedConfig = Union[Limit, Sequence[Limit], LimiterFactory]

_T = TypeVar("_T")

#: The most tokens one request may carry: what fits 64 bits.
_MAX_TOKENS = 2**64 - 1


def _refuse_key(key: object) -> NoReturn:
    raise ConfigError(f"key: must be hashable (a str, an int, a tuple...), got {key!r}", "key") from None


class _PerKeyLimiters:
    """A limiter made per key by a factory, least recently used first.

    A key is forgotten only while its limiter holds nothing: no waiter, no held slot (when it has a
    concurrency cap) and every window back to what it held when made. Forgetting a limiter that still
    counts admissions would let its key start over, past its limits.
    """

    __slots__ = ("_factory", "_full", "_idle_ttl", "_last_used", "_limiters", "_lock", "_max_keys")

    def __init__(self, factory: LimiterFactory, max_keys: int, idle_ttl: float) -> None:
        self._factory = factory
        self._max_keys = max_keys
        self._idle_ttl = idle_ttl
        self._limiters: OrderedDict[Hashable, HolySheepRateLimiter] = OrderedDict()
        self._last_used: dict[Hashable, float] = {}
        #: What each limiter's windows held when it was made: it holds nothing once they are back there.
        self._full: dict[Hashable, dict[str, float]] = {}
        #: Threads share the table: a sweep must not see it change under it.
        self._lock = threading.RLock()

    def get(self, key: Hashable) -> HolySheepRateLimiter:
        """The limiter of ``key``, made on first use.

        :raises RateLimitExceeded: ``key`` is new and every key held still counts something.
        """
        with self._lock:
            return self._get(key, time.monotonic())

    def _get(self, key: Hashable, now: float) -> HolySheepRateLimiter:
        try:
            limiter = self._limiters.get(key)
        except TypeError:
            _refuse_key(key)
        if limiter is not None:
            self._limiters.move_to_end(key)
            self._last_used[key] = now
            return limiter
        self._forget_idle(now)
        if len(self._limiters) >= self._max_keys:
            self._make_room(key, now)
        limiter = self._factory(key)
        if not isinstance(limiter, HolySheepRateLimiter):
            raise ConfigError(
                f"limits_or_factory: the factory must return a HolySheepRateLimiter, got {limiter!r} for key {key!r}",
                "limits_or_factory",
            )
        self._limiters[key] = limiter
        self._last_used[key] = now
        self._full[key] = dict(limiter.stats()["remaining"] or {})
        return limiter

    def _frees_in(self, key: Hashable, now: float) -> float | None:
        """0.0 when the limiter of ``key`` holds nothing, so forgetting it loses nothing; None while it
        holds a slot (with a concurrency cap) or a waiter, whose end nothing foretells; else, as its
        windows still count admissions, an estimate of when they will not: one period (plus guard)
        after its last use here, or from now if that has passed (it waited, so it was admitted later)."""
        limiter = self._limiters[key]
        stats = limiter.stats()
        if stats["waiting"] or (limiter.max_concurrency is not None and stats["in_flight"]):
            return None
        # None: a shared limiter cannot reach its backend now, so it cannot say: keep it.
        remaining: dict[str, float] | None = stats["remaining"]
        if remaining is not None and all(remaining.get(name, 0.0) >= full for name, full in self._full[key].items()):
            return 0.0
        longest = max((limit.per + limit.guard for limit in limiter.limits), default=0.0)
        since_use = now - self._last_used[key]
        return longest - since_use if since_use < longest else longest

    def _drop(self, key: Hashable) -> None:
        del self._limiters[key], self._last_used[key], self._full[key]

    def _forget_idle(self, now: float) -> None:
        """Forgets the limiters unused for ``idle_ttl`` that hold nothing."""
        expired = list(itertools.takewhile(lambda key: now - self._last_used[key] >= self._idle_ttl, self._limiters))
        for key in expired:
            if self._frees_in(key, now) == 0.0:
                self._drop(key)

    def _make_room(self, new_key: Hashable, now: float) -> None:
        """Forgets the least recently used limiter that holds nothing, or refuses ``new_key``: one pass,
        so a refusal costs one ``stats()`` per key held."""
        estimates = []
        for key in self._limiters:
            frees_in = self._frees_in(key, now)
            if frees_in == 0.0:
                self._drop(key)
                return
            if frees_in is not None:
                estimates.append(frees_in)
        retry_after = min(estimates, default=None)
        when = "when is not known" if retry_after is None else f"in about {retry_after:.3f}s"
        raise RateLimitExceeded(
            f"acquire: all max_keys={self._max_keys} keys still count admissions or hold slots, so key "
            f"{new_key!r} may start {when} (forgetting a key that still counts would let it pass its limits again)",
            retry_after=retry_after,
            limit=f"max_keys={self._max_keys}",
            remaining=0.0,
        )

    def held(self, key: Hashable) -> HolySheepRateLimiter | None:
        """The limiter of ``key`` if it is held now; never makes one."""
        try:
            return self._limiters.get(key)
        except TypeError:
            _refuse_key(key)

    def __len__(self) -> int:
        return len(self._limiters)


def _keyed_config(limits_or_factory: object) -> list[Limit] | LimiterFactory:
    """The limits given, as a list, or the factory; ConfigError for anything else."""
    if isinstance(limits_or_factory, Limit):
        return [limits_or_factory]
    if callable(limits_or_factory):
        return limits_or_factory
    expected = "a Limit, a list of them, or a function from key to HolySheepRateLimiter"
    if isinstance(limits_or_factory, Sequence) and not isinstance(limits_or_factory, (str, bytes)):
        limits = list(limits_or_factory)
        if limits and all(isinstance(limit, Limit) for limit in limits):
            return limits
    raise ConfigError(f"limits_or_factory: must be {expected}, got {limits_or_factory!r}", "limits_or_factory")


class KeyedLimiter:
    """The same limits for each key on its own: per user, API key, endpoint or model.

        per_user = KeyedLimiter(Limit(20, per="minute", algorithm="gcra", burst=5))
        await per_user.acquire(user_id)

        per_model = KeyedLimiter(lambda model: HolySheepRateLimiter(rpm=60, max_concurrency=4))
        async with per_model[model]: ...

    Given GCRA limits, each key costs 8 bytes plus 8 per limit in a compact native table (a million
    keys fit in tens of megabytes). Given other limits or a factory, each key gets its own
    `HolySheepRateLimiter` (the full API, concurrency included), made on first use.

    A key is forgotten only once it holds nothing: its limits have refilled (every admission has left
    every window), and, for a limiter with ``max_concurrency``, no slot is held and nobody waits.
    Forgetting a key that still counts admissions would let it start over, past its limits. So when
    all ``max_keys`` keys still count something, a NEW key is refused at once: `try_acquire` returns
    False, `acquire` and ``keyed[key]`` raise `RateLimitExceeded` with ``limit="max_keys=N"`` and
    ``retry_after`` the seconds until a key may be forgotten (exact for GCRA limits; for per-key
    limiters an estimate, or None while every key holds a slot or a waiter), and `time_until_ready`
    says as much. Refusing rather than waiting: room does not come in any order a waiter could hold a
    place in (a key frees only when its own user leaves it alone), and a full table means more active
    keys than ``max_keys`` allows, which the caller should see rather than sit out. Keys already held
    are served as always. Per-key limiters are looked at one by one (``stats()``) when the table is
    full, so keep ``max_keys`` in the thousands there; the GCRA table looks only where a key may be
    fresh again.

    :param limits_or_factory: a `Limit`, a list of them, or a function from key to limiter.
    :param max_keys: the most keys held at once (an int from 1).
    :param idle_ttl: seconds after which an unused key that holds nothing is forgotten, as new keys
        arrive (keys that hold nothing also make room for new keys whenever the table is full).
    :raises ConfigError: a bad limit, ``max_keys`` not an int from 1, ``idle_ttl`` not a number of
        seconds from 0; each named in ``.field``.
    """

    __slots__ = ("_per_key", "_table")

    def __init__(self, limits_or_factory: KeyedConfig, *, max_keys: int = 100_000, idle_ttl: float = 600.0) -> None:
        self._table: _KeyedTable | None = None
        self._per_key: _PerKeyLimiters | None = None
        config = _keyed_config(limits_or_factory)
        _KeyedTable.check_bounds(max_keys, idle_ttl)
        if callable(config):
            factory = config
        elif all(limit.algorithm == "gcra" for limit in config):
            self._table = _named_limits_or_factory(lambda: _KeyedTable(config, max_keys, idle_ttl))
            return
        else:
            limits = config
            _named_limits_or_factory(lambda: HolySheepRateLimiter(limits=limits))  # refuses a bad config now

            def factory(key: Hashable) -> HolySheepRateLimiter:
                return HolySheepRateLimiter(limits=limits)

        self._per_key = _PerKeyLimiters(factory, max_keys, idle_ttl)

    def __getitem__(self, key: Hashable) -> HolySheepRateLimiter | _KeyHandle:
        """The limiter for ``key``, for ``async with keyed[key]:`` (and ``with`` from threads).

        :raises RateLimitExceeded: ``key`` is new and the table has no room (see the class).
        """
        if self._per_key is not None:
            return self._per_key.get(key)
        try:
            hash(key)
        except TypeError:
            _refuse_key(key)
        return _KeyHandle(self, key)

    def _limiter(self, key: Hashable, tokens: int, timeout: float | None = None) -> HolySheepRateLimiter:
        """The per-key limiter of ``key``, the call's arguments checked first."""
        assert self._per_key is not None, "a per-key limiter exists only without a GCRA table"
        _check_count("tokens", tokens, 0, _MAX_TOKENS)
        _check_timeout("timeout", timeout)
        return self._per_key.get(key)

    def try_acquire(self, key: Hashable, tokens: int = 0) -> bool:
        """Admits one request for ``key`` now if its limits allow (and, for a new key, the table has
        room); never waits."""
        if self._table is not None:
            return self._table.try_acquire(key, tokens)
        try:
            limiter = self._limiter(key, tokens)
        except RateLimitExceeded:
            return False
        return limiter.try_acquire(tokens)

    async def acquire(self, key: Hashable, tokens: int = 0, timeout: float | None = None) -> None:
        """Waits until ``key`` may send one request; requests for one key pass in arrival order.

        :raises RateLimitExceeded: at once, when the wait would pass ``timeout`` or never ends, or when
            ``key`` is new and every key held still counts something (see the class).
        """
        if self._table is None:
            await self._limiter(key, tokens, timeout).acquire(tokens, timeout)
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
            self._limiter(key, tokens, timeout).acquire_blocking(tokens, timeout)
            return
        wait, _ = self._table.reserve(key, tokens, timeout)
        if wait > 0.0:
            time.sleep(wait)

    def release(self, key: Hashable) -> None:
        """Returns the concurrency slot of ``key`` (per-key limiters only; GCRA limits hold none)."""
        if self._per_key is not None:
            # A key holding a slot is never forgotten: one not held has nothing to release.
            limiter = self._per_key.held(key)
            if limiter is not None:
                limiter.release()

    def time_until_ready(self, key: Hashable, tokens: int = 0) -> float:
        """Seconds until ``key`` may send one request; 0.0 when now. For a new key while the table is
        full, the seconds until room (inf when every key holds a slot or a waiter)."""
        if self._table is not None:
            return self._table.time_until_ready(key, tokens)
        try:
            limiter = self._limiter(key, tokens)
        except RateLimitExceeded as no_room:
            return math.inf if no_room.retry_after is None else no_room.retry_after
        return limiter.time_until_ready(tokens)

    def __len__(self) -> int:
        """Keys held now."""
        if self._table is not None:
            return len(self._table)
        assert self._per_key is not None
        return len(self._per_key)

    def __repr__(self) -> str:
        kind = "table" if self._table is not None else "per-key limiters"
        return f"<KeyedLimiter {kind} keys={len(self)}>"


def _named_limits_or_factory(make: Callable[[], _T]) -> _T:
    """``make()``, a ConfigError about its limits named after the argument they came in."""
    try:
        return make()
    except ConfigError as err:
        if err.field != "limits":
            raise
        raise ConfigError(f"limits_or_factory{str(err)[len('limits'):]}", "limits_or_factory") from None


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
