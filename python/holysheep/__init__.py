"""holysheep: keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures."""

from holysheep._holysheep import __version__
from holysheep.errors import (
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    HolySheepError,
    RateLimitExceeded,
)

# resilience
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.resilience import rate_limited, resilient, retry
from holysheep.retry import RetryPolicy

__all__ = [
    "BudgetExceeded",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigError",
    "HolySheepError",
    "KeyedBreaker",
    "RateLimitExceeded",
    "RetryPolicy",
    "__version__",
    "rate_limited",
    "resilient",
    "retry",
]
