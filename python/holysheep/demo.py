"""The main job, offline: a batch of simulated LLM calls under `HolySheepRateLimiter(max_qps=10,
max_concurrency=20)`, with a live progress bar, then what the limiter held the batch to, beside the same
batch without it. Run it with ``holysheep demo`` (or ``make demo``)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

from holysheep._limiter import HolySheepRateLimiter


@dataclass
class Run:
    """What one batch did: when each call started, and how many ran at once at most."""

    started: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    wall_s: float = 0.0

    def peak_qps(self) -> int:
        """The most calls started in any one-second interval."""
        times = sorted(self.started)
        worst, first = 0, 0
        for last, at in enumerate(times):
            while times[first] + 1.0 <= at:
                first += 1
            worst = max(worst, last - first + 1)
        return worst

    def mean_qps(self) -> float:
        """Calls started per second over the whole seconds the batch spans."""
        whole_seconds = int(max(self.started) - min(self.started))
        if whole_seconds == 0:
            return float(len(self.started))
        first = min(self.started)
        return sum(1 for at in self.started if at < first + whole_seconds) / whole_seconds


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.started = self.drawn = time.monotonic()

    def advance(self, run: Run) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.drawn < 0.1 and self.done < self.total:
            return
        self.drawn = now
        width = 30
        filled = width * self.done // self.total
        elapsed = now - self.started
        sys.stderr.write(
            f"\r{self.label:<14} [{'#' * filled}{'.' * (width - filled)}] {self.done:>4}/{self.total}"
            f"  {elapsed:5.1f}s  in flight {run.in_flight:>3}"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


#: Seconds an LLM call takes, as the batch sees it.
LATENCY_S = (0.5, 3.0)


async def run_batch(
    calls: int, limiter: HolySheepRateLimiter | None, label: str, seed: int, latency_s: tuple[float, float]
) -> Run:
    rng = random.Random(seed)
    run = Run()
    progress = Progress(calls, label)
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def one_call() -> None:
        asked = loop.time()
        if limiter is not None:
            await limiter.acquire()
        try:
            run.started.append(loop.time() - began)
            run.waits.append(loop.time() - asked)
            run.in_flight += 1
            run.peak_in_flight = max(run.peak_in_flight, run.in_flight)
            await asyncio.sleep(rng.uniform(*latency_s))
        finally:
            run.in_flight -= 1
            if limiter is not None:
                limiter.release()
            progress.advance(run)

    await asyncio.gather(*(one_call() for _ in range(calls)))
    run.wall_s = loop.time() - began
    return run


def report(limited: Run, bare: Run, max_qps: float, max_concurrency: int) -> str:
    rows = [
        ("", "limit", "with holysheep", "without"),
        ("peak QPS (any 1 s)", f"{max_qps:g}", f"{limited.peak_qps()}", f"{bare.peak_qps()}"),
        ("mean QPS", f"{max_qps:g}", f"{limited.mean_qps():.2f}", f"{bare.mean_qps():.0f}"),
        ("peak concurrency", f"{max_concurrency}", f"{limited.peak_in_flight}", f"{bare.peak_in_flight}"),
        ("wait p50 / p99 (s)", "", f"{_percentile(limited.waits, 0.5):.2f} / {_percentile(limited.waits, 0.99):.2f}", "0 / 0"),
        ("wall time (s)", "", f"{limited.wall_s:.1f}", f"{bare.wall_s:.1f}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


async def demo(
    calls: int, max_qps: float, max_concurrency: int, seed: int, latency_s: tuple[float, float] = LATENCY_S
) -> tuple[Run, Run, str]:
    """Runs the batch with the limiter, then without; returns both runs and the report."""
    limiter = HolySheepRateLimiter(max_qps=max_qps, max_concurrency=max_concurrency)
    limited = await run_batch(calls, limiter, "holysheep", seed, latency_s)
    bare = await run_batch(calls, None, "no limiter", seed, latency_s)
    return limited, bare, report(limited, bare, max_qps, max_concurrency)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, for the ``holysheep demo`` command."""
    parser.add_argument("--calls", type=int, default=200, help="simulated LLM calls in the batch (200)")
    parser.add_argument("--max-qps", type=float, default=10, help="requests per second (10)")
    parser.add_argument("--max-concurrency", type=int, default=20, help="calls in flight at once (20)")
    parser.add_argument("--seed", type=int, default=7, help="seed for the simulated latencies")


def run(args: argparse.Namespace) -> int:
    """Runs the demo and prints its table; the exit status."""
    print(f"{args.calls} simulated LLM calls (0.5-3 s each), max_qps={args.max_qps:g}, max_concurrency={args.max_concurrency}")
    *_, table = asyncio.run(demo(args.calls, args.max_qps, args.max_concurrency, args.seed))
    print(table)
    return 0
