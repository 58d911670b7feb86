"""Stubs for the native module; import ``holysheep`` rather than this."""

import asyncio
import os
from collections.abc import Awaitable, Callable, Generator, Hashable, Sequence
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, final

from typing_extensions import Self, disjoint_base


__all__ = [
    "BreakerCore",
    "Limit",
    "MockGatewayConfig",
    "MockGatewayServer",
    "RetryCore",
    "ServerModel",
    "SyncGuard",
    "HolySheepRateLimiter",
    "Permit",
    "RedisBackend",
    "_Acquiring",
    "_Admission",
    "_BatchJob",
    "_KeyedTable",
    "_LoopChannel",
    "_Ready",
    "MESSAGE_OVERHEAD",
    "MOST_TOKENS_PER_ANSWER",
    "REPLY_PRIMING",
    "__version__",
    "_check_count",
    "_check_positive",
    "_check_priority",
    "_check_timeout",
    "_estimate_request_tokens",
    "_preview",
    "_shutdown_redis_runtime",
    "_text_tokens",
    "_timer_leg",
    "classify_failure",
    "retry_after",
]
__version__: str

# The token estimate (holysheep._tokens wraps it with the exact encoding when installed).
#: Tokens the chat format adds around each message (role, separators).
MESSAGE_OVERHEAD: Final[int]
#: Tokens every chat reply is primed with.
REPLY_PRIMING: Final[int]
#: The most tokens one answer can count: ten times the largest context window any model offers.
MOST_TOKENS_PER_ANSWER: Final[int]

def _estimate_request_tokens(body: object, count: Callable[[str], int] | None = None) -> int:
    """Tokens a request body will count against a tokens limit, texts counted by ``count`` or, when
    None, by the heuristic."""
def _text_tokens(text: str) -> int:
    """Tokens in ``text`` by the heuristic: a token per four ASCII characters, one per other character."""

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
    """An awaitable that is already done, with its result."""

    def __await__(self) -> Generator[Any, None, Any]: ...
    def __iter__(self) -> Generator[Any, None, Any]: ...
    def __next__(self) -> Any: ...

@final
class _Acquiring:
    """An admission waited for in the limiter's line, on the running event loop."""

    def __await__(self) -> Generator[Any, None, Any]: ...
    def __iter__(self) -> Generator[Any, None, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, _value: object) -> Any: ...
    def throw(self, kind: object, value: object = None, _traceback: object = None) -> Any: ...
    def close(self) -> None: ...

@final
class _Admission:
    """One request's admission, whichever backend decided it: stamp when sent, settle, observe the
    answer, then release it (done) or give it back (never sent), once."""

    @property
    def tokens(self) -> int: ...
    @property
    def at_us(self) -> int | None:
        """Redis's time of the admission in microseconds since the epoch; None when this process decided it."""
    @property
    def stamps(self) -> bool: ...
    def stamp(self) -> None: ...
    def settle(self, actual_tokens: int) -> None: ...
    def observe(self, status: int, headers: Any) -> None: ...
    def release(self) -> None: ...
    def give_back(self) -> None: ...

@final
class _KeyedTable:
    def __new__(cls, limits: Sequence[Limit], max_keys: int, idle_ttl: float) -> Self: ...
    @staticmethod
    def check_bounds(max_keys: int, idle_ttl: float) -> None: ...
    def try_acquire(self, key: Hashable, tokens: int | None = None) -> bool: ...
    def reserve(self, key: Hashable, tokens: int | None = None, timeout: float | None = None) -> tuple[float, int]: ...
    def give_back(self, key: Hashable, tokens: int, receipt: int) -> None: ...
    def time_until_ready(self, key: Hashable, tokens: int | None = None) -> float: ...
    def forget_idle(self) -> int: ...
    @property
    def limits(self) -> list[Limit]: ...
    def __len__(self) -> int: ...

_F = TypeVar("_F", bound=Callable[..., Any])

