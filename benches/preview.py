"""`hs.preview`: wall time to simulate an hour of traffic at 50 requests per second (DESIGN's target:
under 10 s), median of REPEATS runs per scenario, on the extension as built (use a release build:
`make build`). Run: `.venv/bin/python benches/preview.py`.

Each scenario's result is checked once before it is timed. The scenarios:
- steady: 50/s for an hour against limits it fits in (nobody waits long): the cost per request of the
  simulation itself.
- design: DESIGN's example, a pro plan ramped to 50/s for an hour with 800 tokens each against a pro
  server: 40,000 tokens a second against 500,000 a minute, so a queue of tens of thousands builds and
  drains over hours of simulated time; every waiter goes through the core's line and the exact window.
- over-server: the limiter told twice what the server allows, 50/s for an hour: 429s, retries, and the
  limiter following the server's headers.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import holysheep as hs

REPEATS = 5


def steady() -> hs.PreviewReport:
    lim = hs.HolySheepRateLimiter(rpm=4_000, max_concurrency=200)
    return hs.preview(lim, "50/s for 1h", latency=2.0, tokens=800)


def design() -> hs.PreviewReport:
    lim = hs.HolySheepRateLimiter.from_tier("pro")
    server = hs.ServerModel(tier="pro")
    return hs.preview(lim, "ramp 0->50/s over 1m, 50/s for 59m", latency=2.0, tokens=800, server=server)


def over_server() -> hs.PreviewReport:
    lim = hs.HolySheepRateLimiter(rpm=4_000)
    return hs.preview(lim, "50/s for 1h", latency=(1.0, 3.0), server=hs.ServerModel(rpm=2_000))


SCENARIOS: list[tuple[str, Callable[[], hs.PreviewReport]]] = [
    ("steady", steady),
    ("design", design),
    ("over-server", over_server),
]


def main() -> None:
    print(f"# hs.preview, one hour of traffic: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()} x{os.cpu_count()}, Python {platform.python_version()}, holysheep {hs.__version__}")
    print(f"| scenario | requests | simulated s | median wall s ({REPEATS} runs) | range | requests/s simulated |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, scenario in SCENARIOS:
        report = scenario()
        assert report.answered + report.failed + report.refused == report.requests, report
        walls = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            scenario()
            walls.append(time.perf_counter() - started)
        median = statistics.median(walls)
        print(
            f"| {name} | {report.requests:,} | {report.end_s:,.0f} | {median:.2f} | "
            f"{min(walls):.2f}-{max(walls):.2f} | {report.requests / median:,.0f} |"
        )


if __name__ == "__main__":
    main()
