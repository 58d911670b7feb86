"""holysheep: keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures."""

from holysheep import testing
from holysheep._holysheep import Limit, __version__
from holysheep._keyed import KeyedLimiter
from holysheep._limiter import (
    ConcurrencyLimiter,
    HolySheepRateLimiter,
    Permit,
    SlidingWindow,
    TokenBucket,
)
from holysheep._tokens import chunk_by_tokens
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.errors import (
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    HolySheepError,
    RateLimitExceeded,
)
from holysheep.resilience import rate_limited, resilient, retry
from holysheep.retry import RetryPolicy

__all__ = [
    "BudgetExceeded",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConcurrencyLimiter",
    "ConfigError",
    "HolySheepError",
    "HolySheepRateLimiter",
    "KeyedBreaker",
    "KeyedLimiter",
    "Limit",
    "Permit",
    "RateLimitExceeded",
    "RetryPolicy",
    "SlidingWindow",
    "TokenBucket",
    "__version__",
    "chunk_by_tokens",
    "rate_limited",
    "resilient",
    "retry",
]
