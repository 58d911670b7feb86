"""The limiters' own metrics, read from their `stats()` (and the breakers' states) when a sink
collects: one table both sinks read, so OpenTelemetry and Prometheus show the same numbers. Names
follow ASP.NET Core's ``aspnetcore.rate_limiting.*`` (requests by result, queued requests, active
leases, time in queue) under ``holysheep.*``; every reading carries ``holysheep.limiter``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from holysheep._holysheep import HolySheepRateLimiter
    from holysheep.metrics._recorder import Recorder

#: ``(value, attributes)``
Reading = tuple[float, dict[str, str]]

#: How long one collection's `stats()` of a limiter is reused by the instruments that read it (a
#: shared limiter's costs a round trip to Redis).
_FRESH_S = 0.1


@dataclass(frozen=True)
class Instrument:
    """An observable instrument: its OpenTelemetry name, kind, unit and what it reads."""

    name: str
    kind: Literal["counter", "updown", "gauge"]
    unit: str
    description: str
    read: Callable[[dict[str, Any], HolySheepRateLimiter], list[Reading]]


def label(limiter: HolySheepRateLimiter) -> str:
    """A limiter's name when none was given: its key when shared, else its limits."""
    if limiter.key is not None:
        return limiter.key
    parts = [str(limit) for limit in limiter.stats()["remaining"]]
    if limiter.max_concurrency is not None:
        parts.append(f"{limiter.max_concurrency} concurrent")
    return "; ".join(parts)


def _requests(stats: dict[str, Any], _: HolySheepRateLimiter) -> list[Reading]:
    result = "holysheep.rate_limiting.result"
    budget = stats.get("rejected_by_budget", 0)
    return [
        (stats["admitted"] - stats["waited"], {result: "admitted"}),
        (stats["waited"], {result: "waited"}),
        (stats["rejected"] - budget, {result: "rejected"}),
        (budget, {result: "budget"}),
    ]


def _remaining(stats: dict[str, Any], limiter: HolySheepRateLimiter) -> list[Reading]:
    remaining = stats.get("remaining") or {}
    return [
        (float(left), {"holysheep.limit": name, "holysheep.limit.unit": limit.unit})
        for limit, (name, left) in zip(limiter.limits, remaining.items())
    ]


def _shadow(stats: dict[str, Any], _: HolySheepRateLimiter) -> list[Reading]:
    if "would_wait" not in stats:
        return []
    result = "holysheep.rate_limiting.result"
    return [(stats[key], {result: key}) for key in ("would_wait", "would_wait_for_slot", "would_reject")]


INSTRUMENTS = [
    Instrument("holysheep.rate_limiting.requests", "counter", "{request}",
               "Decisions by result: admitted at once, admitted after waiting, rejected, refused by a budget.",
               _requests),
    Instrument("holysheep.rate_limiting.queued_requests", "updown", "{request}",
               "Requests waiting for the limiter now.", lambda s, _: [(s["waiting"], {})]),
    Instrument("holysheep.rate_limiting.active_request_leases", "updown", "{request}",
               "Admissions holding a concurrency slot now.", lambda s, _: [(s["in_flight"], {})]),
    Instrument("holysheep.rate_limiting.request.time_in_queue.quantile", "gauge", "s",
               "The median and 99th percentile of the time admitted requests waited.",
               lambda s, _: [(s["waited_s_p50"], {"quantile": "0.5"}), (s["waited_s_p99"], {"quantile": "0.99"})]),
    Instrument("holysheep.rate_limiting.tokens", "counter", "{token}",
               "LLM tokens as admissions are settled: reserved (the counts replaced), settled (the real "
               "counts), refunded (what went back).",
               lambda s, _: [(s.get(f"tokens_{state}", 0), {"holysheep.token.state": state}) for state in ("reserved", "settled", "refunded")]),
    Instrument("holysheep.rate_limiting.remaining", "gauge", "{unit}",
               "What each limit has free now (requests, tokens, or dollars of a budget); a shared limit's "
               "is the fleet's.", _remaining),
    Instrument("holysheep.rate_limiting.rate_factor", "gauge", "1",
               "The fraction of the configured rate in force (below 1 after 429s or what the server said).",
               lambda s, _: [(s["rate_factor"], {"holysheep.limit.unit": "requests"}), (s["tokens_rate_factor"], {"holysheep.limit.unit": "tokens"})]),
    Instrument("holysheep.server.rejections", "counter", "{response}",
               "429 answers from the server.", lambda s, _: [(s["server_429s"], {})]),
    Instrument("holysheep.rate_limiting.shadow.requests", "counter", "{request}",
               "In shadow mode: requests it would have delayed, made wait for a slot, or refused.", _shadow),
    Instrument("holysheep.rate_limiting.shadow.wait", "counter", "s",
               "In shadow mode: the time, in all, it would have made requests wait.",
               lambda s, _: [(s["would_wait_s"], {})] if "would_wait_s" in s else []),
]


