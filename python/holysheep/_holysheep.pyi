"""Stubs for the native module; import ``holysheep`` rather than this."""

import asyncio
from collections.abc import Awaitable, Callable, Generator, Hashable, Sequence
from types import TracebackType
from typing import Any, Literal, final

from typing_extensions import Self, disjoint_base

__all__ = [
    "BreakerCore",
    "Limit",
    "MockGatewayConfig",
    "MockGatewayServer",
    "RetryCore",
    "SyncGuard",
    "_Grant",
    "_KeyedTable",
    "_Limiter",
    "_LoopChannel",
    "_Ready",
    "_RedisBackend",
    "_RedisLimiter",
    "_Reservation",
    "_Ticket",
    "_WaitQueue",
    "__version__",
    "_shutdown_redis_runtime",
    "classify_failure",
    "retry_after",
]
__version__: str

@final
class Limit:
    """At most ``amount`` units per period, in ANY interval of that length."""

    def __new__(
        cls,
        amount: float,
        per: str | float | None = None,
        *,
        unit: Literal["requests", "tokens", "usd"] = "requests",
        algorithm: Literal["exact", "gcra", "counter"] = "exact",
        burst: float | None = None,
        guard: float | None = None,
    ) -> Self: ...
    @property
    def amount(self) -> float: ...
    @property
    def guard(self) -> float: ...
    @property
    def per(self) -> float: ...
    @property
    def unit(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def burst(self) -> int | None: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class _Ready:
    """An awaitable that is already done."""

    def __await__(self) -> Generator[None, None, None]: ...
    def __next__(self) -> None: ...

@final
class _Reservation:
    @property
    def wait(self) -> float: ...
    @property
    def tokens(self) -> int: ...
    def stamp(self) -> None: ...
    def confirm(self) -> float: ...
    def give_back(self) -> None: ...
    def settle(self, actual_tokens: int) -> None: ...

@final
class _Ticket: ...

@final
class _KeyedTable:
    def __new__(cls, limits: Sequence[Limit], max_keys: int, idle_ttl: float) -> Self: ...
    @staticmethod
    def check_bounds(max_keys: int, idle_ttl: float) -> tuple[int, int]: ...
    def try_acquire(self, key: Hashable, tokens: int) -> bool: ...
    def reserve(self, key: Hashable, tokens: int, timeout: float | None) -> tuple[float, int]: ...
    def give_back(self, key: Hashable, tokens: int, receipt: int) -> None: ...
    def time_until_ready(self, key: Hashable, tokens: int) -> float: ...
    def forget_idle(self) -> int: ...
    @property
    def limits(self) -> list[Limit]: ...
    def __len__(self) -> int: ...

@final
class _WaitQueue:
    def __init__(self) -> None: ...
    def push(self, priority: int, waiter: Any) -> _Ticket: ...
    def front(self) -> Any | None: ...
    def is_front(self, ticket: _Ticket) -> bool: ...
    def pop_front(self) -> Any | None: ...
    def remove(self, ticket: _Ticket) -> Any | None: ...
    def __len__(self) -> int: ...

@disjoint_base
class _Limiter:
    def __new__(
        cls,
        max_qps: float | None = None,
        max_concurrency: int | None = None,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float | None = None,
        limits: Sequence[Limit] | None = None,
        tier: str | None = None,
    ) -> Self: ...
    def try_acquire(self, tokens: int = 0) -> bool:
        """Takes one request (and ``tokens`` LLM tokens) now if every limit allows; never waits."""
    def time_until_ready(self, tokens: int = 0) -> float:
        """Seconds until the rate limits would admit the request; 0.0 when now."""
    def release(self) -> None:
        """Returns the concurrency slot taken by acquire; wakes the next waiter, if any."""
    def _release_admitted(self, _admitted: Any) -> None: ...
    def _settle_admitted(self, admitted: Any, actual_tokens: int) -> None: ...
    def __aenter__(self) -> Awaitable[None]: ...
    def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Awaitable[None]: ...
    def __enter__(self) -> None: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    @property
    def limits(self) -> list[Limit]: ...
    @property
    def max_concurrency(self) -> int | None: ...
    def stats(self) -> dict[str, Any]:
        """admitted, rejected, in_flight, waiting, waited, waited_s_p50, waited_s_p99, server_429s,
        rate_factor and tokens_rate_factor (the fractions of the configured requests and tokens rates in
        force: below 1 while the server allows less), remaining."""
    def _admit_now(self, tokens: int) -> bool: ...
    def _reject(self) -> None: ...
    def _try_reserve(self, tokens: int, price: float = 0.0) -> _Reservation | None: ...
    def _admit_at_once(self, tokens: int, price: float) -> _Reservation | None: ...
    def _try_slot(self, for_waiter: bool = False) -> bool: ...
    def _release_slot(self) -> None: ...
    def _hand_over(self) -> None: ...
    def _abandon(self) -> None: ...
    def _record_wait(self, seconds: float) -> None: ...
    def _park(self, kind: Literal["slot", "rate"]) -> None: ...
    def _unpark(self, kind: Literal["slot", "rate"]) -> None: ...
    def _has_waiters(self) -> bool: ...
    def _reserve(
        self, tokens: int, timeout: float | None, operation: str = "acquire", price: float = 0.0
    ) -> _Reservation: ...
    def _sleep(self, seconds: float) -> None: ...
    def _server_answered(self, status: int, admitted: object, headers: object) -> None: ...
    def _rate_factors(self) -> tuple[float, float]: ...

# --- the mock gateway (python/holysheep/testing.py wraps these) ---

@final
class MockGatewayConfig:
    """A gateway configuration, checked when made: a bad field raises ConfigError naming it."""

    def __new__(
        cls,
        *,
        rpm: int | None = None,
        rph: int | None = None,
        rpd: int | None = None,
        tpm: int | None = None,
        tph: int | None = None,
        tpd: int | None = None,
        concurrency: int | None = None,
        credit_tokens: int | None = None,
        window_s: float = 60.0,
        api_keys: list[str] | None = None,
        latency_s: float = 0.0,
        latency_max_s: float | None = None,
        seed: int = 0,
        embedding_dim: int = 1536,
        completion_tokens: int = 16,
        log: bool = True,
        server_error: float = 0.0,
        bad_gateway: float = 0.0,
        unavailable: float = 0.0,
        timeout: float = 0.0,
        reset: float = 0.0,
        malformed: float = 0.0,
        outage_s: tuple[float, float] | None = None,
    ) -> MockGatewayConfig: ...
    @property
    def window_s(self) -> float: ...

@final
class MockGatewayServer:
    """A gateway serving on 127.0.0.1 from its own threads until stopped (or dropped)."""

    def __new__(cls, config: MockGatewayConfig, port: int = 0) -> MockGatewayServer: ...
    @property
    def port(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def admission_log(self) -> list[tuple[float, str, str, int, int, bool, str | None]]: ...
    def peak_admitted(self, window_s: float, unit: str = "requests", key: str | None = None) -> int: ...


@final
class RetryCore:
    """The native half of ``holysheep.RetryPolicy``."""

    def __new__(
        cls,
        *,
        max_attempts: int,
        base_delay: float,
        max_delay: float,
        multiplier: float,
        jitter: str,
        respect_retry_after: bool,
        max_retry_after: float,
        max_elapsed: float | None,
        retry_budget: float | None,
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
        cls, *, failure_threshold: int, recovery_timeout: float, half_open_max_calls: int, name: str
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
) -> tuple[bool, str, bool]:
    """`(retry, breaker_outcome, fallback)` for a failure of `kind` ("status", "timeout", "connection",
    "caller", "cancelled", "unknown"); a status failure also gives its code, `x-should-retry` and body
    error code."""

def retry_after(headers: list[tuple[str, str]]) -> float | None:
    """Seconds the response headers ask to wait (`retry-after-ms`, `retry-after`, `x-ratelimit-reset-*`),
    or `None` when they ask nothing readable."""

@disjoint_base
class _RedisBackend:
    """A Redis server and its settings; use ``holysheep.RedisBackend``."""

    def __new__(
        cls,
        url: str,
        *,
        prefix: str = "holysheep",
        connect_timeout: float = 2.0,
        command_timeout: float = 1.0,
        tls_ca_cert: bytes | None = None,
        cluster: bool = False,
    ) -> Self: ...
    @property
    def url(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def command_timeout(self) -> float: ...

@final
class _Grant:
    """One admission decided in Redis."""

    @property
    def wait(self) -> float: ...
    @property
    def at(self) -> float: ...
    @property
    def at_us(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def has_lease(self) -> bool: ...
    def settle(self, actual_tokens: int, wait: bool = True) -> None: ...
    def give_back(self, wait: bool = True) -> None: ...
    def release(self, wait: bool = True) -> None: ...

@final
class _RedisLimiter:
    """One limit shared through Redis."""

    def __new__(
        cls,
        backend: _RedisBackend,
        key: str,
        limits: Sequence[Limit],
        max_concurrency: int | None,
        lease_ttl: float,
    ) -> Self: ...
    def decide(
        self, tokens: int, max_wait: float | None, reserve: bool, lease: bool, operation: str = "acquire"
    ) -> _Grant | float: ...
    def decide_soon(
        self,
        future: asyncio.Future[_Grant | float],
        resolve: Callable[[asyncio.Future[Any], bool, Any], None],
        tokens: int,
        max_wait: float | None,
        reserve: bool,
        lease: bool,
        operation: str,
    ) -> None: ...
    def follow(self, requests: float, tokens: float) -> None: ...
    def open_channel(self, event_loop: asyncio.AbstractEventLoop) -> _LoopChannel | None: ...
    def peek(self, tokens: int = 0) -> tuple[float, int, list[int]]: ...
    @property
    def members(self) -> int: ...
    @property
    def keys(self) -> list[str]: ...

@final
class _LoopChannel:
    """One limit's connection to Redis driven by one asyncio event loop."""

    def decide(
        self,
        future: asyncio.Future[_Grant | float],
        tokens: int,
        max_wait: float | None,
        reserve: bool,
        lease: bool,
        operation: str,
    ) -> None: ...
    def attach(self) -> None: ...
    @property
    def is_open(self) -> bool: ...
    def _on_readable(self) -> None: ...
    def _check_overdue(self) -> None: ...
    def close_channel(self) -> None: ...

def _shutdown_redis_runtime() -> None: ...
