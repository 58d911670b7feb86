"""The LangChain adapter's cost beside LangChain's own limiter, in one run: wall time of 1,000
``await rate_limiter.aacquire()`` (and 1,000 blocking ``acquire()``) on a limiter that never has to
wait, median over rounds, with the floors: awaiting a coroutine that returns at once, and the bare
holysheep limiter under the adapter.

Each round builds every limiter fresh; LangChain's ``InMemoryRateLimiter`` starts with an empty bucket
(its first call sleeps ``check_every_n_seconds``), so it is given one call before the timed ones, and
that first call is reported on its own as the cold start. Rates are far above anything the loop
reaches, so every timed call is admitted at once. Run from the repo with the dev venv:
``.venv/bin/python benches/python/bench_adapters.py`` (needs ``pip install 'holysheep[langchain]'``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from importlib.metadata import version

from langchain_core.rate_limiters import InMemoryRateLimiter

import holysheep as hs
from holysheep.langchain import RateLimiter

CALLS = 1_000
ROUNDS = 31
FREE_QPS = 10**9  # a rate no loop here reaches


def free_holysheep() -> hs.HolySheepRateLimiter:
    return hs.HolySheepRateLimiter(limits=[hs.Limit(FREE_QPS, per=1.0, algorithm="gcra", burst=FREE_QPS)])


def ours() -> RateLimiter:
    return RateLimiter(free_holysheep())


def theirs() -> InMemoryRateLimiter:
    return InMemoryRateLimiter(requests_per_second=FREE_QPS, max_bucket_size=FREE_QPS)


async def nothing() -> bool:
    return True


async def timed_async(acquire: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        await acquire()
    return time.perf_counter() - started


def timed_blocking(acquire: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        acquire()
    return time.perf_counter() - started


async def one_round() -> dict[str, float]:
    """One timing per row, each on a fresh limiter; InMemoryRateLimiter's cold first call apart."""
    walls: dict[str, float] = {}
    walls["await a coroutine that returns (floor)"] = await timed_async(nothing)
    bare = free_holysheep()
    walls["holysheep limiter: await lim.acquire() (under the adapter)"] = await timed_async(bare.acquire)
    adapter = ours()
    cold = time.perf_counter()
    assert await adapter.aacquire() is True
    walls["cold first aacquire: holysheep.langchain.RateLimiter"] = time.perf_counter() - cold
    walls["aacquire: holysheep.langchain.RateLimiter"] = await timed_async(adapter.aacquire)
    peer = theirs()
    cold = time.perf_counter()
    assert await peer.aacquire() is True
    walls["cold first aacquire: langchain InMemoryRateLimiter"] = time.perf_counter() - cold
    walls["aacquire: langchain InMemoryRateLimiter"] = await timed_async(peer.aacquire)
    walls["acquire: holysheep.langchain.RateLimiter"] = timed_blocking(ours().acquire)
    warm = theirs()
    warm.acquire()
    walls["acquire: langchain InMemoryRateLimiter"] = timed_blocking(warm.acquire)
    return walls


def main() -> None:
    gc.disable()
    rounds = [asyncio.run(one_round()) for _ in range(ROUNDS)]
    gc.enable()
    median = {row: statistics.median(r[row] for r in rounds) for row in rounds[0]}
    spread = {row: (min(r[row] for r in rounds), max(r[row] for r in rounds)) for row in rounds[0]}
    print(
        f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} x{os.cpu_count()}, "
        f"Python {platform.python_version()}, holysheep {hs.__version__}, langchain-core {version('langchain-core')}"
    )
    print(f"# wall of {CALLS:,} calls on a free limiter, median of {ROUNDS} rounds (min-max)\n")
    print(f"| {'what':<62} | {'ms per 1,000':>12} | {'µs per call':>11} | {'range, ms':>13} |")
    print(f"|{'-' * 64}|{'-' * 14}:|{'-' * 12}:|{'-' * 14}:|")
    for row, wall in median.items():
        low, high = spread[row]
        if row.startswith("cold"):
            print(f"| {row:<62} | {'':>12} | {wall * 1e6:>11.1f} | {low * 1e3:>6.3f}-{high * 1e3:<6.3f} |")
            continue
        print(f"| {row:<62} | {wall * 1e3:>12.3f} | {wall / CALLS * 1e6:>11.2f} | {low * 1e3:>6.2f}-{high * 1e3:<6.2f} |")
    for mode in ("aacquire", "acquire"):
        ratio = median[f"{mode}: langchain InMemoryRateLimiter"] / median[f"{mode}: holysheep.langchain.RateLimiter"]
        print(f"\n{mode}: InMemoryRateLimiter takes {ratio:.2f}x the adapter's wall")


if __name__ == "__main__":
    main()
