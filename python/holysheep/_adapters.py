"""What the framework adapters (`holysheep.langchain`, `holysheep.llama_index`) admit requests through:
a `HolySheepRateLimiter` (of this process or shared in Redis), or one key of a `KeyedLimiter`.

An admission is taken with the limiter's own `_Admission` where the limiter gives one (then a settled
token count and the concurrency slot go back through it), waited for on the running loop or in the
thread with the GIL released: no polling, no helper thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from typing import Callable, Protocol, Union

from holysheep._holysheep import _Admission, _check_count, _check_timeout
from holysheep._keyed import KeyedLimiter
from holysheep._limiter import HolySheepRateLimiter
from holysheep.errors import ConfigError, RateLimitExceeded

__all__ = ["AnyLimiter", "Gate", "Held", "check_tokens"]

#: What an adapter accepts as ``limiter=``.
AnyLimiter = Union[HolySheepRateLimiter, KeyedLimiter]

#: The most tokens one request may carry: what fits 64 bits.
_MAX_TOKENS = 2**64 - 1


class Held(Protocol):
    """One admitted request until it ends: ``settle`` the real token count, then ``release`` once."""

    def settle(self, actual_tokens: int) -> None: ...

    def release(self) -> None: ...


class _Counted:
    """An admission the limiter keeps no handle for (a no-wait admission in Redis, a key of a GCRA
    table): its tokens stay counted as estimated; ending it returns its concurrency slot, if any."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release

    def settle(self, actual_tokens: int) -> None:
        """Nothing to adjust: the limiter kept no handle on this admission's count."""

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def check_tokens(field: str, tokens: object) -> int:
    """``tokens`` as an int from 0 that fits 64 bits, else ConfigError naming ``field``."""
    return _check_count(field, tokens, 0, _MAX_TOKENS)


