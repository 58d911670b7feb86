"""holysheep: keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures."""

from holysheep._holysheep import Limit, __version__
from holysheep._keyed import KeyedLimiter
from holysheep._limiter import (
    ConcurrencyLimiter,
    HolySheepRateLimiter,
    Permit,
    SlidingWindow,
    TokenBucket,
)
from holysheep._redis import RedisBackend, SharedRateLimiter
from holysheep.errors import (
    BackendUnavailable,
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    HolySheepError,
    RateLimitExceeded,
)

__all__ = [
    "BackendUnavailable",
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
    "RedisBackend",
    "SharedRateLimiter",
    "SlidingWindow",
    "TokenBucket",
    "__version__",
]