@disjoint_base
class HolySheepRateLimiter:
    """Keeps requests inside rate limits and a concurrency cap; waiters are served in arrival order.

        lim = HolySheepRateLimiter(max_qps=10, max_concurrency=20)
        async with lim:
            await client.chat.completions.create(...)

    A limit of n per period admits at most n in ANY interval of that length (the whole n may go at
    once, then one more as each old admission leaves the window), so a server enforcing the same limit
    never answers 429 because of us.

    :param max_qps: requests per second.
    :param max_concurrency: requests in flight at once (between acquire and release).
    :param rpm: requests per minute.
    :param tpm: LLM tokens per minute; pass ``tokens=`` to acquire or use ``slot(tokens=...)``.
    :param burst: pace ``max_qps``/``rpm`` evenly with GCRA, with room for this many at once.
    :param limits: more limits, e.g. ``[Limit(1_000, per="day")]``; all must admit a request.
    :param tier: a HolySheep plan's limits (``"free"``, ``"starter"``, ``"pro"``, ``"enterprise"``);
        explicit ``rpm``/``tpm``/``max_concurrency`` override it.
    :param backend: a `RedisBackend`: every decision is made in Redis, so all processes passing the
        same ``key`` share these limits.
    :param key: names the shared limit; required with ``backend``.
    :param shadow: decide as usual but admit everything, counting in `stats` what would have waited
        (and how long) or been refused: roll a limit out before enforcing it. Not with ``backend``.
    :raises ConfigError: a value that cannot work, named in the message and in ``.field``.

    A budget (a limit in ``"usd"``) warns on the ``holysheep`` logger at 80%, 95% and 100% used (a
    request it refuses counts as 100%).
    """

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
        backend: RedisBackend | None = None,
        key: str | None = None,
        shadow: bool | None = None,
    ) -> Self: ...
    @classmethod
    def from_tier(cls, tier: str) -> Self:
        """The limits of a HolySheep plan: ``"free"``, ``"starter"``, ``"pro"`` or ``"enterprise"``.

        :raises ConfigError: an unknown tier (the message lists the known ones).
        """
    def try_acquire(self, tokens: int = 0) -> bool:
        """Takes one request (and ``tokens`` LLM tokens) now if every limit allows; never waits (beyond
        one round trip to Redis). With ``max_concurrency``, call `release` after."""
    def time_until_ready(self, tokens: int = 0) -> float:
        """Seconds until the limits would admit the request; 0.0 when now."""
    def acquire(self, tokens: int = 0, timeout: float | None = None, priority: int = 0) -> Awaitable[None]:
        """Waits for one request slot and the rate for it (and ``tokens`` LLM tokens); call `release` after.

        :param timeout: seconds to wait at most; RateLimitExceeded is raised at once when the predicted
            wait is longer, without sleeping first. None (or ``math.inf``) waits as long as it takes.
        :param priority: higher goes ahead of lower among those still waiting (default 0); with a
            limit shared in Redis, among the waiters of every process (a reservation at the rate made
            at most 0.25 s ahead is no longer waiting).
        :raises RateLimitExceeded: out of time, or a cost no limit can ever admit (at once).
        """
    def acquire_blocking(self, tokens: int = 0, timeout: float | None = None, priority: int = 0) -> None:
        """`acquire` for threads: blocks with the GIL released, so other threads keep running."""
    def release(self) -> None:
        """Returns the concurrency slot taken by acquire; the next waiter, if any, gets it. Does nothing
        on a limiter without ``max_concurrency``."""
    def slot(self, tokens: int = 0, timeout: float | None = None, priority: int = 0) -> Permit:
        """One request carrying an estimate of ``tokens`` LLM tokens, as a context manager whose permit
        can `Permit.settle` the real count once the response says it.

            async with lim.slot(tokens=850) as permit:
                resp = await client.chat.completions.create(...)
                permit.settle(resp.usage.total_tokens)
        """
    def __call__(self, function: _F) -> _F:
        """Decorates a ``def`` or ``async def``: each call holds one admission while it runs."""
    def _admit_at_once(self, tokens: int, price: float) -> _Admission | None: ...
    def _admit(
        self, tokens: int, timeout: float | None, price: float, priority: int | None = None
    ) -> Awaitable[_Admission]: ...
    def _admit_blocking(
        self, tokens: int, timeout: float | None, price: float, priority: int | None = None
    ) -> _Admission: ...
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
    @property
    def backend(self) -> RedisBackend | None:
        """The `RedisBackend` the limits are shared through; None for a limiter of this process alone."""
    @property
    def key(self) -> str | None:
        """The name of the shared limit; None for a limiter of this process alone."""
    @property
    def shadow(self) -> bool:
        """Whether it only watches (``shadow=True``): admitting everything, counting what it would hold back."""
    def on_threshold(self, fraction: float, callback: Callable[[Self, str, float], object]) -> None:
        """Calls ``callback(limiter, limit_name, used_fraction)`` once each time a limit's use (a rate
        window or a budget) reaches ``fraction`` of it, and again once it has fallen back below 90% of
        ``fraction``; from whichever thread or task made the admission, after it. Shared through Redis,
        the use is the fleet's as Redis reports it with each decision. A callback that raises is
        reported as unraisable and never fails a request.

        :raises ConfigError: ``fraction`` not in (0, 1], or ``callback`` not callable.
        """
    @property
    def _held(self) -> list[_Admission]: ...
    def _loop_channel(self, event_loop: asyncio.AbstractEventLoop) -> _LoopChannel | None: ...
    def stats(self) -> dict[str, Any]:
        """admitted, rejected (rejected_by_budget of them), in_flight, waiting, waited, waited_s_p50,
        waited_s_p99, server_429s, tokens_reserved, tokens_settled and tokens_refunded (as admissions are
        settled: the counts replaced, the real ones, and what went back),
        rate_factor and tokens_rate_factor (the fractions of the configured requests and tokens rates in
        force: below 1 while the server allows less), remaining. Shared through Redis, the counts are
        this process's and ``remaining`` the fleet's (None while Redis is away), with fleet_in_flight,
        fleet_members and fallbacks. In shadow mode also would_wait, would_wait_s (in all),
        would_wait_s_p50, would_wait_s_p99, would_wait_for_slot and would_reject."""

