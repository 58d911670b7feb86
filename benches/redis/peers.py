"""The peers' Redis-backed limiters, timed the same way; run by run.py in the peers' own venv.
Prints one JSON object per row. Every limit is far above the rate reached, so each decision admits."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import pyrate_limiter
import redis
import redis.asyncio
import throttled
import throttled.asyncio
from timing import time_async, time_async_concurrent, time_sync

HUGE = 10**9
#: Tasks deciding at once in the concurrent async rows.
TASKS = 32


def limits_async(url: str, item: limits.RateLimitItem, moving: bool) -> Callable[[], Awaitable[bool]]:
    storage = limits.aio.storage.RedisStorage("async+" + url, implementation="redispy")
    strategy = limits.aio.strategies.MovingWindowRateLimiter if moving else limits.aio.strategies.SlidingWindowCounterRateLimiter
    limiter = strategy(storage)
    key = "amw" if moving else "asw"
    return lambda: limiter.hit(item, key)


def throttled_async(url: str, quota: throttled.rate_limiter.Quota) -> Callable[[], Awaitable[bool]]:
    gcra = throttled.asyncio.Throttled(
        using=throttled.asyncio.RateLimiterType.GCRA.value, quota=quota, store=throttled.asyncio.store.RedisStore(server=url)
    )

    async def decide() -> bool:
        return not (await gcra.limit("agcra")).limited

    return decide


def main(url: str, n: int) -> None:
    item = limits.RateLimitItemPerSecond(HUGE)
    storage = limits.storage.RedisStorage(url)
    moving = limits.strategies.MovingWindowRateLimiter(storage)
    counter = limits.strategies.SlidingWindowCounterRateLimiter(storage)
    rows = [
        time_sync(f"limits {version('limits')} moving window", lambda: moving.hit(item, "mw"), n),
        time_sync(f"limits {version('limits')} sliding counter", lambda: counter.hit(item, "sw"), n),
    ]
    rows.append(time_async(f"limits {version('limits')} moving window", lambda: limits_async(url, item, moving=True), n))
    rows.append(time_async(f"limits {version('limits')} sliding counter", lambda: limits_async(url, item, moving=False), n))

    bucket = pyrate_limiter.RedisBucket.init([pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.SECOND)], redis.Redis.from_url(url), "pyrate")
    pyrate = pyrate_limiter.Limiter(bucket)
    rows.append(time_sync(f"PyrateLimiter {version('pyrate-limiter')} RedisBucket", lambda: pyrate.try_acquire("x", blocking=False), n))

    quota = throttled.rate_limiter.per_sec(HUGE, burst=HUGE)
    gcra = throttled.Throttled(using=throttled.RateLimiterType.GCRA.value, quota=quota, store=throttled.store.RedisStore(server=url))
    rows.append(time_sync(f"throttled-py {version('throttled-py')} Redis GCRA", lambda: not gcra.limit("gcra").limited, n))
    rows.append(time_async(f"throttled-py {version('throttled-py')} Redis GCRA", lambda: throttled_async(url, quota), n))
    for name, setup in [
        (f"limits {version('limits')} moving window", lambda: limits_async(url, item, moving=True)),
        (f"limits {version('limits')} sliding counter", lambda: limits_async(url, item, moving=False)),
        (f"throttled-py {version('throttled-py')} Redis GCRA", lambda: throttled_async(url, quota)),
    ]:
        rows.append(time_async_concurrent(name, setup, n, TASKS))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
