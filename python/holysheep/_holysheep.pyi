"""Stubs for the native module; import ``holysheep`` rather than this."""

__version__: str

# --- resilience ------------------------------------------------------------------------------------

from collections.abc import Callable
from typing import Any, final

from typing_extensions import Self

__all__ = ["BreakerCore", "RetryCore", "SyncGuard", "__version__", "classify_failure", "retry_after"]

@final
class RetryCore:
    """The native half of ``holysheep.RetryPolicy``."""

    def __new__(
        cls,
        *,
        max_attempts: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        multiplier: float = 2.0,
        jitter: str = "full",
        respect_retry_after: bool = True,
        max_retry_after: float = 120.0,
        max_elapsed: float | None = None,
        retry_budget: float | None = None,
    ) -> Self: ...
    def begin(self) -> int:
        """Marks the start of a call; returns the token to pass to `next_delay`."""
    def next_delay(
        self, attempts: int, started: int, previous_delay: float, retry_after: float | None = None
    ) -> float | str:
        """After `attempts` retryable failures: seconds to wait, or the setting that says to give up."""
    def delays(self) -> list[float]:
        """The backoff schedule in seconds (random draws unless the jitter is "none")."""
    @property
    def max_attempts(self) -> int: ...
    @property
    def base_delay(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def multiplier(self) -> float: ...
    @property
    def jitter(self) -> str: ...
    @property
    def respect_retry_after(self) -> bool: ...
    @property
    def max_retry_after(self) -> float: ...
    @property
    def max_elapsed(self) -> float | None: ...
    @property
    def retry_budget(self) -> float | None: ...

@final
class BreakerCore:
    """The native half of ``holysheep.CircuitBreaker``."""

    def __new__(
        cls,
        *,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 3,
        name: str = "default",
    ) -> Self: ...
    def allow(self) -> int:
        """Admits a call and returns its permit; odd when this call turned the breaker half-open.
        Raises `CircuitOpenError` while open."""
    def success(self, permit: int) -> tuple[str, str] | None:
        """Records a success; returns `(from, to)` when that changed the state."""
    def failure(self, permit: int) -> tuple[str, str] | None:
        """Records a failure; returns `(from, to)` when that changed the state."""
    def release(self, permit: int) -> None:
        """Gives a permit back without a verdict (a cancelled call, or the caller's own bug)."""
    def counters(self) -> tuple[int, int, int, int]:
        """`(successes, failures, rejected, times_opened)` since the breaker was made."""
    @property
    def state(self) -> str: ...
    @property
    def retry_after(self) -> float | None: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def failure_threshold(self) -> int: ...
    @property
    def recovery_timeout(self) -> float: ...
    @property
    def half_open_max_calls(self) -> int: ...

@final
class SyncGuard:
    """The native half of holysheep's decorators on plain functions; made by the decorators."""

    def __new__(
        cls,
        call: Callable[..., Any],
        *,
        on_error: Callable[[int | None, BaseException, int, tuple[Any, ...], dict[str, Any]], Any],
        announce: Callable[[tuple[str, str]], None] | None = None,
        breaker: BreakerCore | None = None,
        timer: RetryCore | None = None,
        limiter: object | None = None,
    ) -> Self: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: object | None = None, /) -> Any:
        """Binds like a function, so a decorated method gets its `self`."""

def classify_failure(
    kind: str, status: int | None = None, should_retry: str | None = None, error_code: str | None = None
) -> tuple[bool, str]:
    """`(retry, breaker_outcome)` for a failure of `kind` ("status", "timeout", "connection", "caller",
    "cancelled", "unknown"); a status failure also gives its code, `x-should-retry` and body error code."""

def retry_after(headers: list[tuple[str, str]]) -> float | None:
    """Seconds the response headers ask to wait (`retry-after-ms`, `retry-after`, `x-ratelimit-reset-*`),
    or `None` when they ask nothing readable."""
