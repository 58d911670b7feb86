"""`preview`: what a limiter will do to your traffic, before you apply it.

    lim = hs.HolySheepRateLimiter(rpm=100)
    report = hs.preview(lim, traffic="1000 at once")
    report.drain_s, report.wait_p50, report.binding_limit     # 540.45, 240.2, '100 requests per minute'

The preview runs the limiter's own code, configured as ``lim`` is (a fresh copy: ``lim`` itself is not
touched), on a virtual clock that jumps from one event to the next, so an hour of traffic takes well
under a second. Requests go to an optional server model that enforces a plan's limits as the
MockGateway does (`ServerModel`); the simulated client does what the openai wrapper does with the
answers: it hands each to the limiter (429s and ``x-ratelimit-*`` headers cut the rate it allows) and
tries a 429 again after the server's delay, through the limiter, up to ``max_attempts`` in all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from holysheep._holysheep import HolySheepRateLimiter, ServerModel, _preview
from holysheep.errors import ConfigError
from holysheep.pricing import checked_prices

__all__ = ["Binding", "PreviewReport", "PreviewSeries", "ServerModel", "preview"]

#: The forms of traffic: a stages string, requests per second, arrival times, a JSONL trace's path.
Traffic = Union[str, float, Sequence[Union[float, tuple[float, int]]], "os.PathLike[str]"]


@dataclass(frozen=True)
class Binding:
    """A stretch of the run during which ``limit`` held back the requests waiting in line."""

    limit: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class PreviewSeries:
    """Per-bin series for the plot: one value for each ``bin_s`` seconds from the start."""

    bin_s: float
    #: Requests the limiter admitted, and those the server answered 429, per second.
    admitted_per_s: list[float]
    server_429s_per_s: list[float]
    #: The most requests waiting in line, and in flight, within the bin.
    queue: list[int]
    in_flight: list[int]
    #: Waits of the requests admitted in the bin: median and longest, in seconds.
    wait_p50_s: list[float]
    wait_max_s: list[float]
    #: For each of the limiter's limits (by name): the share used over its window ending at the bin's end.
    use_of: dict[str, list[float]]


@dataclass(frozen=True)
class PreviewReport:
    """What a preview found. Times are seconds from the start of the traffic.

    :ivar requests: requests in the traffic.
    :ivar admitted: admissions by the limiter (a request tried again after a 429 is admitted again).
    :ivar answered: requests the server answered (not 429).
    :ivar refused: requests the limiter refused; ``refusals`` says why: ``"never"`` (more than a limit
        ever admits), ``"over_budget"``, ``"timed_out"`` (would wait past ``timeout``).
    :ivar failed: requests still answered 429 after their last attempt.
    :ivar server_429s: 429s the server answered.
    :ivar wait_p50: the median wait for the limiter, over all admissions; ``wait_p99``, ``wait_max``.
    :ivar drain_s: when the last admission was made: the line has drained.
    :ivar end_s: when the last answer came.
    :ivar cost_usd: what the answered requests cost at the model's price.
    :ivar binding_limit: the limit that held waiting requests back longest, as it reads
        (``"100 requests per minute"``, ``"20 in flight (max_concurrency)"``); None if nobody waited.
    :ivar held_s: how long each limit held the line.
    :ivar binding: when each limit held it, in order.
    """

    requests: int
    admitted: int
    answered: int
    refused: int
    refusals: dict[str, int]
    failed: int
    server_429s: int
    waited: int
    wait_p50: float
    wait_p99: float
    wait_max: float
    drain_s: float
    end_s: float
    cost_usd: float
    binding_limit: str | None
    held_s: dict[str, float]
    binding: list[Binding]
    #: What can hold the line: the limiter's limits as they read, then its concurrency bound.
    limits: list[str]
    max_concurrency: int | None
    server_limits: list[str]
    #: Requests per second that each limit counting requests sustains, by name (the server's too).
    request_rates: dict[str, float]
    series: PreviewSeries

    def table(self) -> str:
        """The report as a short table, as ``holysheep preview`` prints it."""
        refusals = ", ".join(f"{count:,} {why}" for why, count in self.refusals.items())
        rows = [
            ("limiter", "; ".join(self.limits)),
            ("server", "; ".join(self.server_limits) or "none modelled"),
            ("requests", f"{self.requests:,}"),
            ("admitted", f"{self.admitted:,} ({self.waited:,} waited)"),
            ("answered", f"{self.answered:,}"),
            ("refused", f"{self.refused:,}" + (f" ({refusals})" if refusals else "")),
            ("server 429s", f"{self.server_429s:,}" + (f" ({self.failed:,} failed after retries)" if self.failed else "")),
            ("wait p50 / p99 / max", f"{self.wait_p50:.3f} s / {self.wait_p99:.3f} s / {self.wait_max:.3f} s"),
            ("drained after", f"{self.drain_s:.3f} s (last answer {self.end_s:.3f} s)"),
            ("cost", f"${self.cost_usd:,.4f}"),
            ("binding limit", self._binding_summary()),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def _binding_summary(self) -> str:
        if self.binding_limit is None:
            return "none: nothing waited"
        held = self.held_s[self.binding_limit]
        spans = _merged([span for span in self.binding if span.limit == self.binding_limit], self.series.bin_s)
        shown = ", ".join(f"{span.start_s:.1f}-{span.end_s:.1f} s" for span in spans[:3])
        more = f" and {len(spans) - 3} more" if len(spans) > 3 else ""
        return f"{self.binding_limit} (held the line {held:.1f} s: {shown}{more})"

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Writes a PNG to ``path``: requests per second admitted against each limit, the share of each
        limit in use, the queue, and the waits. Needs matplotlib (``pip install 'holysheep[plot]'``).

        :returns: the path written.
        :raises ModuleNotFoundError: matplotlib is not installed.
        """
        from holysheep._preview_plot import write

        return write(self, Path(path))


