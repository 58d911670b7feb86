"""What the failure policies admit while Redis is away: ``fail_open`` admissions that count nothing,
and ``local`` ones made by an in-process limiter at this process's share of each limit."""

from __future__ import annotations

from holysheep._holysheep import Limit, _Reservation
from holysheep._limiter import Admitted, HolySheepRateLimiter

__all__ = ["LocalAdmission", "OpenAdmission", "share"]


class OpenAdmission:
    """What ``fail_open`` admits while Redis is away: nothing to count, settle or return."""

    __slots__ = ("tokens",)
    wait = 0.0

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def settle(self, actual_tokens: int, wait: bool = True) -> None:
        self.tokens = actual_tokens

    def give_back(self, wait: bool = True) -> None:
        pass

    def release(self, wait: bool = True) -> None:
        pass


class LocalAdmission:
    """What ``local`` admits while Redis is away: a reservation and a slot of the in-process fallback."""

    __slots__ = ("_limiter", "_reservation")
    wait = 0.0

    def __init__(self, limiter: HolySheepRateLimiter, reservation: Admitted) -> None:
        self._limiter = limiter
        self._reservation = reservation

    @property
    def tokens(self) -> int:
        return self._reservation.tokens

    def settle(self, actual_tokens: int, wait: bool = True) -> None:
        self._reservation.settle(actual_tokens)

    def give_back(self, wait: bool = True) -> None:
        if isinstance(self._reservation, _Reservation):
            self._reservation.give_back()
        self._limiter.release()

    def release(self, wait: bool = True) -> None:
        self._limiter.release()


def share(limit: Limit, members: int) -> Limit:
    """One process's share of a limit: the amount (and a GCRA burst) divided among ``members``."""
    burst = None if limit.burst is None else max(1.0, limit.burst / members)
    return Limit(
        limit.amount / members,
        per=limit.per,
        unit="tokens" if limit.unit == "tokens" else "requests",
        algorithm="gcra" if limit.algorithm == "gcra" else "exact",
        burst=burst,
    )
