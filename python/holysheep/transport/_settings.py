"""The transport's arguments, checked when it is made: a bad one raises ConfigError naming it, not an
AttributeError at the first request. (``acquire_timeout`` and ``prices`` are checked where they are
read, by ``_check_timeout`` and `holysheep.pricing.checked_prices`.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.errors import ConfigError
from holysheep.retry import RetryPolicy

__all__ = ["check_settings"]


def check_settings(retry: object, breaker: object, inner: object, fallback_models: object) -> None:
    """Raises ConfigError for the first argument `Transport` cannot work with (the limiter is checked as
    its routes are made: `holysheep.transport._routes`)."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        message = f"retry: must be a RetryPolicy (RetryPolicy(max_attempts=1) for none) or None, got {retry!r}"
        raise ConfigError(message, "retry")
    if breaker is not None and not isinstance(breaker, (CircuitBreaker, KeyedBreaker)):
        raise ConfigError(f"breaker: must be a CircuitBreaker, a KeyedBreaker or None, got {breaker!r}", "breaker")
    if inner is not None and not (hasattr(inner, "handle_async_request") or hasattr(inner, "handle_request")):
        raise ConfigError(f"inner: must be an httpx (or httpx2) transport or None, got {inner!r}", "inner")
    if fallback_models is not None and not _is_fallback_models(fallback_models):
        message = (
            'fallback_models: must map a model name to the models to ask next, e.g. {"gpt-4.1": ["deepseek-v3.2"]}, '
            f"got {fallback_models!r}"
        )
        raise ConfigError(message, "fallback_models")


def _is_fallback_models(value: object) -> bool:
    def is_names(names: object) -> bool:
        return isinstance(names, Sequence) and not isinstance(names, str) and all(isinstance(n, str) for n in names)

    return isinstance(value, Mapping) and all(isinstance(model, str) and is_names(v) for model, v in value.items())
