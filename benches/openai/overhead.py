"""Wrapper overhead (DESIGN.md section 5): requests/s of 64 concurrent chat calls to a MockGateway with no
limits and no latency, for the bare openai SDK and for `AsyncHolySheep` with a limiter whose limits never
bind, so what is timed is the transport itself (limiter, breaker bookkeeping, retry loop, held stream).

Both clients share the process and the gateway. Each round (``--rounds``, 9) times both clients on
``--requests`` (2,000) through 64 workers, in turns whose order flips from round to round, so drift on a
noisy machine falls on both alike; the verdict is the median of the rounds' ratios, each taken between
two runs seconds apart.

    .venv/bin/python benches/openai/overhead.py [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import openai

import holysheep as hs
from holysheep.testing import MockGateway
from report import header, median, verdict

CONCURRENCY = 64
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


async def requests_per_s(client: openai.AsyncOpenAI, requests: int) -> float:
    """Sends ``requests`` chat calls through CONCURRENCY workers; calls per second."""
    left = iter(range(requests))

    async def worker() -> None:
        for _ in left:
            await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return requests / (time.perf_counter() - started)


async def main(rounds: int, requests: int) -> None:
    print(header(f"{rounds} rounds, each timing both clients on {requests:,} requests, in an order that flips each round"))
    print(flush=True)
    with MockGateway(log=False) as gateway:
        never_binds = hs.HolySheepRateLimiter(max_qps=1e9, max_concurrency=1_000_000)
        clients: dict[str, openai.AsyncOpenAI] = {
            "bare openai.AsyncOpenAI (max_retries=0)": openai.AsyncOpenAI(
                base_url=gateway.base_url, api_key="hs_bench", max_retries=0
            ),
            "holysheep AsyncHolySheep(limiter=max_qps=1e9)": hs.AsyncHolySheep(
                base_url=gateway.base_url, api_key="hs_bench", limiter=never_binds
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in clients}
        for client in clients.values():  # connections opened, the SDK's one-off set-up done
            await requests_per_s(client, CONCURRENCY * 4)
        for round_ in range(rounds):
            turns = list(clients.items())
            for name, client in turns if round_ % 2 == 0 else reversed(turns):
                samples[name].append(await requests_per_s(client, requests))
        for client in clients.values():
            await client.close()

    bare_name, ours_name = clients
    bare = median(samples[bare_name])
    ratio = median([ours / bare_round for ours, bare_round in zip(samples[ours_name], samples[bare_name])])
    lines = [
        f"**Wrapper overhead: chat calls, {CONCURRENCY} concurrent, MockGateway without limits or latency**",
        "",
        "| client | median requests/s | range | vs bare SDK |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in samples.items():
        lines.append(
            f"| {name} | {median(values):,.0f} | {min(values):,.0f}..{max(values):,.0f} |"
            f" {100 * median(values) / bare:.1f}% |"
        )
    print("\n".join(lines), end="\n\n")
    print(f"Median of the rounds' ratios, AsyncHolySheep / bare SDK: {ratio:.1%}", end="\n\n")
    print("Targets (DESIGN.md section 5):")
    print(verdict("AsyncHolySheep at least 98% of the bare SDK's requests/s", ratio >= 0.98, f"{ratio:.1%}"))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive, default=9, help="rounds, each timing both clients (9)")
    parser.add_argument("--requests", type=positive, default=2_000, help="requests per round (2,000)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.requests))
