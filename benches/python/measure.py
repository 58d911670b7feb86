"""holysheep's Python fast paths beside the peers, in one run: median ns per operation, one table per
question, ready to paste into README.md. Started by run.py inside benches/python/.venv-peers.

Method: every implementation is built fresh for each repeat (nothing carried over between repeats) and
its operation, written as a user writes it (`lim.try_acquire()`), runs `number` times in a `timeit`
loop (garbage collector off), timed by the thread's own CPU time (`time.thread_time`): time the thread
spends waiting for a core taken by other work on this small machine does not count, so the ratios
between rows hold under load. Repeats go round the rows in turn; the table gives the median over the
repeats and their range. Each implementation's result is checked once before it is timed. Limits are
set far above anything the loop can reach, so every call is admitted: this is the cost of the free
path. Nothing here opens a socket.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import statistics
import threading
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Any

import aiolimiter
import holysheep as hs
import limits
import limits.storage
import limits.strategies
import pyrate_limiter
import throttled
from holysheep_bench_floor import Floor

REPEATS = 11
FAST_NUMBER = 1_000_000  # calls per repeat for what takes tens of ns
SLOW_NUMBER = 20_000  # ... and for the peers, which take microseconds
ASYNC_NUMBER = 200_000
HUGE = 10**8  # a rate (per second) or a concurrency no loop here can reach
PEERS = ("limits", "pyrate-limiter", "throttled-py", "aiolimiter")


class NoOp:
    """The Python floor: a method that does nothing."""

    __slots__ = ()

    def noop(self) -> None:
        pass


class LockedTokenBucket:
    """A plain, correct, thread-safe token bucket in pure Python: refill by elapsed time, under a lock."""

    __slots__ = ("_capacity", "_last", "_lock", "_rate", "_tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self._rate = rate
        self._capacity = capacity
        self._tokens = capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


@dataclass
class Case:
    """One row: `make()` builds a fresh implementation `x`; `call` is the line timed, written as a user
    writes it (a method looked up on the object each time); `ok` checks its result."""

    name: str
    make: Callable[[], Any]
    call: str
    ok: Callable[[Any], bool]
    number: int = FAST_NUMBER


@dataclass
class Row:
    name: str
    samples_ns: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ns)


# What the peers' calls refer to besides `x`.
NAMES = {"ITEM": limits.RateLimitItemPerSecond(HUGE)}


def is_true(result: Any) -> bool:
    return result is True


def is_none(result: Any) -> bool:
    return result is None


def pyrate_limiter_free() -> pyrate_limiter.Limiter:
    bucket = pyrate_limiter.InMemoryBucket([pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.SECOND)])
    return pyrate_limiter.Limiter(bucket)


def throttled_free() -> throttled.Throttled:
    return throttled.Throttled(key="bench", quota=throttled.per_sec(HUGE, burst=HUGE), store=throttled.MemoryStore())


def try_acquire_cases() -> list[Case]:
    memory = limits.storage.MemoryStorage
    return [
        Case("no-op pyo3 method (floor)", Floor, "x.noop()", is_none),
        Case("no-op Python method", NoOp, "x.noop()", is_none),
        Case("holysheep HolySheepRateLimiter(max_qps=1e8)", lambda: hs.HolySheepRateLimiter(max_qps=HUGE),
             "x.try_acquire()", is_true),
        Case("holysheep TokenBucket(rate=1e8, capacity=1e8)", lambda: hs.TokenBucket(rate=HUGE, capacity=HUGE),
             "x.try_acquire()", is_true),
        Case("pure-Python locked token bucket", lambda: LockedTokenBucket(HUGE, HUGE), "x.try_acquire()", is_true),
        Case("limits (MemoryStorage, MovingWindow)", lambda: limits.strategies.MovingWindowRateLimiter(memory()),
             "x.hit(ITEM, 'bench')", is_true, SLOW_NUMBER),
        Case("limits (MemoryStorage, FixedWindow)", lambda: limits.strategies.FixedWindowRateLimiter(memory()),
             "x.hit(ITEM, 'bench')", is_true, SLOW_NUMBER),
        Case("PyrateLimiter (InMemoryBucket)", pyrate_limiter_free, "x.try_acquire('bench', blocking=False)", is_true,
             SLOW_NUMBER),
        Case("throttled-py (MemoryStore, token bucket)", throttled_free, "x.limit()",
             lambda result: not result.limited, SLOW_NUMBER),
    ]


def check_sync(case: Case) -> None:
    first = eval(case.call, {**NAMES, "x": case.make()})  # the very line timed, once
    assert case.ok(first), f"{case.name}: the first call was not admitted"


def time_sync(case: Case) -> float:
    """One repeat: ns per call over `case.number` calls on a fresh implementation."""
    timer = timeit.Timer(case.call, setup="x = make()", timer=time.thread_time, globals={**NAMES, "make": case.make})
    return timer.timeit(number=case.number) * 1e9 / case.number


def measure_sync() -> list[Row]:
    """Repeats go round all the rows in turn, so a burst of load from elsewhere on the machine lands on
    every row alike instead of on one."""
    cases = try_acquire_cases()
    for case in cases:
        check_sync(case)
    rows = [Row(case.name, []) for case in cases]
    for _ in range(REPEATS):
        for case, row in zip(cases, rows):
            row.samples_ns.append(time_sync(case))
    return rows


@dataclass
class AsyncCase:
    """One row of the `async with` table: `make()` builds a fresh async context manager;
    `admitted(cm)` (awaited inside one `async with cm`) checks that it let us in at once."""

    name: str
    make: Callable[[], Any]
    admitted: Callable[[Any], bool]


async def enter_and_leave(manager: Any, number: int) -> None:
    for _ in range(number):
        async with manager:
            pass


async def check_async(case: AsyncCase) -> None:
    manager = case.make()
    async with manager:
        assert case.admitted(manager), f"{case.name}: not admitted at once"


async def time_async(case: AsyncCase) -> float:
    """One repeat: ns per `async with` over ASYNC_NUMBER of them on a fresh implementation."""
    manager = case.make()
    gc.disable()
    began = time.thread_time_ns()
    await enter_and_leave(manager, ASYNC_NUMBER)
    elapsed = time.thread_time_ns() - began
    gc.enable()
    return elapsed / ASYNC_NUMBER


def async_cases() -> list[AsyncCase]:
    def holding_one(lim: hs.HolySheepRateLimiter) -> bool:
        return lim.stats()["in_flight"] == 1

    return [
        AsyncCase("asyncio.Semaphore (floor)", lambda: asyncio.Semaphore(HUGE), lambda sem: not sem.locked()),
        AsyncCase(
            "aiolimiter AsyncLimiter(1e8 per second)",
            lambda: aiolimiter.AsyncLimiter(HUGE, time_period=1),
            lambda lim: lim.has_capacity(),
        ),
        AsyncCase(
            "holysheep HolySheepRateLimiter(max_qps=1e8, max_concurrency=1e8)",
            lambda: hs.HolySheepRateLimiter(max_qps=HUGE, max_concurrency=HUGE),
            holding_one,
        ),
        AsyncCase(
            "holysheep HolySheepRateLimiter(max_concurrency=1e8)",
            lambda: hs.HolySheepRateLimiter(max_concurrency=HUGE),
            holding_one,
        ),
    ]


async def measure_async() -> list[Row]:
    """All `async with` rows inside one running loop, as an application would run them; repeats go
    round the rows in turn, as in `measure_sync`."""
    cases = async_cases()
    for case in cases:
        await check_async(case)
    rows = [Row(case.name, []) for case in cases]
    for _ in range(REPEATS):
        for case, row in zip(cases, rows):
            row.samples_ns.append(await time_async(case))
    return rows


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def header() -> str:
    peers = ", ".join(f"{name} {version(name)}" for name in PEERS)
    return "\n".join(
        [
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores (nproc), {cpu_model()}, Linux {platform.release()},"
            f" load average {os.getloadavg()[0]:.2f} at start",
            f"- Python {platform.python_version()}, holysheep {hs.__version__} (release wheel),"
            f" pyo3 floor built alike; peers: {peers}",
            f"- median of {REPEATS} repeats taken in turns across the rows, each on a fresh limiter;"
            " range = fastest..slowest repeat",
        ]
    )


def table(title: str, rows: list[Row], floor: Row, ours: Row) -> str:
    lines = [
        f"**{title}**",
        "",
        f"| implementation | median ns/op | range | vs {floor.name.split(' (')[0]} | vs holysheep |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        low, high = min(row.samples_ns), max(row.samples_ns)
        lines.append(
            f"| {row.name} | {row.median:,.0f} | {low:,.0f}..{high:,.0f} |"
            f" {row.median / floor.median:.2f}x | {row.median / ours.median:.2f}x |"
        )
    return "\n".join(lines)


def verdict(target: str, met: bool, figure: str) -> str:
    return f"- {target}: {'met' if met else 'MISSED'} ({figure})"


def sync_verdicts(rows: dict[str, Row]) -> list[str]:
    ours = rows["holysheep HolySheepRateLimiter(max_qps=1e8)"].median
    noop = rows["no-op Python method"].median
    lines = []
    for name in ("holysheep HolySheepRateLimiter(max_qps=1e8)", "holysheep TokenBucket(rate=1e8, capacity=1e8)"):
        ratio = rows[name].median / noop
        lines.append(verdict(f"{name}: try_acquire within 1.5x of obj.m()", ratio <= 1.5, f"{ratio:.2f}x"))
    for name, row in rows.items():
        if name.startswith(("limits", "PyrateLimiter", "throttled")):
            figure = f"{row.median / ours:.1f}x"
            lines.append(verdict(f"at least 50x faster than {name}", row.median >= 50 * ours, figure))
    bucket = rows["pure-Python locked token bucket"].median
    lines.append(verdict("at least 5x faster than the pure-Python bucket", bucket >= 5 * ours, f"{bucket / ours:.1f}x"))
    return lines


def async_verdicts(rows: dict[str, Row]) -> list[str]:
    semaphore = rows["asyncio.Semaphore (floor)"].median
    aio = rows["aiolimiter AsyncLimiter(1e8 per second)"].median
    lines = []
    for name, row in rows.items():
        if name.startswith("holysheep"):
            ours = row.median
            faster = f"{semaphore / ours:.2f}x"
            lines.append(verdict(f"{name}: faster than asyncio.Semaphore", ours < semaphore, faster))
            lines.append(verdict(f"{name}: at least 3x faster than aiolimiter", aio >= 3 * ours, f"{aio / ours:.2f}x"))
    return lines


def main() -> None:
    print(header(), end="\n\n", flush=True)

    sync_rows = {row.name: row for row in measure_sync()}
    floor, ours = sync_rows["no-op pyo3 method (floor)"], sync_rows["holysheep HolySheepRateLimiter(max_qps=1e8)"]
    print(table("try_acquire on a free limiter", list(sync_rows.values()), floor, ours), end="\n\n")

    async_rows = {row.name: row for row in asyncio.run(measure_async())}
    floor = async_rows["asyncio.Semaphore (floor)"]
    ours = async_rows["holysheep HolySheepRateLimiter(max_qps=1e8, max_concurrency=1e8)"]
    print(table("async with, when free (one running loop)", list(async_rows.values()), floor, ours), end="\n\n")

    print("Targets (DESIGN.md section 5):")
    print("\n".join(sync_verdicts(sync_rows) + async_verdicts(async_rows)))


if __name__ == "__main__":
    main()
