"""Goodput against a strict gateway (DESIGN.md section 5): 300 chat requests, all asked for at once, at a
limit of 100 per 10 s that MockGateway enforces as a strict sliding window, with 32 in flight and 0.2 s
latency. Wall time against the ideal schedule, and the 429s the gateway answered, for:

- holysheep: `AsyncHolySheep` with a limiter told the gateway's limits;
- the bare openai SDK, default retries (2) and max_retries=10;
- a seed-style deque limiter: a deque of admission times plus an asyncio.Semaphore around the bare SDK
  (default retries), the thing users write first.

Each client runs against a fresh gateway, in turns, ``--repeats`` times (3); medians.

    .venv/bin/python benches/openai/goodput.py [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai

import holysheep as hs
from holysheep.testing import MockGateway
from report import header, ideal_wall_s, median, verdict

REQUESTS = 300
LIMIT = 100
WINDOW_S = 10.0
CONCURRENCY = 32
LATENCY_S = 0.2
#: Every run is bounded: a client that has not finished by then is reported as such.
RUN_TIMEOUT_S = 120.0
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


class DequeLimiter:
    """The naive limiter: the admission times of the last window in a deque, and a semaphore."""

    def __init__(self, limit: int, period_s: float, concurrency: int) -> None:
        self.limit, self.period_s = limit, period_s
        self.times: collections.deque[float] = collections.deque()
        self.slots = asyncio.Semaphore(concurrency)
        self.lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        await self.slots.acquire()
        async with self.lock:
            while True:
                now = time.monotonic()
                while self.times and now - self.times[0] >= self.period_s:
                    self.times.popleft()
                if len(self.times) < self.limit:
                    self.times.append(now)
                    return
                await asyncio.sleep(self.period_s - (now - self.times[0]))

    async def __aexit__(self, *exc_info: object) -> None:
        self.slots.release()


@dataclass
class Outcome:
    wall_s: float
    refused: int  # 429s the gateway answered
    failed: int  # requests the client gave up on


@dataclass
class Row:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)


Call = Callable[[], Awaitable[Any]]


async def holysheep_client(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    limiter = hs.HolySheepRateLimiter(limits=[hs.Limit(LIMIT, per=WINDOW_S)], max_concurrency=CONCURRENCY)
    client = hs.AsyncHolySheep(base_url=base_url, api_key="hs_bench", limiter=limiter)
    return (lambda: client.chat.completions.create(model="m", messages=MESSAGES)), client.close


def bare_client(max_retries: int) -> Callable[[str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]:
    async def make(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="hs_bench", max_retries=max_retries)
        return (lambda: client.chat.completions.create(model="m", messages=MESSAGES)), client.close

    return make


async def deque_client(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    limiter = DequeLimiter(LIMIT, WINDOW_S, CONCURRENCY)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="hs_bench")

    async def call() -> Any:
        async with limiter:
            return await client.chat.completions.create(model="m", messages=MESSAGES)

    return call, client.close


CLIENTS = {
    "holysheep AsyncHolySheep(limiter=100 per 10 s, 32 in flight)": holysheep_client,
    "bare openai SDK, default retries (2)": bare_client(2),
    "bare openai SDK, max_retries=10": bare_client(10),
    "deque limiter + semaphore, bare SDK (2 retries)": deque_client,
}


async def run_once(make: Callable[[str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]) -> Outcome:
    with MockGateway(rpm=LIMIT, window_s=WINDOW_S, concurrency=CONCURRENCY, latency=LATENCY_S) as gateway:
        call, close = await make(gateway.base_url)
        started = time.monotonic()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(call() for _ in range(REQUESTS)), return_exceptions=True), RUN_TIMEOUT_S
            )
        finally:
            wall_s = time.monotonic() - started
            await close()
        refused = sum(record.status == 429 for record in gateway.admission_log())
    return Outcome(wall_s, refused, sum(isinstance(result, BaseException) for result in results))


async def warm_up() -> None:
    """One call per client first: the SDK's first request in a process costs about 0.2 s of one-off set-up
    (imports, model classes) that is no part of any client's schedule."""
    with MockGateway() as gateway:
        for make in CLIENTS.values():
            call, close = await make(gateway.base_url)
            await call()
            await close()


def table(rows: list[Row], ideal_s: float) -> str:
    lines = [
        f"**Goodput: {REQUESTS} requests at {LIMIT} per {WINDOW_S:g} s, {CONCURRENCY} in flight, "
        f"{LATENCY_S:g} s latency (ideal {ideal_s:.1f} s)**",
        "",
        "| client | median wall s | vs ideal | 429s (median, range) | failed (median, range) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        wall = median([o.wall_s for o in row.outcomes])
        refused = [o.refused for o in row.outcomes]
        failed = [o.failed for o in row.outcomes]
        lines.append(
            f"| {row.name} | {wall:.1f} | {100 * (wall / ideal_s - 1):+.1f}% |"
            f" {median(refused):.0f} ({min(refused)}..{max(refused)}) |"
            f" {median(failed):.0f} ({min(failed)}..{max(failed)}) |"
        )
    lines += ["", "A client that gives up on requests finishes early: read its wall time beside its failures."]
    return "\n".join(lines)


async def main(repeats: int) -> None:
    ideal_s = ideal_wall_s(REQUESTS, LIMIT, WINDOW_S, CONCURRENCY, LATENCY_S)
    print(header(f"median of {repeats} runs per client, taken in turns, each against a fresh MockGateway"))
    print(flush=True)
    rows = [Row(name) for name in CLIENTS]
    await warm_up()
    for _ in range(repeats):
        for row, make in zip(rows, CLIENTS.values()):
            row.outcomes.append(await run_once(make))
    print(table(rows, ideal_s), end="\n\n")
    ours = rows[0]
    wall = median([o.wall_s for o in ours.outcomes])
    print("Targets (DESIGN.md section 5):")
    print(verdict("holysheep within 2% of the ideal schedule", wall <= 1.02 * ideal_s, f"{wall / ideal_s - 1:+.1%}"))
    print(verdict("holysheep with zero 429s", all(o.refused == 0 for o in ours.outcomes), "all runs"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per client (3)")
    asyncio.run(main(parser.parse_args().repeats))