@final
class Permit:
    """One admission taken by `HolySheepRateLimiter.slot`; held until the ``with`` block ends."""

    @property
    def tokens(self) -> int:
        """The LLM tokens counted for this request now: the estimate, or the last settled count."""
    def settle(self, actual_tokens: int) -> None:
        """Replaces the estimate by the real token count: refunds the difference or charges it."""
    def __aenter__(self) -> Awaitable[Permit]: ...
    def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Awaitable[None]: ...
    def __enter__(self) -> Permit: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

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

# --- preview (python/holysheep/preview.py wraps _preview) ---

@final
class ServerModel:
    """A server a preview sends to, enforcing limits per API key as the MockGateway does.

        server = ServerModel(tier="pro")
        server = ServerModel(rpm=100, concurrency=8)

    :raises ConfigError: an unknown tier, a limit below 1, or no limit at all, named in ``.field``.
    """

    def __new__(
        cls,
        tier: str | None = None,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        concurrency: int | None = None,
        window_s: float | None = None,
    ) -> ServerModel: ...
    @property
    def tier(self) -> str | None: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def window_s(self) -> float: ...

def _preview(
    limiter: HolySheepRateLimiter,
    traffic: str | float | Sequence[float | tuple[float, int]] | os.PathLike[str],
    *,
    latency: float | tuple[float, float] | None = None,
    tokens: int | None = None,
    server: ServerModel | None = None,
    duration: float | None = None,
    price: float | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]: ...

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
        attempt_timeout: float | None = None,
    ) -> Self: ...
    def begin(self) -> int:
        """Marks the start of a call; returns the token to pass to `next_delay`."""
    def next_delay(
        self, attempts: int, started: int, previous_delay: float, retry_after: float | None = None
    ) -> float | str:
        """After `attempts` retryable failures: seconds to wait, or the setting that says to give up."""
    def attempt_budget(self, started: int) -> float | None:
        """Seconds the attempt starting now may run (the attempt timeout, cut to what `max_elapsed` leaves
        of the call begun at `started`); None when neither is set."""
    @staticmethod
    def first_step(attempt: Awaitable[Any]) -> tuple[bool, Any, Any]:
        """Runs an attempt (an awaitable) until it first suspends or ends: `(True, its result, None)` when
        it ended, `(False, what it waits on, its iterator)` when it suspended; raises what it raised."""
    def first_attempt_left(self, started: int) -> float | None:
        """Seconds the first attempt of a call begun at `started` has left before it is cut (0.0 once
        past); None when neither `attempt_timeout` nor `max_elapsed` is set."""
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
    def attempt_timeout(self) -> float | None: ...
    @property
    def retry_budget(self) -> float | None: ...

