"""Every public call checks every argument when it starts: a bad one raises ConfigError naming it.

One table per public type, one row per bad argument: strings for numbers, NaN, inf where it is not
allowed, negatives, 0 where it is not allowed, 2**64, bools where numbers are expected (refused: True is
an int in Python, but ``max_concurrency=True`` is a slip, never a way to write 1), unknown names,
wrong types. The message starts with the field's name and says what it must be.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import openai
import pytest

import holysheep as hs

NAN, INF = math.nan, math.inf

def row(call: Callable[[], Any], field: str, id: str) -> Any:
    return pytest.param(call, field, id=id)


async def assert_refused(call: Callable[[], Any], field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        result = call()
        if inspect.isawaitable(result):
            await result
    assert info.value.field == field, f"{info.value!r} names {info.value.field!r}"
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def limit_rows() -> list[Any]:
    bad_numbers = {"str": "10", "nan": NAN, "inf": INF, "negative": -1, "zero": 0, "bool": True, "huge": 10**400}
    rows = [row(lambda v=v: hs.Limit(v), "amount", f"amount-{name}") for name, v in bad_numbers.items()]
    rows += [row(lambda: hs.Limit(None), "amount", "amount-none")]  # type: ignore[arg-type]
    bad_periods = {"name": "fortnight", "negative": -5, "zero": 0, "nan": NAN, "inf": INF, "bool": True, "list": []}
    rows += [row(lambda v=v: hs.Limit(10, per=v), "per", f"per-{name}") for name, v in bad_periods.items()]
    rows += [
        row(lambda: hs.Limit(10, per=1e-12), "per", "per-under-a-nanosecond"),
        row(lambda: hs.Limit(10, unit="dollars"), "unit", "unit-unknown"),  # type: ignore[arg-type]
        row(lambda: hs.Limit(10, unit=3), "unit", "unit-int"),  # type: ignore[arg-type]
        row(lambda: hs.Limit(10, algorithm="leaky"), "algorithm", "algorithm-unknown"),  # type: ignore[arg-type]
        row(lambda: hs.Limit(10, algorithm=1), "algorithm", "algorithm-int"),  # type: ignore[arg-type]
        row(lambda: hs.Limit(10, burst=2), "burst", "burst-on-exact"),
    ]
    bad_bursts = {"str": "2", "half": 0.5, "nan": NAN, "inf": INF, "negative": -1, "bool": True}
    rows += [
        row(lambda v=v: hs.Limit(10, algorithm="gcra", burst=v), "burst", f"burst-{name}")
        for name, v in bad_bursts.items()
    ]
    bad_guards = {"str": "0.1", "nan": NAN, "inf": INF, "negative": -1, "bool": True}
    rows += [row(lambda v=v: hs.Limit(10, guard=v), "guard", f"guard-{name}") for name, v in bad_guards.items()]
    return rows


@pytest.mark.parametrize(("call", "field"), limit_rows())
async def test_limit_refuses_a_bad_argument_naming_it(call: Callable[[], Any], field: str) -> None:
    await assert_refused(call, field)


GCRA = hs.Limit(10, per="second", algorithm="gcra", burst=2)


def table() -> hs.KeyedLimiter:
    return hs.KeyedLimiter(GCRA)


def per_key() -> hs.KeyedLimiter:
    return hs.KeyedLimiter(hs.Limit(10, per="second"))


def keyed_rows() -> list[Any]:
    rows = [
        row(lambda v=v: hs.KeyedLimiter(v), "limits_or_factory", f"config-{name}")
        for name, v in {"str": "x", "int": 5, "empty": [], "not-limits": ["x"], "mixed": [GCRA, "x"]}.items()
    ]
    rows += [row(lambda: hs.KeyedLimiter([GCRA] * 5), "limits_or_factory", "config-five-gcra-limits")]
    bad_counts = {"zero": 0, "negative": -1, "huge": 2**64, "str": "3", "bool": True, "float": 1.5, "none": None}
    for name, v in bad_counts.items():
        rows.append(row(lambda v=v: hs.KeyedLimiter(GCRA, max_keys=v), "max_keys", f"max_keys-{name}"))
        rows.append(
            row(
                lambda v=v: hs.KeyedLimiter(lambda key: hs.ConcurrencyLimiter(1), max_keys=v),
                "max_keys",
                f"factory-max_keys-{name}",
            )
        )
    for name, v in {"negative": -1, "nan": NAN, "inf": INF, "str": "1", "bool": True}.items():
        rows.append(row(lambda v=v: hs.KeyedLimiter(GCRA, idle_ttl=v), "idle_ttl", f"idle_ttl-{name}"))
    returns_int = lambda: hs.KeyedLimiter(lambda key: 5).try_acquire("k")  # type: ignore[arg-type,return-value]  # noqa: E731
    rows.append(row(returns_int, "limits_or_factory", "factory-returns-int"))
    for kind, make in {"table": table, "per-key": per_key}.items():
        rows.append(row(lambda make=make: make().try_acquire([]), "key", f"{kind}-try_acquire-unhashable-key"))
        rows.append(row(lambda make=make: make().acquire({}), "key", f"{kind}-acquire-unhashable-key"))
        rows.append(row(lambda make=make: make()[[]], "key", f"{kind}-getitem-unhashable-key"))
        for name, v in {"negative": -1, "str": "1", "float": 1.5, "bool": True, "huge": 2**64}.items():
            rows.append(
                row(
                    lambda make=make, v=v: make().try_acquire("k", tokens=v),
                    "tokens",
                    f"{kind}-try_acquire-tokens-{name}",
                )
            )
            rows.append(
                row(
                    lambda make=make, v=v: make().time_until_ready("k", tokens=v),
                    "tokens",
                    f"{kind}-time_until_ready-tokens-{name}",
                )
            )
            rows.append(
                row(lambda make=make, v=v: make().acquire("k", tokens=v), "tokens", f"{kind}-acquire-tokens-{name}")
            )
        for name, v in {"negative": -1, "nan": NAN, "str": "1", "bool": True}.items():
            rows.append(
                row(lambda make=make, v=v: make().acquire("k", timeout=v), "timeout", f"{kind}-acquire-timeout-{name}")
            )
            rows.append(
                row(
                    lambda make=make, v=v: make().acquire_blocking("k", timeout=v),
                    "timeout",
                    f"{kind}-acquire_blocking-timeout-{name}",
                )
            )
    return rows


@pytest.mark.parametrize(("call", "field"), keyed_rows())
async def test_keyed_limiter_refuses_a_bad_argument_naming_it(call: Callable[[], Any], field: str) -> None:
    await assert_refused(call, field)


async def test_a_timeout_of_inf_means_forever_and_none_too() -> None:
    for keyed in (table(), per_key()):
        await keyed.acquire("k", timeout=INF)
        await keyed.acquire("j", timeout=None)


def client_rows() -> list[Any]:
    key = {"api_key": "hs_test"}
    bad = [
        ("retry", 5),
        ("retry", "fast"),
        ("breaker", "x"),
        ("breaker", hs.RetryPolicy()),
        ("limiter", 5),
        ("limiter", hs.KeyedLimiter(GCRA)),
        ("tier", "platinum"),
        ("tier", 5),
        ("api_key", 5),
        ("api_key", b"hs_bytes"),
        ("base_url", "not a url"),
        ("base_url", "ftp://127.0.0.1/v1"),
        ("base_url", 5),
        ("acquire_timeout", -1),
        ("acquire_timeout", NAN),
        ("acquire_timeout", "1"),
        ("acquire_timeout", True),
        ("fallback_models", {"gpt-4.1": "deepseek-v3.2"}),
        ("fallback_models", ["deepseek-v3.2"]),
        ("max_retries", 2),
    ]
    rows = []
    for make in (hs.AsyncHolySheep, hs.HolySheep):
        for field, v in bad:
            options = {**key, field: v}
            rows.append(
                row(lambda make=make, options=options: make(**options), field, f"{make.__name__}-{field}-{v!r}")
            )
    rows.append(
        row(
            lambda: hs.AsyncHolySheep(**key, limiter=hs.HolySheepRateLimiter(rpm=5), tier="pro"),
            "tier",
            "limiter-and-tier",
        )
    )
    rows.append(row(lambda: hs.wrap(5), "client", "wrap-not-a-client"))  # type: ignore[type-var]
    rows.append(row(lambda: hs.wrap(openai.AsyncOpenAI(**key), retry=5), "retry", "wrap-retry-int"))  # type: ignore[arg-type]
    return rows


@pytest.mark.parametrize(("call", "field"), client_rows())
async def test_clients_refuse_a_bad_argument_when_made(call: Callable[[], Any], field: str) -> None:
    await assert_refused(call, field)


# Issue 15: a negative or NaN price let every request through a budget; a string price failed at the
# first request with TypeError.
@pytest.mark.parametrize(
    "prices",
    [
        {"gpt-4.1": -8.0},
        {"gpt-4.1": NAN},
        {"gpt-4.1": INF},
        {"gpt-4.1": "8"},
        {"gpt-4.1": True},
        {5: 1.0},
        [("gpt-4.1", 8.0)],
    ],
    ids=repr,
)
@pytest.mark.parametrize("make", [hs.AsyncHolySheep, hs.HolySheep])
def test_a_bad_price_is_refused_when_the_client_is_made(make: Callable[..., Any], prices: Any) -> None:
    with pytest.raises(hs.ConfigError) as info:
        make(api_key="hs_test", prices=prices)
    assert info.value.field == "prices"
    model = next(iter(prices)) if isinstance(prices, dict) else None
    if isinstance(model, str):
        assert repr(model) in str(info.value), "the message names the model"


def test_good_prices_override_the_table() -> None:
    client = hs.AsyncHolySheep(api_key="hs_test", prices={"gpt-4.1": 0, "my-model": 1.5})
    assert client.transport.prices["gpt-4.1"] == 0.0 and client.transport.prices["my-model"] == 1.5


def batch_rows() -> list[Any]:
    client = openai.AsyncOpenAI(api_key="hs_test", base_url="http://127.0.0.1:9/v1")
    rows = []
    for name, v in {"zero": 0, "str": "8", "bool": True, "float": 2.5, "huge": 2**64}.items():
        rows.append(
            row(
                lambda v=v: hs.batch_embed(client, ["a"], model="m", concurrency=v),
                "concurrency",
                f"embed-concurrency-{name}",
            )
        )
        rows.append(
            row(
                lambda v=v: hs.batch_embed(client, ["a"], model="m", batch_size=v),
                "batch_size",
                f"embed-batch_size-{name}",
            )
        )
        rows.append(
            row(
                lambda v=v: hs.batch_chat(client, ["a"], model="m", concurrency=v),
                "concurrency",
                f"chat-concurrency-{name}",
            )
        )
    for name, v in {"negative": -1, "nan": NAN, "str": "1"}.items():
        rows.append(
            row(
                lambda v=v: hs.batch_chat(client, ["a"], model="m", max_breaker_wait=v),
                "max_breaker_wait",
                f"chat-max_breaker_wait-{name}",
            )
        )
    return rows


@pytest.mark.parametrize(("call", "field"), batch_rows())
async def test_batch_helpers_refuse_a_bad_argument_naming_it(call: Callable[[], Any], field: str) -> None:
    await assert_refused(call, field)


def limiter_rows() -> list[Any]:
    """HolySheepRateLimiter and its presets: constructor and every call, on a free limiter."""
    rows = []
    for field in ("rpm", "tpm", "max_qps"):
        for name, v in {
            "str": "60",
            "nan": NAN,
            "inf": INF,
            "negative": -1,
            "zero": 0,
            "bool": True,
            "huge": 10**400,
        }.items():
            rows.append(
                row(lambda field=field, v=v: hs.HolySheepRateLimiter(**{field: v}), field, f"{field}-{name}")
            )
    for name, v in {"zero": 0, "negative": -1, "huge": 2**64, "str": "2", "float": 2.5, "bool": True}.items():
        rows.append(
            row(
                lambda v=v: hs.HolySheepRateLimiter(max_concurrency=v), "max_concurrency", f"max_concurrency-{name}"
            )
        )
    for name, v in {"half": 0.5, "str": "2", "nan": NAN, "inf": INF, "bool": True}.items():
        rows.append(row(lambda v=v: hs.HolySheepRateLimiter(rpm=60, burst=v), "burst", f"burst-{name}"))
    rows += [
        row(lambda: hs.HolySheepRateLimiter(burst=5), "burst", "burst-without-a-rate"),
        row(lambda: hs.HolySheepRateLimiter(tier="platinum"), "tier", "tier-unknown"),
        row(lambda: hs.HolySheepRateLimiter(tier=5), "tier", "tier-int"),  # type: ignore[arg-type]
        row(lambda: hs.HolySheepRateLimiter.from_tier("platinum"), "tier", "from_tier-unknown"),
        row(lambda: hs.HolySheepRateLimiter(limits="x"), "limits", "limits-str"),  # type: ignore[arg-type]
        row(lambda: hs.HolySheepRateLimiter(limits=[5]), "limits", "limits-of-ints"),  # type: ignore[list-item]
        row(lambda: hs.HolySheepRateLimiter(rpm=60, backend="redis://127.0.0.1"), "backend", "backend-str"),  # type: ignore[arg-type]
        row(
            lambda: hs.HolySheepRateLimiter(rpm=60, backend=hs.RedisBackend("redis://127.0.0.1:1/0"), key=5),
            "key",
            "key-int",
        ),  # type: ignore[arg-type]
        row(lambda: hs.TokenBucket(rate="5"), "rate", "token_bucket-rate-str"),  # type: ignore[arg-type]
        row(lambda: hs.TokenBucket(rate=5, capacity=0), "capacity", "token_bucket-capacity-zero"),
        row(lambda: hs.SlidingWindow(limit=10, window_s="x"), "window_s", "sliding_window-window_s-str"),  # type: ignore[arg-type]
        row(lambda: hs.SlidingWindow(limit=-1, window_s=1), "limit", "sliding_window-limit-negative"),
        row(lambda: hs.ConcurrencyLimiter(0), "n", "concurrency_limiter-zero"),
        row(lambda: hs.ConcurrencyLimiter("2"), "n", "concurrency_limiter-str"),  # type: ignore[arg-type]
        row(lambda: hs.ConcurrencyLimiter(True), "n", "concurrency_limiter-bool"),
    ]
    return rows + call_rows(lambda: hs.HolySheepRateLimiter(rpm=600, tpm=100_000, max_concurrency=10), "")


def call_rows(free: Callable[[], hs.HolySheepRateLimiter], kind: str) -> list[Any]:
    """Every call of a free limiter that ``free`` makes, with each bad argument; ``kind`` prefixes the ids."""
    rows = []
    for name, v in {"negative": -1, "str": "1", "float": 1.5, "bool": True, "huge": 2**64}.items():
        rows.append(row(lambda v=v: free().try_acquire(tokens=v), "tokens", f"{kind}try_acquire-tokens-{name}"))
        rows.append(
            row(lambda v=v: free().time_until_ready(tokens=v), "tokens", f"{kind}time_until_ready-tokens-{name}")
        )
        rows.append(row(lambda v=v: free().acquire(tokens=v), "tokens", f"{kind}acquire-tokens-{name}"))
        rows.append(
            row(lambda v=v: free().acquire_blocking(tokens=v), "tokens", f"{kind}acquire_blocking-tokens-{name}")
        )
        rows.append(row(lambda v=v: free().slot(tokens=v), "tokens", f"{kind}slot-tokens-{name}"))
    for name, v in {"negative": -1, "nan": NAN, "str": "1", "bool": True}.items():
        rows.append(row(lambda v=v: free().acquire(timeout=v), "timeout", f"{kind}acquire-timeout-{name}"))
        rows.append(
            row(lambda v=v: free().acquire_blocking(timeout=v), "timeout", f"{kind}acquire_blocking-timeout-{name}")
        )
        rows.append(row(lambda v=v: free().slot(timeout=v), "timeout", f"{kind}slot-timeout-{name}"))
    for name, v in {"str": "x", "float": 1.5, "bool": True, "huge": 2**64}.items():
        rows.append(row(lambda v=v: free().acquire(priority=v), "priority", f"{kind}acquire-priority-{name}"))
        rows.append(
            row(
                lambda v=v: free().acquire_blocking(priority=v), "priority", f"{kind}acquire_blocking-priority-{name}"
            )
        )
        rows.append(row(lambda v=v: free().slot(priority=v), "priority", f"{kind}slot-priority-{name}"))
    return rows


def redis_backend_rows() -> list[Any]:
    url = "redis://127.0.0.1:1/0"  # never connected to: every argument is checked before
    bad_seconds = {"negative": -1, "zero": 0, "nan": NAN, "inf": INF, "str": "2", "bool": True}
    rows = [
        row(lambda: hs.RedisBackend(5), "url", "url-int"),  # type: ignore[arg-type]
        row(lambda: hs.RedisBackend(url, prefix=5), "prefix", "prefix-int"),  # type: ignore[arg-type]
        row(lambda: hs.RedisBackend(url, on_error="ignore"), "on_error", "on_error-unknown"),  # type: ignore[arg-type]
        row(lambda: hs.RedisBackend(url, on_error=1), "on_error", "on_error-int"),  # type: ignore[arg-type]
        row(lambda: hs.RedisBackend(url, lease_ttl=0.0001), "lease_ttl", "lease_ttl-below-a-millisecond"),
        row(lambda: hs.RedisBackend(url, tls_ca_cert="/nonexistent/ca.pem"), "tls_ca_cert", "tls_ca_cert-missing"),
        row(lambda: hs.RedisBackend(url, tls_ca_cert=5), "tls_ca_cert", "tls_ca_cert-int"),  # type: ignore[arg-type]
        row(lambda: hs.RedisBackend(url, cluster="yes"), "cluster", "cluster-str"),  # type: ignore[arg-type]
    ]
    for field in ("connect_timeout", "command_timeout", "lease_ttl"):
        for name, v in bad_seconds.items():
            rows.append(row(lambda field=field, v=v: hs.RedisBackend(url, **{field: v}), field, f"{field}-{name}"))
    # 0 is allowed: it sleeps at once.
    for name, v in {**bad_seconds, "above-a-millisecond": 0.002}.items():
        if name != "zero":
            rows.append(row(lambda v=v: hs.RedisBackend(url, spin_wait=v), "spin_wait", f"spin_wait-{name}"))
    return rows


@pytest.mark.parametrize(("call", "field"), redis_backend_rows())
async def test_redis_backend_refuses_a_bad_argument_naming_it(call: Callable[[], Any], field: str) -> None:
    await assert_refused(call, field)


@pytest.mark.parametrize(("call", "field"), limiter_rows())
async def test_limiter_refuses_a_bad_argument_naming_it(call: Callable[[], Any], field: str) -> None:
    await assert_refused(call, field)


def unreachable_shared_limiter() -> hs.HolySheepRateLimiter:
    """A limiter shared through a Redis nobody answers at, refusing while it is away: any call that asked
    Redis before checking its arguments would raise BackendUnavailable instead of ConfigError."""
    backend = hs.RedisBackend("redis://127.0.0.1:1/0", connect_timeout=0.2, on_error="fail_closed")
    return hs.HolySheepRateLimiter(rpm=600, tpm=100_000, max_concurrency=10, backend=backend, key="bad-input")


@pytest.mark.parametrize(("call", "field"), call_rows(unreachable_shared_limiter, "redis-"))
async def test_a_limiter_shared_through_redis_refuses_a_bad_argument_before_asking_redis(
    call: Callable[[], Any], field: str
) -> None:
    await assert_refused(call, field)
