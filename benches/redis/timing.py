"""Timing shared by both halves of the Redis bench (holysheep in the project's venv, the peers in
their own): decisions one after another from one caller, each timed, after a warm-up. Each row is
measured REPEATS times and the fastest repeat kept: rows run one after another on a shared 2-core
machine, and a neighbour's burst of work should not decide a comparison."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

WARMUP = 500
REPEATS = 3


def fastest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda row: row["decisions_per_s"])


def summary(name: str, mode: str, latencies_ns: list[int], total_s: float) -> dict[str, Any]:
    ordered = sorted(latencies_ns)
    return {
        "name": name,
        "mode": mode,
        "decisions_per_s": len(ordered) / total_s,
        "p50_us": statistics.median(ordered) / 1e3,
        "p99_us": ordered[int(0.99 * (len(ordered) - 1))] / 1e3,
    }


def time_sync(name: str, decide: Callable[[], Any], n: int, repeats_wanted: int = REPEATS) -> dict[str, Any]:
    """``decide`` must admit: its first answer is checked once, before timing."""
    assert decide(), f"{name}: the first decision was not an admission"
    for _ in range(WARMUP):
        decide()
    clock = time.perf_counter_ns
    repeats = []
    for _ in range(repeats_wanted):
        latencies = [0] * n
        started = clock()
        for i in range(n):
            before = clock()
            decide()
            latencies[i] = clock() - before
        repeats.append(summary(name, "sync", latencies, (clock() - started) / 1e9))
    return fastest(repeats)


def time_async(name: str, setup: Callable[[], Callable[[], Awaitable[Any]]], n: int) -> dict[str, Any]:
    """``setup`` runs on the bench's event loop (async clients bind to the loop they start on) and
    returns the decision to time."""

    async def run() -> dict[str, Any]:
        decide = setup()
        assert await decide(), f"{name}: the first decision was not an admission"
        for _ in range(WARMUP):
            await decide()
        clock = time.perf_counter_ns
        repeats = []
        for _ in range(REPEATS):
            latencies = [0] * n
            started = clock()
            for i in range(n):
                before = clock()
                await decide()
                latencies[i] = clock() - before
            repeats.append(summary(name, "async", latencies, (clock() - started) / 1e9))
        return fastest(repeats)

    return asyncio.run(run())


def time_async_concurrent(name: str, setup: Callable[[], Callable[[], Awaitable[Any]]], n: int, tasks: int) -> dict[str, Any]:
    """``n`` decisions by ``tasks`` tasks at once on one loop: throughput when callers overlap (each
    latency includes the time its task waited for the loop)."""

    async def run() -> dict[str, Any]:
        decide = setup()
        assert await decide(), f"{name}: the first decision was not an admission"
        clock = time.perf_counter_ns
        latencies: list[int] = []

        async def worker(count: int) -> None:
            for _ in range(count):
                before = clock()
                await decide()
                latencies.append(clock() - before)

        await asyncio.gather(*(worker(WARMUP // tasks + 1) for _ in range(tasks)))
        repeats = []
        for _ in range(REPEATS):
            latencies.clear()
            started = clock()
            await asyncio.gather(*(worker(n // tasks) for _ in range(tasks)))
            repeats.append(summary(name, f"async x{tasks}", latencies, (clock() - started) / 1e9))
        return fastest(repeats)

    return asyncio.run(run())