@final
class BreakerCore:
    """The native half of ``holysheep.CircuitBreaker``: the core's state machine in this process, or
    one shared by a fleet through a `RedisBackend`."""

    def __new__(
        cls,
        *,
        failure_threshold: int | None,
        recovery_timeout: float,
        half_open_max_calls: int,
        name: str,
        failure_rate: float | None = None,
        window: int | None = None,
        window_s: float | None = None,
        minimum_calls: int | None = None,
        slow_call_s: float | None = None,
        backend: RedisBackend | None = None,
        key: str | None = None,
        announce: Callable[[str, str], object] | None = None,
    ) -> Self:
        """`announce(old, new)`: for a shared breaker, called on the caller's thread at this process's
        next call of it with each change its reports to Redis made (they do not hold up the call)."""
    def allow(self) -> int:
        """Admits a call and returns its permit; odd when this call turned the breaker half-open.
        Raises `CircuitOpenError` while open."""
    def success(self, permit: int) -> tuple[str, str] | None:
        """Records a success; returns `(from, to)` when that changed the state."""
    def failure(self, permit: int, open_for: float | None = None) -> tuple[str, str] | None:
        """Records a failure; `open_for` is how long the server said it is away (seconds), which opens the
        breaker now for that long. Returns `(from, to)` when that changed the state."""
    def release(self, permit: int) -> None:
        """Gives a permit back without a verdict (a cancelled call, or the caller's own bug)."""
    def isolate(self) -> tuple[str, str] | None:
        """Opens the breaker until `reset`; returns `(from, to)` when that changed the state."""
    def reset(self) -> tuple[str, str] | None:
        """Closes the breaker and forgets its failures; returns `(from, to)` when that changed the state."""
    def sync(self) -> None:
        """Re-reads a shared breaker's state from Redis now (a local one has nothing to read)."""
    def counters(self) -> tuple[int, int, int, int, int]:
        """`(successes, failures, slow_calls, rejected, times_opened)` since the breaker was made (this
        process's, for a local breaker)."""
    @property
    def state(self) -> str: ...
    @property
    def retry_after(self) -> float | None:
        """Seconds until trials may start; infinity when isolated; None unless open."""
    @property
    def isolated(self) -> bool: ...
    @property
    def shared(self) -> bool:
        """Whether the state is shared through a backend."""
    @property
    def degraded(self) -> bool:
        """A shared breaker whose Redis failed lately, so the backend's failure policy decides."""
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def window_counts(self) -> tuple[int, int] | None:
        """`(calls, failures)` in this process's failure-rate window, or None without one."""
    @property
    def name(self) -> str: ...
    @property
    def failure_threshold(self) -> int | None: ...
    @property
    def recovery_timeout(self) -> float: ...
    @property
    def half_open_max_calls(self) -> int: ...
    @property
    def failure_rate(self) -> float | None: ...
    @property
    def window(self) -> int | None: ...
    @property
    def window_s(self) -> float | None: ...
    @property
    def minimum_calls(self) -> int | None: ...
    @property
    def slow_call_s(self) -> float | None: ...

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

_OnError = Literal["fail_closed", "fail_open", "local"]