def _merged(spans: list[Binding], gap_s: float) -> list[Binding]:
    """``spans`` of one limit, those less than ``gap_s`` apart joined (others held the line in between
    only for moments)."""
    merged: list[Binding] = []
    for span in spans:
        if merged and span.start_s - merged[-1].end_s < gap_s:
            merged[-1] = Binding(span.limit, merged[-1].start_s, span.end_s)
        else:
            merged.append(span)
    return merged


def _price(model: str | None, prices: Mapping[str, float] | None) -> float:
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model: must be a str or None, got {model!r}", "model")
    table = checked_prices(prices)
    return table.get(model, 0.0) if model is not None else 0.0


def _report(found: dict[str, Any], max_concurrency: int | None) -> PreviewReport:
    holders: list[str] = found["holders"]
    binding = found["binding"]
    series = found["series"]
    refusals: dict[str, int] = found["refusals"]
    return PreviewReport(
        requests=found["requests"],
        admitted=found["admitted"],
        answered=found["answered"],
        refused=sum(refusals.values()),
        refusals=refusals,
        failed=found["failed"],
        server_429s=found["server_429s"],
        waited=found["waited"],
        wait_p50=found["wait_p50"],
        wait_p99=found["wait_p99"],
        wait_max=found["wait_max"],
        drain_s=found["drain_s"],
        end_s=found["end_s"],
        cost_usd=found["cost_usd"],
        binding_limit=None if binding is None else holders[binding],
        held_s=dict(zip(holders, found["held_s"])),
        binding=[Binding(holders[holder], start, end) for start, end, holder in found["spans"]],
        limits=holders,
        max_concurrency=max_concurrency,
        server_limits=found["server_limits"],
        request_rates=dict(found["request_rates"]),
        series=PreviewSeries(
            bin_s=series["bin_s"],
            admitted_per_s=series["admitted_per_s"],
            server_429s_per_s=series["server_429s_per_s"],
            queue=series["queue"],
            in_flight=series["in_flight"],
            wait_p50_s=series["wait_p50_s"],
            wait_max_s=series["wait_max_s"],
            use_of=dict(zip(holders, series["use_of"])),
        ),
    )


def preview(
    limiter: HolySheepRateLimiter,
    traffic: Traffic,
    *,
    latency: float | tuple[float, float] = 0.0,
    tokens: int = 0,
    server: ServerModel | None = None,
    duration: float | None = None,
    model: str | None = None,
    prices: Mapping[str, float] | None = None,
    max_attempts: int = 5,
    timeout: float | None = None,
    seed: int = 0,
) -> PreviewReport:
    """Simulates ``limiter`` against ``traffic`` on a virtual clock and reports what it would do.

        report = preview(HolySheepRateLimiter(rpm=100), "1000 at once")
        report.drain_s                                    # 540.45: nine windows of 60 s and their guards
        preview(lim, "ramp 0->50/s over 1m, 50/s for 10m", latency=2.0, tokens=800,
                server=ServerModel(tier="pro")).plot("preview.png")

    :param limiter: the limiter to preview, as configured (a Redis-backed one previews its limits in
        this process); it is not touched.
    :param traffic: k6-style stages separated by commas: ``"<rate> for <duration>"``,
        ``"ramp <rate>-><rate> over <duration>"``, ``"<n> at once"`` (rates ``50/s``, ``600/m``,
        ``1000/h``; durations ``90s``, ``10m``, ``1h30m``, ``500ms``); or a rate in requests per second
        for ``duration`` seconds (60 by default); or a list of arrival times in seconds (or of
        ``(seconds, tokens)`` pairs); or the path of a JSONL trace, one ``{"at": seconds, "tokens": n}``
        per line (a ``str`` path must end in ``.jsonl``). Rate stages space their requests evenly.
    :param latency: how long the server takes to answer, in seconds: fixed, or ``(fewest, most)`` drawn
        uniformly per request from ``seed`` (the MockGateway's model). A concurrency slot is held that long.
    :param tokens: LLM tokens each request carries (a trace may say per request): what token limits and
        budgets count, and what is priced.
    :param server: the server's limits, enforced as the MockGateway enforces them; None: no server limits.
    :param duration: seconds a constant rate lasts (only for a numeric ``traffic``).
    :param model: prices each request's tokens (`holysheep.pricing.PRICES`, with ``prices`` over them)
        for budgets and ``cost_usd``; a model not in the table costs nothing.
    :param max_attempts: attempts per request in all against the server's 429s (1: none retried).
    :param timeout: seconds a request may wait for the limiter before giving up; None: as long as it takes.
    :param seed: draws the latencies of ``(fewest, most)``.
    :raises ConfigError: a bad argument, named in ``.field`` (``traffic`` names the stage it cannot read).
    """
    found = _preview(
        limiter,
        traffic,
        latency=latency,
        tokens=tokens,
        server=server,
        duration=duration,
        price=_price(model, prices),
        max_attempts=max_attempts,
        timeout=timeout,
        seed=seed,
    )
    return _report(found, limiter.max_concurrency)
