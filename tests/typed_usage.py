"""A small program that uses the public API as a typed consumer; `make test` runs `mypy --strict` on it."""

from __future__ import annotations

import asyncio

import holysheep as hs


def describe(err: hs.RateLimitExceeded) -> str:
    return f"{err.limit}: retry after {err.retry_after}"


lim = hs.HolySheepRateLimiter(max_qps=10, max_concurrency=20)
quota = hs.HolySheepRateLimiter(limits=[hs.Limit(10, per="minute"), hs.Limit(1_000, per="day", unit="tokens")])
pro = hs.HolySheepRateLimiter.from_tier("pro")
bucket = hs.TokenBucket(rate=5, capacity=10)
window = hs.SlidingWindow(limit=100, window_s=60)
gate = hs.ConcurrencyLimiter(4)
per_user = hs.KeyedLimiter(hs.Limit(20, per="minute", algorithm="gcra", burst=5), max_keys=10_000, idle_ttl=600)
per_model = hs.KeyedLimiter(lambda model: hs.HolySheepRateLimiter(rpm=60, max_concurrency=4))


@lim
async def embed(text: str) -> list[float]:
    return [float(len(text))]


@lim
def embed_sync(text: str) -> list[float]:
    return [float(len(text))]


async def main() -> int:
    await lim.acquire(tokens=0, timeout=1.0, priority=1)
    lim.release()
    async with lim:
        pass
    async with quota.slot(tokens=50) as permit:
        permit.settle(40)
        spent: int = permit.tokens
    vectors: list[float] = await embed("hello")
    ready: bool = bucket.try_acquire()
    wait_s: float = window.time_until_ready()
    stats = pro.stats()
    with gate:
        pass
    await per_user.acquire("alice", timeout=5.0)
    async with per_model["gpt-4.1"]:
        pass
    keyed_ok: bool = per_user.try_acquire("bob")
    return int(keyed_ok) + int(ready) + len(vectors) + spent + int(wait_s) + int(stats["admitted"]) + len(embed_sync("x"))


# --- the mock gateway ---
def refusals(gateway: hs.testing.MockGateway) -> list[hs.testing.AdmissionRecord]:
    faults = hs.testing.Faults(timeout=0.01)
    with hs.testing.MockGateway(rpm=60, latency=(0.1, 0.2), faults=faults, window_s=1.0) as other:
        assert other.peak_admitted("tokens", key="hs_a") >= 0
    return [record for record in gateway.admission_log() if record.status == 429]


# --- resilience ------------------------------------------------------------------------------------


class QuietLimiter:
    """Anything usable in `async with` and `with` is a limiter to the decorators."""

    async def __aenter__(self) -> QuietLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def __enter__(self) -> QuietLimiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


async def resilience_usage() -> None:
    """Each decorator keeps the decorated function's type; names stay local to this function."""
    policy = hs.RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=60.0, jitter="full", max_elapsed=None)
    breaker = hs.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0, half_open_max_calls=3, name="gateway")
    per_model = hs.KeyedBreaker(failure_threshold=3, key=lambda prompt, model: model)

    @hs.retry(policy)
    def fetch(url: str) -> bytes:
        return url.encode()

    @breaker
    async def embed(texts: list[str]) -> list[list[float]]:
        return [[float(len(t))] for t in texts]

    @hs.resilient(limiter=QuietLimiter(), retry=policy, breaker=breaker)
    async def complete(prompt: str, model: str = "gpt-4.1") -> str:
        return prompt

    @hs.rate_limited(QuietLimiter())
    def limited(prompt: str) -> str:
        return prompt

    @per_model
    def route(prompt: str, model: str) -> str:
        return model

    data: bytes = fetch("https://api.holysheep.ai/v1/models")
    vectors: list[list[float]] = await embed(["a", "b"])
    reply: str = await complete("hi")
    again: str = await policy.call(complete, "hi", model="deepseek-v3.2")
    sync_again: bytes = policy.call_sync(fetch, "x")
    guarded: list[list[float]] = await breaker.call(embed, ["c"])
    schedule: list[float] = policy.delays()
    state: str = breaker.state
    opened: int = breaker.stats()["times_opened"]
    wait: float | None = breaker.retry_after
    model_state: str = per_model["gpt-4.1"].state
    try:
        async with breaker:
            route(limited(reply), "gpt-4.1")
    except hs.CircuitOpenError as err:
        print(err.retry_after)
    print(data, vectors, again, sync_again, guarded, schedule, state, opened, wait, model_state)


if __name__ == "__main__":
    asyncio.run(main())
