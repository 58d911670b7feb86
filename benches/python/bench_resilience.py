"""Overhead of a retry / circuit-breaker decorator on the success path, holysheep beside its peers.

Each row decorates the same trivial function (sync: returns its argument; async: the same as a
coroutine) and asserts the result once; then rounds of one batch per row are timed, and the median
ns per call over the rounds is printed. The undecorated call is the floor. A second table times
coroutines that wait once (`await asyncio.sleep(0)`), as real calls do: a timeout that costs nothing
for a coroutine that never waits must stay cheap for one that does. Run by `make bench-resilience`,
which installs the peers and this package into benches/python/.venv-peers.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import backoff
import circuitbreaker
import pybreaker
import tenacity

import holysheep as hs

BATCHES = int(os.environ.get("BATCHES", "25"))  # fewer for a quick look while iterating
CALLS_PER_BATCH = 20_000


def plain(x: int) -> int:
    return x


async def plain_async(x: int) -> int:
    return x


async def waits_once(x: int) -> int:
    await asyncio.sleep(0)
    return x


#: The second table's calls each take a turn of the event loop, so fewer of them.
WAITING_CALLS_PER_BATCH = 2_000


def batch_ns_sync(fn: Callable[[int], int]) -> float:
    started = time.perf_counter_ns()
    for i in range(CALLS_PER_BATCH):
        fn(i)
    return (time.perf_counter_ns() - started) / CALLS_PER_BATCH


async def batch_ns_async(fn: Callable[[int], Awaitable[int]], calls: int = CALLS_PER_BATCH) -> float:
    started = time.perf_counter_ns()
    for i in range(calls):
        await fn(i)
    return (time.perf_counter_ns() - started) / calls


def medians_sync(fns: list[Callable[[int], int]]) -> list[float]:
    """Round-robin: each round times one batch of every row, so a burst of load from elsewhere on the
    machine lands on all rows alike instead of on whichever row was running."""
    for fn in fns:
        assert fn(7) == 7
    rounds = [[batch_ns_sync(fn) for fn in fns] for _ in range(BATCHES)]
    return [statistics.median(column) for column in zip(*rounds)]


def medians_async(fns: list[Callable[[int], Awaitable[int]]], calls: int = CALLS_PER_BATCH) -> list[float]:
    async def run() -> list[float]:
        for fn in fns:
            assert await fn(7) == 7
        rounds = [[await batch_ns_async(fn, calls) for fn in fns] for _ in range(BATCHES)]
        return [statistics.median(column) for column in zip(*rounds)]

    return asyncio.run(run())


def both(decorator: Callable[[Any], Any]) -> tuple[Callable[[int], int], Callable[[int], Awaitable[int]] | None]:
    return decorator(plain), decorator(plain_async)


def rows() -> list[tuple[str, Callable[[int], int], Callable[[int], Awaitable[int]] | None]]:
    policy = hs.RetryPolicy(max_attempts=5)
    timed_policy = hs.RetryPolicy(max_attempts=5, max_elapsed=300.0, retry_budget=0.1)
    tenacity_retry = tenacity.retry(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_random_exponential(max=60))
    backoff_retry = backoff.on_exception(backoff.expo, Exception, max_tries=5)
    pybreaker_sync = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(plain)
    return [
        ("undecorated call (floor)", plain, plain_async),
        ("holysheep @hs.retry(policy)", *both(hs.retry(policy))),
        ("holysheep @hs.retry(policy with max_elapsed, retry_budget)", *both(hs.retry(timed_policy))),
        ("holysheep @breaker", *both(hs.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0))),
        ("holysheep @hs.resilient(retry=, breaker=)", *both(hs.resilient(retry=policy, breaker=hs.CircuitBreaker()))),
        ("tenacity @retry", *both(tenacity_retry)),
        ("backoff @on_exception", *both(backoff_retry)),
        ("pybreaker @CircuitBreaker (async: tornado only)", pybreaker_sync, None),
        ("circuitbreaker @circuit", *both(circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30))),
    ]


def waiting_rows() -> list[tuple[str, Callable[[int], Awaitable[int]]]]:
    timed_policy = hs.RetryPolicy(max_attempts=5, max_elapsed=300.0, retry_budget=0.1)
    tenacity_retry = tenacity.retry(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_random_exponential(max=60))
    return [
        ("undecorated call (floor)", waits_once),
        ("holysheep @hs.retry(policy)", hs.retry(hs.RetryPolicy(max_attempts=5))(waits_once)),
        ("holysheep @hs.retry(policy with max_elapsed, retry_budget)", hs.retry(timed_policy)(waits_once)),
        ("tenacity @retry", tenacity_retry(waits_once)),
    ]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main() -> None:
    peers = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("tenacity", "backoff", "pybreaker", "circuitbreaker")
    )
    batches = f"median of {BATCHES} round-robin batches of {CALLS_PER_BATCH:,} calls"
    print(f"# Success-path cost per decorated call ({batches})")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"# Python {platform.python_version()}; holysheep {hs.__version__}; {peers}")
    print()
    print("| decorator | sync ns/call | async ns/call |")
    print("|---|---:|---:|")
    table = rows()
    gc.disable()  # a collection inside one batch would be timed against whichever row it hit
    sync_ns = medians_sync([sync_fn for _, sync_fn, _ in table])
    async_fns = [async_fn for _, _, async_fn in table if async_fn is not None]
    async_ns = iter(medians_async(async_fns))
    gc.enable()
    for (name, _, async_fn), sync in zip(table, sync_ns):
        async_cell = f"{next(async_ns):,.0f}" if async_fn is not None else "n/a"
        print(f"| {name} | {sync:,.0f} | {async_cell} |")
    print()
    print(f"# Coroutines that wait once (asyncio.sleep(0)); batches of {WAITING_CALLS_PER_BATCH:,} calls")
    print()
    print("| decorator | async ns/call |")
    print("|---|---:|")
    waiting = waiting_rows()
    gc.disable()
    waiting_ns = medians_async([fn for _, fn in waiting], WAITING_CALLS_PER_BATCH)
    gc.enable()
    for (name, _), ns in zip(waiting, waiting_ns):
        print(f"| {name} | {ns:,.0f} |")


if __name__ == "__main__":
    main()
