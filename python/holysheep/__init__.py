"""holysheep: keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures."""

from holysheep import testing
from holysheep._holysheep import Limit, __version__
from holysheep._keyed import KeyedLimiter
from holysheep._tokens import chunk_by_tokens
from holysheep._limiter import (
    ConcurrencyLimiter,
    HolySheepRateLimiter,
    Permit,
    SlidingWindow,
    TokenBucket,
)
from holysheep.errors import (
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    HolySheepError,
    RateLimitExceeded,
)

__all__ = [
    "BudgetExceeded",
    "CircuitOpenError",
    "ConcurrencyLimiter",
    "ConfigError",
    "HolySheepError",
    "HolySheepRateLimiter",
    "KeyedLimiter",
    "Limit",
    "Permit",
    "RateLimitExceeded",
    "SlidingWindow",
    "TokenBucket",
    "__version__",
    "chunk_by_tokens",
]
