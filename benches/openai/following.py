"""Following a server that allows less than the limiter was told: 400 chat requests through 64 workers
against a MockGateway allowing 100 per 5 s (a strict sliding window, 32 in flight, 0.1-0.3 s latency),
with `hs.Transport` under the openai SDK and a limiter told 2x and 4x that rate (and the gateway's
concurrency). Each is run twice: as
shipped (every answer's ``x-ratelimit-remaining-*`` held against the limiter's own count, and 429s), and
with those headers taken off the answers below the transport, so that only 429s tune the limiter.

Reported: the 429s the gateway answered, the wall time against the gateway's own ideal schedule, and the
fraction of its configured rate the limiter ended at (the gateway allows 0.5 and 0.25 of it).

    .venv/bin/python benches/openai/following.py [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

import holysheep as hs
from holysheep.testing import MockGateway
from report import header, ideal_wall_s, median, verdict

REQUESTS = 400
WORKERS = 64
LIMIT = 100
WINDOW_S = 5.0
GATEWAY_CONCURRENCY = 32
LATENCY_S = (0.1, 0.3)
TOLD = (2, 4)
#: Every run is bounded: a client that has not finished by then is reported as such.
RUN_TIMEOUT_S = 120.0
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
REMAINING = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")


class WithoutRemaining(httpx2.AsyncBaseTransport):
    """Sends as usual and hands the answer up without its x-ratelimit-remaining-* headers."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        for name in REMAINING:
            response.headers.pop(name, None)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Outcome:
    wall_s: float
    refused: int  # 429s the gateway answered
    failed: int  # requests the client gave up on
    rate_factor: float


@dataclass
class Row:
    name: str
    told: int
    headers: bool
    outcomes: list[Outcome] = field(default_factory=list)


async def run_once(told: int, headers: bool) -> Outcome:
    with MockGateway(
        rpm=LIMIT, window_s=WINDOW_S, concurrency=GATEWAY_CONCURRENCY, latency=LATENCY_S, seed=11
    ) as gateway:
        # Told the gateway's concurrency, so that what differs is the rate alone.
        limiter = hs.HolySheepRateLimiter(
            limits=[hs.Limit(told * LIMIT, per=WINDOW_S)], max_concurrency=GATEWAY_CONCURRENCY
        )
        retry = hs.RetryPolicy(max_attempts=30, max_delay=WINDOW_S)
        transport = hs.Transport(limiter, retry, inner=None if headers else WithoutRemaining())
        client = openai.AsyncOpenAI(
            base_url=gateway.base_url,
            api_key="hs_bench",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport, timeout=30.0),
        )
        left = iter(range(REQUESTS))
        failed = 0

        async def worker() -> None:
            nonlocal failed
            for _ in left:
                try:
                    await client.chat.completions.create(model="m", messages=MESSAGES)
                except openai.OpenAIError:
                    failed += 1

        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), RUN_TIMEOUT_S)
        finally:
            wall_s = time.monotonic() - started
            await client.close()
        refused = sum(record.status == 429 for record in gateway.admission_log())
    return Outcome(wall_s, refused, failed, limiter.stats()["rate_factor"])


def table(rows: list[Row], ideal_s: float) -> str:
    lines = [
        f"**Following the server: {REQUESTS} requests, {WORKERS} workers, gateway allows {LIMIT} per"
        f" {WINDOW_S:g} s, {GATEWAY_CONCURRENCY} in flight, {LATENCY_S[0]:g}-{LATENCY_S[1]:g} s latency"
        f" (ideal {ideal_s:.1f} s)**",
        "",
        "| limiter told | x-ratelimit-remaining-* | 429s (median, range) | failed | median wall s | vs ideal"
        " | rate factor at the end |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        refused = [o.refused for o in row.outcomes]
        wall = median([o.wall_s for o in row.outcomes])
        lines.append(
            f"| {row.told}x ({row.told * LIMIT} per {WINDOW_S:g} s) | {'followed' if row.headers else 'taken off'} |"
            f" {median(refused):.0f} ({min(refused)}..{max(refused)}) |"
            f" {max(o.failed for o in row.outcomes)} | {wall:.1f} | {100 * (wall / ideal_s - 1):+.1f}% |"
            f" {median([o.rate_factor for o in row.outcomes]):.2f} |"
        )
    return "\n".join(lines)


async def main(repeats: int) -> None:
    # The gateway's own schedule at its mean latency.
    ideal_s = ideal_wall_s(REQUESTS, LIMIT, WINDOW_S, GATEWAY_CONCURRENCY, sum(LATENCY_S) / 2)
    print(header(f"median of {repeats} runs per row, taken in turns, each against a fresh MockGateway"))
    print(flush=True)
    rows = [Row(f"{told}x {headers}", told, headers) for told in TOLD for headers in (True, False)]
    for _ in range(repeats):
        for row in rows:
            row.outcomes.append(await run_once(row.told, row.headers))
    print(table(rows, ideal_s), end="\n\n")
    print("Target (issue 8: the headers tune the limiter before 429s do):")
    for told in TOLD:
        followed, ignored = (median([o.refused for o in r.outcomes]) for r in rows if r.told == told)
        print(verdict(f"told {told}x: fewer 429s following the headers", followed < ignored, f"{followed:.0f} vs {ignored:.0f}"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (3)")
    asyncio.run(main(parser.parse_args().repeats))
