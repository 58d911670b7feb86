"""Coalesced embeddings (DESIGN.md section 5): 2,000 concurrent single-text ``embeddings.create`` calls
against a MockGateway allowing 30 requests per 1 s window (a strict sliding window), through an
`AsyncHolySheep` whose limiter is told the same limit:

- holysheep, ``coalesce=hs.Coalesce(max_wait_ms=10)``: the calls go out as a few merged requests;
- the bare openai SDK making the same 2,000 calls, one request each, against a gateway without limits;
- holysheep without coalescing, only with ``--uncoalesced`` (it takes 2,000 / 30 = 67 windows).

Wall time in windows, and for holysheep the part after the last call reached its transport (before
that, the time is the SDK's own: building 2,000 calls costs about 1.2 ms of CPU each); requests the
gateway saw, 429s, and callers per merged request. The SDK's first-call set-up is done before timing.
``--repeats`` runs (3), in turns; medians.

    .venv/bin/python benches/openai/coalesce.py [--repeats N] [--uncoalesced]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai

import holysheep as hs
from holysheep.testing import MockGateway
from report import header, median, verdict

CALLS = 2_000
LIMIT = 30
WINDOW_S = 1.0
MODEL = "text-embedding-3-small"
TEXTS = [f"what does clause {n} of the contract say about renewals?" for n in range(CALLS)]


@dataclass
class Outcome:
    wall_s: float
    requests: int
    refused: int
    per_request: float
    #: Seconds from the last call reaching the transport to the last answer; None when not coalesced.
    after_last_s: float | None = None


@dataclass
class Row:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)


async def timed(client: Any, gateway: MockGateway) -> Outcome:
    await client.models.list()  # the SDK's first-call set-up, outside the timing
    coalescer = getattr(getattr(client, "transport", None), "coalescer", None)
    last_joined = [math.nan]
    if coalescer is not None:
        join = coalescer.join_async

        def joining(*args: Any) -> Any:
            last_joined[0] = time.monotonic()
            return join(*args)

        coalescer.join_async = joining
    started = time.monotonic()
    answers = await asyncio.gather(*(client.embeddings.create(model=MODEL, input=text) for text in TEXTS))
    ended = time.monotonic()
    assert all(len(answer.data) == 1 for answer in answers)
    log = [record for record in gateway.admission_log() if record.endpoint == "/v1/embeddings"]
    refused = sum(record.status == 429 for record in log)
    after_last = None if math.isnan(last_joined[0]) else ended - last_joined[0]
    return Outcome(ended - started, len(log), refused, CALLS / max(len(log) - refused, 1), after_last)


async def holysheep(coalesce: hs.Coalesce | None) -> Outcome:
    with MockGateway(rpm=LIMIT, window_s=WINDOW_S) as gateway:
        limiter = hs.HolySheepRateLimiter(limits=[hs.Limit(LIMIT, per=WINDOW_S)])
        async with hs.AsyncHolySheep(
            api_key="hs_bench", base_url=gateway.base_url, limiter=limiter, coalesce=coalesce
        ) as client:
            return await timed(client, gateway)


async def sdk_floor() -> Outcome:
    with MockGateway() as gateway:
        # A connect timeout of a minute: 2,000 calls at once open up to 1,000 connections (the SDK's pool),
        # which the SDK's default of 5 s does not always allow on a loaded 2-core machine.
        timeout = openai.Timeout(600.0, connect=60.0)
        async with openai.AsyncOpenAI(api_key="hs_bench", base_url=gateway.base_url, timeout=timeout) as client:
            return await timed(client, gateway)


def table(rows: list[Row]) -> str:
    lines = [
        f"**Coalesced embeddings: {CALLS:,} concurrent single-text calls, {LIMIT} requests per {WINDOW_S:g} s window**",
        "",
        "| client | median wall s | windows | after the last call s | requests sent | 429s | callers per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        wall = median([o.wall_s for o in row.outcomes])
        after = [o.after_last_s for o in row.outcomes if o.after_last_s is not None]
        lines.append(
            f"| {row.name} | {wall:.2f} | {wall / WINDOW_S:.1f} | {f'{median(after):.2f}' if after else '-'} |"
            f" {median([o.requests for o in row.outcomes]):.0f} | {max(o.refused for o in row.outcomes)} |"
            f" {median([o.per_request for o in row.outcomes]):.0f} |"
        )
    return "\n".join(lines)


async def main(repeats: int, uncoalesced: bool) -> None:
    print(header(f"median of {repeats} runs per client, taken in turns, each against a fresh MockGateway"))
    print(flush=True)
    clients: dict[str, Callable[[], Awaitable[Outcome]]] = {
        "holysheep, coalesce=Coalesce(max_wait_ms=10)": lambda: holysheep(hs.Coalesce(max_wait_ms=10)),
        "bare openai SDK, no limits, one request a call": sdk_floor,
    }
    if uncoalesced:
        clients["holysheep, not coalesced"] = lambda: holysheep(None)
    rows = [Row(name) for name in clients]
    for _ in range(repeats):
        for row, run in zip(rows, clients.values()):
            row.outcomes.append(await run())
    print(table(rows), end="\n\n")
    ours = rows[0].outcomes
    wall, sent = median([o.wall_s for o in ours]), max(o.requests for o in ours)
    print("Targets (DESIGN.md section 5):")
    after = median([o.after_last_s for o in ours if o.after_last_s is not None])
    print(verdict("finished in at most 3 windows", wall <= 3 * WINDOW_S, f"{wall / WINDOW_S:.1f} windows"))
    print(verdict("done within 3 windows of the last call", after <= 3 * WINDOW_S, f"{after / WINDOW_S:.1f} windows"))
    print(verdict("in at most 1/30 of the requests", sent <= CALLS // 30, f"{sent} requests for {CALLS:,} calls"))
    print(verdict("zero 429s", all(o.refused == 0 for o in ours), "all runs"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per client (3)")
    parser.add_argument("--uncoalesced", action="store_true", help="also time holysheep without coalescing")
    args = parser.parse_args()
    asyncio.run(main(args.repeats, args.uncoalesced))
