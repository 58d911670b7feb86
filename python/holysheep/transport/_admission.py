"""How the transport takes one request's admission: the only place it calls the limiter.

From then on it holds the limiter's own `_Admission` and only calls its methods: `stamp` when the
request's body starts out on the connection (just after its headers), `observe` the answer's status
and headers, `settle` the real token count, and `release` it once, when the exchange or its body ends
(`give_back` if it was never sent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from holysheep._holysheep import _Admission as Admission

if TYPE_CHECKING:
    from holysheep._holysheep import HolySheepRateLimiter

__all__ = ["Admission", "admit_blocking", "admit_now", "admit_waiting"]


def admit_now(limiter: HolySheepRateLimiter, tokens: int, price: float) -> Admission | None:
    """The admission when nobody waits and all is free, else None (the request must wait its turn)."""
    return limiter._admit_at_once(tokens, price)


async def admit_waiting(
    limiter: HolySheepRateLimiter, tokens: int, price: float, timeout: float | None, priority: int
) -> Admission:
    """The admission, waited for on the running loop, ahead of waiters of lower ``priority``."""
    return await limiter._admit(tokens, timeout, price, priority)


def admit_blocking(
    limiter: HolySheepRateLimiter, tokens: int, price: float, timeout: float | None, priority: int
) -> Admission:
    """The admission, waited for in this thread (the GIL released), ahead of waiters of lower ``priority``."""
    return limiter._admit_blocking(tokens, timeout, price, priority)
