"""One request's admission, as the transport holds it: the only place the transport calls the limiter.

The pipeline admits a request here (`admit_now`, `admit_waiting`, `admit_blocking`) and from then on
holds an `Admission` and only calls its methods: `stamp` when the request starts out on the connection,
`observe` the answer's status and headers, `settle` the real token count, and `release` the concurrency
slot once, when the exchange or its body ends. This adapter sits over today's limiter; the limiter's own
admission object will take its place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from holysheep._holysheep import _Reservation

if TYPE_CHECKING:
    from holysheep._limiter import Admitted, HolySheepRateLimiter

__all__ = ["Admission", "admit_blocking", "admit_now", "admit_waiting"]


class Admission:
    """What one request was admitted with, until it is released (once, by its owner)."""

    __slots__ = ("_admitted", "_limiter", "stamps")

    def __init__(self, limiter: HolySheepRateLimiter, admitted: Admitted) -> None:
        self._limiter = limiter
        self._admitted = admitted
        #: Whether its place in the windows moves to when the request is sent (not so in Redis, which
        #: counts a request at its own time).
        self.stamps = isinstance(admitted, _Reservation)

    def stamp(self) -> None:
        """The request starts out on the connection now: that is when a server counts it."""
        self._admitted.stamp()  # type: ignore[attr-defined]

    def observe(self, status: int, headers: Any) -> None:
        """The server's answer: 429s cut the rates in force, other answers let them climb back, and what
        the server says it has left (``x-ratelimit-*``) is held against our own count."""
        self._limiter._server_answered(status, self._admitted, headers)

    def settle(self, actual_tokens: int) -> None:
        """Replaces the estimated tokens by the count the server reported."""
        self._limiter._settle_admitted(self._admitted, actual_tokens)

    def release(self) -> None:
        """Gives the concurrency slot back (the request and its answer are done)."""
        self._limiter._release_admitted(self._admitted)


def admit_now(limiter: HolySheepRateLimiter, tokens: int, price: float) -> Admission | None:
    """The admission when nobody waits and all is free, else None (the request must wait its turn)."""
    admitted = limiter._admit_at_once(tokens, price)
    return None if admitted is None else Admission(limiter, admitted)


async def admit_waiting(limiter: HolySheepRateLimiter, tokens: int, price: float, timeout: float | None) -> Admission:
    """The admission, waited for on the running loop."""
    return Admission(limiter, await limiter._acquire(tokens, timeout, 0, price))


def admit_blocking(limiter: HolySheepRateLimiter, tokens: int, price: float, timeout: float | None) -> Admission:
    """The admission, waited for in this thread (the GIL released)."""
    return Admission(limiter, limiter._acquire_blocking(tokens, timeout, 0, price))