@final
class RedisBackend:
    """A Redis server that holds shared limits; pass it as ``backend=`` with a ``key=``.

        backend = RedisBackend("redis://127.0.0.1:6379/0")
        lim = HolySheepRateLimiter(rpm=600, max_concurrency=50, backend=backend, key="team-a")
        async with lim: ...

    :param url: ``redis://[[user]:password@]host[:port][/db]``, or
        ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`` for a primary
        found through Redis Sentinel (port 26379 by default; the credentials are the primary's); the
        password never appears in messages or repr.
    :param prefix: starts every key; each limit's keys share one hash tag, ``{prefix:key}``, so they
        sit in one Redis Cluster slot.
    :param on_error: when Redis cannot be reached or does not answer in time: ``"fail_closed"`` raises
        `BackendUnavailable` (logging the outage and the recovery once each on the ``holysheep.redis``
        logger); ``"fail_open"`` admits (logging likewise);
        ``"local"`` decides in this process at its share of every limit, each unit (budgets
        included) and algorithm kept: ``floor(n / processes)`` of a limit of n, with what the fleet
        had used when Redis last answered still counted, so the fleet never passes the limit; a
        request its share cannot admit raises `BackendUnavailable`. Once Redis answers again, what
        the process admitted alone is counted there.
    :param connect_timeout: seconds to wait for a connection.
    :param command_timeout: seconds to wait for each answer.
    :param spin_wait: seconds a blocking call (a thread's, not asyncio's) waits for its answer awake,
        yielding the CPU to any other thread, before it sleeps: waking a sleeping thread costs tens of
        microseconds on a virtual machine, more than a nearby Redis takes to answer. Applied only
        while answers typically come within it, and never on one CPU; 0 sleeps at once; at most 0.001.
    :param lease_ttl: seconds a concurrency slot outlives its process: a live process renews its
        slots every third of this, so only a dead one's come back, after at most this long.
    :param tls_ca_cert: for ``rediss://`` (TLS): a PEM file of the certificates to trust instead of
        the system's, e.g. a managed Redis's private CA.
    :param cluster: ``url`` is one node of a Redis Cluster; the others are found from it.
    :raises ConfigError: a malformed URL or a setting that cannot work. Refused credentials raise it
        at first use.
    """

    def __new__(
        cls,
        url: str,
        *,
        prefix: str = "holysheep",
        on_error: _OnError = "fail_closed",
        connect_timeout: float = 2.0,
        command_timeout: float = 1.0,
        spin_wait: float = 0.0001,
        lease_ttl: float = 15.0,
        tls_ca_cert: str | os.PathLike[str] | None = None,
        cluster: bool = False,
    ) -> Self: ...
    @property
    def url(self) -> str:
        """The server's URL, its password shown as ``***``."""
    @property
    def prefix(self) -> str: ...
    @property
    def on_error(self) -> _OnError: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def command_timeout(self) -> float: ...
    @property
    def spin_wait(self) -> float: ...
    @property
    def lease_ttl(self) -> float: ...

@final
class _LoopChannel:
    """One limit's connection to Redis driven by one asyncio event loop."""

    def attach(self) -> None: ...
    @property
    def is_open(self) -> bool: ...
    def _on_readable(self) -> None: ...
    def _check_overdue(self) -> None: ...

def _shutdown_redis_runtime() -> None: ...

@final
class _BatchJob:
    """One batch job of the engine (tokio + reqwest); ``holysheep.run_batch`` and ``arun_batch`` drive it."""

    def __new__(
        cls,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        base_url: str,
        api_key: str | None,
        limiter: HolySheepRateLimiter | None,
        retry: RetryCore,
        breaker: BreakerCore | None,
        max_in_flight: int,
        timeout: float,
        budget_usd: float | None,
        retry_failed: bool,
        prices: dict[str, float],
        record: bool = False,
    ) -> _BatchJob: ...
    def take_finished(
        self,
    ) -> list[tuple[str, str | None, int | None, str | None, float, int, str | None, str | None]]:
        """The requests ended since the last call, when the job records them: (endpoint, model, status,
        failure, duration_s, ended_ns, response_model, usage as JSON)."""
    def plan(self) -> dict[str, Any]: ...
    def start(self) -> None: ...
    def wait(self, timeout: float) -> dict[str, Any] | None: ...
    def finished(self) -> Awaitable[dict[str, Any]]: ...
    def cancel(self) -> None: ...
    def progress(self) -> dict[str, Any]: ...

# Argument checks for the Python layer: each returns the value checked, or raises ConfigError naming `field`.
def _check_count(field: str, value: object, min: int, max: int) -> int:
    """``value`` if it is an int from ``min`` to ``max`` (not a bool)."""
def _check_timeout(field: str, value: object) -> float | None:
    """``value``, or None for forever (``None`` or ``inf``); NaN and negatives are refused."""
def _timer_leg(seconds: float) -> float:
    """Seconds to set a timer for a wait of ``seconds``: a long one short of its end, to sleep again."""
def _check_positive(field: str, value: object) -> float:
    """``value`` if it is a finite number greater than 0."""
def _check_priority(field: str, value: object) -> int:
    """``value`` if it is an int that fits 64 bits (not a bool)."""
