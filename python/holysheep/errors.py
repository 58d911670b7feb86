"""The exceptions holysheep raises.

    HolySheepError
    ├── RateLimitExceeded(retry_after, limit, remaining)   a request that will not pass in time, or ever
    ├── CircuitOpenError(retry_after)                      a breaker is open: failing fast
    ├── BudgetExceeded                                     a spending limit would be crossed
    ├── ModelNotAllowed(model, allowed)                    a model outside the client's list: never sent
    ├── ConfigError (also a ValueError)                    a configuration that cannot work
    └── BackendUnavailable (also a ConnectionError)        a shared backend (Redis) is unreachable or slow

Messages name the operation and the numbers, never an API key.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "BudgetExceeded",
    "CircuitOpenError",
    "ConfigError",
    "HolySheepError",
    "ModelNotAllowed",
    "RateLimitExceeded",
]


class HolySheepError(Exception):
    """The base of every error holysheep raises."""


class RateLimitExceeded(HolySheepError):
    """A request that does not pass within the time allowed, or never can.

    :ivar retry_after: seconds until it could pass; ``None`` when it never can (its cost exceeds what
        the limit can ever admit) or when nothing foretells it (a concurrency slot must be released
        first, by whoever holds it).
    :ivar limit: the limit that refused it, e.g. ``"10 requests per 1s"``.
    :ivar remaining: what that limit has left now.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        limit: str | None = None,
        remaining: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining


class CircuitOpenError(HolySheepError):
    """A circuit breaker is open; calls fail fast until ``retry_after`` seconds have passed."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceeded(HolySheepError):
    """A request would cross a spending limit, so it is not sent."""


class ModelNotAllowed(HolySheepError):
    """A request asks for a model the client may not use (``allowed_models=``), so it is not sent.

    :ivar model: the model asked for.
    :ivar allowed: the models the client may use, in the order given.
    """

    def __init__(self, message: str, model: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.model = model
        self.allowed = allowed


class ConfigError(HolySheepError, ValueError):
    """A configuration that cannot work, refused at construction.

    :ivar field: the name of the bad field.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BackendUnavailable(HolySheepError, ConnectionError):
    """The shared backend (Redis) cannot be reached or did not answer in time. Raised under
    ``on_error="fail_closed"``; the other failure policies decide without it. Refused credentials are a
    `ConfigError` instead: retrying will not fix them."""
