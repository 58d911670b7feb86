"""holysheep: keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures."""

from holysheep._holysheep import __version__
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
    "ConfigError",
    "HolySheepError",
    "RateLimitExceeded",
    "__version__",
]

# --- the mock gateway: a submodule, imported so that `hs.testing.MockGateway` works after `import holysheep`
from holysheep import testing as testing  # noqa: E402
