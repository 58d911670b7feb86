"""The transport's arguments, checked when it is made: a bad one raises ConfigError naming it, not an
AttributeError at the first request."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from holysheep._limiter import HolySheepRateLimiter, _check_timeout
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.errors import ConfigError
from holysheep.retry import RetryPolicy

__all__ = ["check_settings"]


def check_settings(
    limiter: object,
    retry: object,
    breaker: object,
    inner: object,
    acquire_timeout: object,
    fallback_models: object,
    prices: object,
) -> None:
    """Raises ConfigError for the first argument `Transport` cannot work with."""
    if limiter is not None and not isinstance(limiter, HolySheepRateLimiter):
        raise ConfigError(f"limiter: must be a HolySheepRateLimiter or None, got {limiter!r}", "limiter")
    if retry is not None and not isinstance(retry, RetryPolicy):
        message = f"retry: must be a RetryPolicy (RetryPolicy(max_attempts=1) for none) or None, got {retry!r}"
        raise ConfigError(message, "retry")
    if breaker is not None and not isinstance(breaker, (CircuitBreaker, KeyedBreaker)):
        raise ConfigError(f"breaker: must be a CircuitBreaker, a KeyedBreaker or None, got {breaker!r}", "breaker")
    if inner is not None and not (hasattr(inner, "handle_async_request") or hasattr(inner, "handle_request")):
        raise ConfigError(f"inner: must be an httpx (or httpx2) transport or None, got {inner!r}", "inner")
    _check_timeout(acquire_timeout, "acquire_timeout")  # type: ignore[arg-type]
    if fallback_models is not None:
        _check_fallback_models(fallback_models)
    if prices is not None:
        _check_prices(prices)


def _check_fallback_models(fallback_models: object) -> None:
    def is_models(value: object) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(m, str) for m in value)

    if not isinstance(fallback_models, Mapping) or not all(
        isinstance(model, str) and is_models(next_models) for model, next_models in fallback_models.items()
    ):
        message = (
            'fallback_models: must map a model name to the models to ask next, e.g. {"gpt-4.1": ["deepseek-v3.2"]}, '
            f"got {fallback_models!r}"
        )
        raise ConfigError(message, "fallback_models")


def _check_prices(prices: object) -> None:
    if not isinstance(prices, Mapping):
        raise ConfigError(f"prices: must map a model name to dollars per million tokens, got {prices!r}", "prices")
    for model, price in prices.items():
        is_number = isinstance(price, (int, float)) and not isinstance(price, bool)
        if not isinstance(model, str) or not is_number or not (math.isfinite(price) and price >= 0):
            message = f"prices: {model!r} must cost a finite number of dollars per million tokens, 0 or more, got {price!r}"
            raise ConfigError(message, "prices")