class Gate:
    """A limiter, or one key of a `KeyedLimiter`, with the timeout every admission waits at most.

    :raises ConfigError: ``limiter`` is neither kind; ``key`` missing for a `KeyedLimiter`, given for
        another limiter, or unhashable; ``timeout`` negative or NaN.
    """

    __slots__ = ("_fixed_counts_tokens", "_fixed_holds_slots", "_key", "_limiter", "timeout")

    def __init__(self, limiter: AnyLimiter, key: Hashable | None, timeout: float | None) -> None:
        if isinstance(limiter, KeyedLimiter):
            if key is None:
                raise ConfigError("key: a KeyedLimiter needs the key this adapter's requests count under", "key")
            try:
                hash(key)
            except TypeError:
                raise ConfigError(f"key: must be hashable (a str, an int, a tuple...), got {key!r}", "key") from None
        elif isinstance(limiter, HolySheepRateLimiter):
            if key is not None:
                raise ConfigError("key: only a KeyedLimiter takes a key; this limiter is one limit", "key")
        else:
            raise ConfigError(
                f"limiter: must be a HolySheepRateLimiter or a KeyedLimiter, got {type(limiter).__name__}", "limiter"
            )
        self._limiter = limiter
        self._key = key
        self.timeout = _check_timeout("timeout", timeout)
        #: A limiter's concurrency cap is fixed when it is made; a key's limiter is made on first use.
        self._fixed_holds_slots = isinstance(limiter, HolySheepRateLimiter) and limiter.max_concurrency is not None
        self._fixed_counts_tokens = isinstance(limiter, HolySheepRateLimiter) and _counts_tokens(limiter)

    @property
    def limiter(self) -> AnyLimiter:
        return self._limiter

    def _one(self) -> HolySheepRateLimiter | None:
        """The limiter that decides this gate's requests; None for a key of a keyed GCRA table.

        :raises RateLimitExceeded: a new key while the keyed limiter has no room for it.
        """
        if isinstance(self._limiter, HolySheepRateLimiter):
            return self._limiter
        one = self._limiter[self._key]
        return one if isinstance(one, HolySheepRateLimiter) else None

    def holds_slots(self) -> bool:
        """Whether an admission holds a concurrency slot until released (a limiter with ``max_concurrency``)."""
        if isinstance(self._limiter, HolySheepRateLimiter):
            return self._fixed_holds_slots
        try:
            one = self._one()
        except RateLimitExceeded:
            return False  # nothing made yet to hold anything; admitting will say why it waits
        return one is not None and one.max_concurrency is not None

    def counts_tokens(self) -> bool:
        """Whether a limit counts tokens or dollars (``tpm``, ``unit="tokens"`` or ``"usd"``), so a request
        counted with no tokens would not be limited by it. (A key of a keyed GCRA table says False: the
        table does not show its limits.)"""
        if isinstance(self._limiter, HolySheepRateLimiter):
            return self._fixed_counts_tokens
        try:
            one = self._one()
        except RateLimitExceeded:
            return False
        return one is not None and _counts_tokens(one)

    # --- a request counted and nothing kept: for gates that hold no slots (`holds_slots` False) ---

    def take_now(self, tokens: int) -> bool:
        """Counts one request if the limits allow it now; never waits (beyond one Redis round trip).

        :raises RateLimitExceeded: ``tokens`` more than a limit could ever admit.
        """
        try:
            one = self._one()
        except RateLimitExceeded:
            return False
        if one is None:
            assert isinstance(self._limiter, KeyedLimiter)
            return self._limiter.try_acquire(self._key, tokens)
        return one.try_acquire(tokens)

    def take(self, tokens: int) -> Awaitable[None]:
        """Counts one request when awaited, waiting on the running loop (at most ``timeout``); cancelling
        gives it back. The limiter's own awaitable, not a coroutine around it: this is the hot path.

        :raises RateLimitExceeded: out of time, or a cost no limit can ever admit (at once).
        """
        one = self._one()
        if one is None:
            assert isinstance(self._limiter, KeyedLimiter)
            return self._limiter.acquire(self._key, tokens, self.timeout)
        return one.acquire(tokens, self.timeout)

    def take_blocking(self, tokens: int) -> None:
        """`take` for threads: blocks with the GIL released."""
        one = self._one()
        if one is None:
            assert isinstance(self._limiter, KeyedLimiter)
            self._limiter.acquire_blocking(self._key, tokens, self.timeout)
        else:
            one.acquire_blocking(tokens, self.timeout)

    # --- a request's admission, kept to settle its tokens and release its slot ---

    def admit_now(self, tokens: int, price: float = 0.0) -> Held | None:
        """The admission if the limits allow it now, else None; never waits (beyond one Redis round trip).

        :raises RateLimitExceeded: ``tokens`` more than a limit could ever admit.
        """
        try:
            one = self._one()
        except RateLimitExceeded:
            return None
        if one is None:
            assert isinstance(self._limiter, KeyedLimiter)
            return _Counted(None) if self._limiter.try_acquire(self._key, tokens) else None
        admission = one._admit_at_once(tokens, price)
        if admission is not None:
            return _stamped(admission)
        if one.backend is None or not one.try_acquire(tokens):  # Redis decides no-wait admissions here
            return None
        return _Counted(one.release if one.max_concurrency is not None else None)

    async def admit(self, tokens: int, price: float = 0.0) -> Held:
        """The admission, waited for on the running loop (at most ``timeout``); cancelling gives it back.

        :raises RateLimitExceeded: out of time, or a cost no limit can ever admit (at once).
        """
        one = self._one()
        if one is None:
            assert isinstance(self._limiter, KeyedLimiter)
            await self._limiter.acquire(self._key, tokens, self.timeout)
            return _Counted(None)
        admission = one._admit_at_once(tokens, price) or await one._admit(tokens, self.timeout, price)
        return _stamped(admission)

    def admit_blocking(self, tokens: int, price: float = 0.0) -> Held:
        """`admit` for threads: blocks with the GIL released."""
        one = self._one()
        if one is None:
            assert isinstance(self._limiter, KeyedLimiter)
            self._limiter.acquire_blocking(self._key, tokens, self.timeout)
            return _Counted(None)
        return _stamped(one._admit_blocking(tokens, self.timeout, price))


def _counts_tokens(limiter: HolySheepRateLimiter) -> bool:
    return any(limit.unit != "requests" for limit in limiter.limits)


def _stamped(admission: _Admission) -> _Admission:
    """The admission, marked sent now: an adapter's request leaves as soon as it is admitted."""
    admission.stamp()
    return admission
