"""Quota-aware model choice (``quota_floor=``): what the gateway says is left of the hour's and the day's
quota, and what a request should do about it.

The periods come from ``GET /v1/quota`` (HolySheep and MockGateway serve it: limit, remaining and reset
per minute, hour and day, in requests and tokens), read when a request first needs it and again once the
reading is a minute old. In between, each answer counts the hour's and the day's remaining requests
down by one (an underestimate: admissions leaving a sliding window are not added back), and its
``x-ratelimit-*`` headers (the tightest limit of each unit) set the period whose limit they name. Where
``/v1/quota`` is not served, headers whose reset is more than a minute away are taken as the hour's.

A request whose model has cheaper fallbacks (``fallback_models=``, by `holysheep.pricing`) goes to the
next cheaper one while the hour's remaining is below ``quota_floor`` of its limit; while the day's is
spent, every request raises `RateLimitExceeded` with ``retry_after`` until the day's reset, unsent.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from holysheep.errors import ConfigError, RateLimitExceeded

__all__ = ["QuotaWatch", "checked_floor", "quota_path"]

#: The units and the periods a quota is read in.
UNITS = ("requests", "tokens")
PERIODS = ("hour", "day")
#: Seconds after which ``/v1/quota`` is read again.
REFRESH_S = 60.0
#: Without ``/v1/quota``, headers whose reset is further away than this are the hour's.
_LONGER_THAN_A_MINUTE_S = 60.0
#: A Go-style duration as in ``x-ratelimit-reset-*``: ``"1h2m5.25s"``, ``"450ms"``, ``"7.5s"``.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def checked_floor(quota_floor: object) -> float | None:
    """``quota_floor`` if it is a fraction above 0 and below 1, or None.

    :raises ConfigError: anything else (``field == "quota_floor"``).
    """
    if quota_floor is None:
        return None
    number = isinstance(quota_floor, (int, float)) and not isinstance(quota_floor, bool)
    if not (number and 0.0 < quota_floor < 1.0):  # type: ignore[operator]
        raise ConfigError(
            f"quota_floor: must be a fraction of the hour's quota above 0 and below 1 (e.g. 0.2) or None, got {quota_floor!r}",
            "quota_floor",
        )
    return float(quota_floor)  # type: ignore[arg-type]


def quota_path(path: str) -> str | None:
    """The path of ``/v1/quota`` beside a request's path (``/v1/chat/completions`` → ``/v1/quota``), or
    None when the path has no ``/v1`` to go by."""
    head, found, _ = path.rpartition("/v1/")
    return f"{head}/v1/quota" if found else None


def _seconds(duration: str | None) -> float | None:
    if not duration:
        return None
    parts = _DURATION_PART.findall(duration)
    if not parts:
        try:
            return float(duration)
        except ValueError:
            return None
    return sum(float(amount) * _UNIT_S[unit] for amount, unit in parts)


def _count(value: object) -> int | None:
    try:
        count = int(str(value))
    except ValueError:
        return None
    return count if count >= 0 else None


class _Headroom:
    """Where one period's limit of one unit stands."""

    __slots__ = ("limit", "remaining", "resets_at")

    def __init__(self, limit: int, remaining: float, resets_at: float) -> None:
        self.limit = limit
        self.remaining = remaining
        self.resets_at = resets_at

    def left(self, now: float) -> float:
        """What is left now: the whole limit once its reset has passed."""
        return float(self.limit) if now >= self.resets_at else self.remaining


class QuotaWatch:
    """The hour's and the day's quota as the gateway reports it (see the module)."""

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self._periods: dict[tuple[str, str], _Headroom] = {}
        #: When ``/v1/quota`` was last read (or asked for); None before.
        self._read_at: float | None = None
        #: False once ``/v1/quota`` answered that it is not served.
        self.served = True
        self._lock = threading.Lock()

    def claim_reading(self, now: float) -> bool:
        """Whether ``/v1/quota`` should be read now; claims it, so concurrent requests read it once."""
        with self._lock:
            if not self.served or (self._read_at is not None and now - self._read_at < REFRESH_S):
                return False
            self._read_at = now
            return True

    def read(self, status: int, answer: object, now: float) -> None:
        """``/v1/quota``'s answer: its status and, for a 200, its JSON."""
        if status == 404:
            self.served = False
            return
        if status != 200 or not isinstance(answer, Mapping):
            return
        with self._lock:
            for unit in UNITS:
                periods = answer.get(unit)
                for period in PERIODS:
                    stand = periods.get(period) if isinstance(periods, Mapping) else None
                    if not isinstance(stand, Mapping):
                        continue
                    limit, remaining = _count(stand.get("limit")), _count(stand.get("remaining"))
                    reset = stand.get("reset_seconds")
                    if limit is None or remaining is None or not isinstance(reset, (int, float)):
                        continue
                    self._periods[unit, period] = _Headroom(limit, remaining, now + float(reset))

    def observe(self, headers: Any, now: float) -> None:
        """One more request answered, and its ``x-ratelimit-*`` headers."""
        with self._lock:
            for (unit, _), stand in self._periods.items():
                if unit == "requests":
                    stand.remaining = max(stand.left(now) - 1.0, 0.0)
            for unit in UNITS:
                limit = _count(headers.get(f"x-ratelimit-limit-{unit}"))
                remaining = _count(headers.get(f"x-ratelimit-remaining-{unit}"))
                reset = _seconds(headers.get(f"x-ratelimit-reset-{unit}"))
                if limit is not None and remaining is not None and reset is not None:
                    self._heard(unit, limit, remaining, now + reset)

    def _heard(self, unit: str, limit: int, remaining: int, resets_at: float) -> None:
        """What the headers say of the tightest limit of ``unit``: it is the period of that limit whose
        reset is the nearest to theirs (the hour's and the day's may have the same limit)."""
        named = [stand for (u, _), stand in self._periods.items() if u == unit and stand.limit == limit]
        if named:
            stand = min(named, key=lambda one: abs(one.resets_at - resets_at))
            stand.remaining, stand.resets_at = remaining, resets_at
        elif not self.served and resets_at - time.monotonic() > _LONGER_THAN_A_MINUTE_S:
            self._periods[unit, "hour"] = _Headroom(limit, remaining, resets_at)

    def below_floor(self, now: float) -> bool:
        """Whether the hour's remaining is below the floor, in any unit."""
        with self._lock:
            return any(
                stand.left(now) < self.floor * stand.limit
                for (_, period), stand in self._periods.items()
                if period == "hour"
            )

    def refuse_if_day_spent(self, now: float) -> None:
        """:raises RateLimitExceeded: the day's quota is spent, with ``retry_after`` until its reset."""
        with self._lock:
            spent = [
                (stand.resets_at - now, unit, stand)
                for (unit, period), stand in self._periods.items()
                if period == "day" and stand.left(now) <= 0
            ]
        if not spent:
            return
        retry_after, unit, stand = max(spent, key=lambda item: item[0])
        raise RateLimitExceeded(
            f"the day's quota of {stand.limit} {unit} is spent (gateway's /v1/quota and x-ratelimit-* headers); "
            f"it is whole again in {math.ceil(retry_after)}s: not sent",
            retry_after=retry_after,
            limit=f"{stand.limit} {unit} per day",
            remaining=0.0,
        )
