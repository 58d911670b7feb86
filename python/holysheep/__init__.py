"""holysheep: keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures."""

from typing import TYPE_CHECKING

from holysheep import testing
from holysheep._holysheep import Limit, __version__
from holysheep._engine import BatchReport, arun_batch, run_batch
from holysheep._keyed import KeyedLimiter
from holysheep._coalesce import Coalesce
from holysheep._priority import priority
from holysheep._profiles import PROFILES, Profile
from holysheep._limiter import (
    ConcurrencyLimiter,
    HolySheepRateLimiter,
    Permit,
    SlidingWindow,
    TokenBucket,
)
from holysheep._redis import RedisBackend
from holysheep._tokens import chunk_by_tokens
from holysheep.batch import BatchFailure, batch_chat, batch_chat_sync, batch_embed, batch_embed_sync
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.errors import (
    BackendUnavailable,
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    HolySheepError,
    ModelNotAllowed,
    RateLimitExceeded,
)
from holysheep.preview import PreviewReport, ServerModel, preview
from holysheep.resilience import rate_limited, resilient, retry
from holysheep.retry import RetryPolicy

# The openai client and its transport import the openai SDK and an HTTP library: only when asked for.
_LAZY = {
    "AsyncHolySheep": "holysheep.client",
    "HolySheep": "holysheep.client",
    "Transport": "holysheep.transport",
    "instrument": "holysheep.metrics",
    "serve_metrics": "holysheep.metrics",
    "transport_class": "holysheep.transport",
    "wrap": "holysheep.client",
}


if TYPE_CHECKING:
    from holysheep.client import AsyncHolySheep, HolySheep, wrap
    from holysheep.metrics import instrument, serve_metrics
    from holysheep.transport import Transport, transport_class


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'holysheep' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncHolySheep",
    "BackendUnavailable",
    "BatchFailure",
    "BatchReport",
    "BudgetExceeded",
    "CircuitBreaker",
    "CircuitOpenError",
    "Coalesce",
    "ConcurrencyLimiter",
    "ConfigError",
    "HolySheep",
    "HolySheepError",
    "HolySheepRateLimiter",
    "KeyedBreaker",
    "KeyedLimiter",
    "Limit",
    "ModelNotAllowed",
    "PROFILES",
    "Permit",
    "PreviewReport",
    "Profile",
    "RateLimitExceeded",
    "RedisBackend",
    "RetryPolicy",
    "ServerModel",
    "SlidingWindow",
    "TokenBucket",
    "Transport",
    "__version__",
    "arun_batch",
    "batch_chat",
    "batch_chat_sync",
    "batch_embed",
    "batch_embed_sync",
    "chunk_by_tokens",
    "instrument",
    "preview",
    "priority",
    "rate_limited",
    "resilient",
    "retry",
    "run_batch",
    "serve_metrics",
    "transport_class",
    "wrap",
]