class Readings:
    """Reads the watched limiters for the instruments, each limiter's `stats()` once per collection."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._cache: dict[int, tuple[float, dict[str, Any], str]] = {}
        #: The coalescing clients' stats as one, and when they were read (its four instruments share them).
        self._coalesced: tuple[float, dict[str, Any] | None] | None = None

    def _stats(self) -> Iterator[tuple[HolySheepRateLimiter, dict[str, Any], str]]:
        now = time.monotonic()
        for limiter, name in self._recorder.watched():
            cached = self._cache.get(id(limiter))
            if cached is None or now - cached[0] > _FRESH_S:
                cached = (now, limiter.stats(), name or label(limiter))
                self._cache[id(limiter)] = cached
            yield limiter, cached[1], cached[2]

    def fresh(self) -> None:
        """Reads every limiter (and the coalescing clients) anew at the next collection."""
        self._cache.clear()
        self._coalesced = None

    def of(self, instrument: Instrument) -> list[Reading]:
        readings: list[Reading] = []
        for limiter, stats, name in self._stats():
            for value, attributes in instrument.read(stats, limiter):
                readings.append((value, {"holysheep.limiter": name, **attributes}))
        return readings

    def server_remaining(self) -> list[Reading]:
        return [
            (left, {"server.address": address, "holysheep.limit.unit": unit})
            for (address, unit), left in list(self._recorder.server_remaining.items())
        ]

    def _coalescing(self) -> dict[str, Any] | None:
        """The coalescing stats of every client that sent requests with ``coalesce=``, as one; read once
        per collection."""
        from holysheep.transport._coalescing import stats_of

        now = time.monotonic()
        if self._coalesced is None or now - self._coalesced[0] > _FRESH_S:
            coalescers = [coalescer for p in list(self._recorder.pipelines) if (coalescer := getattr(p, "coalescer", None)) is not None]
            self._coalesced = (now, stats_of(coalescers) if coalescers else None)
        return self._coalesced[1]

    def coalesced_calls(self) -> list[Reading]:
        stats = self._coalescing()
        if stats is None:
            return []
        result = "holysheep.coalescing.result"
        merged = stats["callers"] - stats["left"]
        return [(merged, {result: "merged"}), (stats["alone"], {result: "alone"}), (stats["left"], {result: "left"})]

    def coalesced_requests(self) -> list[Reading]:
        stats = self._coalescing()
        return [] if stats is None else [(stats["requests"], {})]

    def coalesced_batch_sizes(self) -> list[Reading]:
        stats = self._coalescing()
        if stats is None or stats["callers_per_request_p50"] is None:
            return []
        return [(stats["callers_per_request_p50"], {"quantile": "0.5"}), (stats["callers_per_request_max"], {"quantile": "1"})]

    def coalesced_waits(self) -> list[Reading]:
        stats = self._coalescing()
        if stats is None or stats["wait_s_p50"] is None:
            return []
        return [(stats["wait_s_p50"], {"quantile": "0.5"}), (stats["wait_s_p99"], {"quantile": "0.99"})]

    def breaker_states(self) -> list[Reading]:
        return [
            (1.0 if breaker.state == state else 0.0, {"holysheep.breaker": name, "holysheep.breaker.state": state})
            for name, breaker in self._recorder.breakers()
            for state in ("closed", "open", "half_open")
        ]


#: Read from the recorder rather than a limiter: ``(name, kind, unit, description, method of Readings)``.
EXTRA_INSTRUMENTS: list[tuple[str, Literal["counter", "gauge"], str, str, Callable[[Readings], list[Reading]]]] = [
    ("holysheep.server.remaining", "gauge", "{unit}",
     "What the server said it has left (x-ratelimit-remaining-requests and -tokens) in its last answer.",
     Readings.server_remaining),
    ("holysheep.breaker.state", "gauge", "1", "1 for each breaker's state now, 0 for the others.", Readings.breaker_states),
    ("holysheep.coalescing.calls", "counter", "{call}",
     "Embeddings calls through coalescing clients: merged into a shared request, sent alone (too big to "
     "share), or left while waiting (cancelled).", Readings.coalesced_calls),
    ("holysheep.coalescing.requests", "counter", "{request}", "Merged embeddings requests sent.",
     Readings.coalesced_requests),
    ("holysheep.coalescing.batch_size.quantile", "gauge", "{call}",
     "Calls per merged request: the median and the largest, over the last 1,024 requests.",
     Readings.coalesced_batch_sizes),
    ("holysheep.coalescing.wait.quantile", "gauge", "s",
     "From a merged request's first call to its send: the median and 99th percentile, over the last 1,024.",
     Readings.coalesced_waits),
]
