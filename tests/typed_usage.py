"""A small program that uses the public API as a typed consumer; `make test` runs `mypy --strict` on it."""

from __future__ import annotations

import holysheep as hs


def describe(err: hs.RateLimitExceeded) -> str:
    return f"{err.limit}: retry after {err.retry_after}"


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
