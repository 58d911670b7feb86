"""One limit for a fleet: `RedisBackend`, and `SharedRateLimiter`, the limiter whose every decision is
made in Redis (one Lua script, one round trip, on Redis's clock), so all processes that name the same
key share one limit.

Waiting stays in the caller's world, as for the local limiter: a rate reservation is decided in Redis
and then slept out on the event loop or the thread; a concurrency lease that is not free is asked for
again after a short, growing pause (Redis cannot wake a waiter in another process). When Redis cannot
be reached, the backend's failure policy decides instead (see `RedisBackend`); ``local`` decisions are
made natively too, at this process's share, and waited for the same way.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import math
import os
import pathlib
import time
from types import TracebackType
from typing import Any, Literal, Union

from holysheep._holysheep import (
    _Grant,
    _LoopChannel,
    _RedisBackend,
    _RedisLimiter,
    _shutdown_redis_runtime,
)
from holysheep._limiter import Admitted, HolySheepRateLimiter, _check_timeout
from holysheep._redis_fallback import OpenAdmission
from holysheep._waiting import Remaining, sleep_exactly
from holysheep.errors import BackendUnavailable, ConfigError, RateLimitExceeded

__all__ = ["RedisBackend", "SharedRateLimiter"]

logger = logging.getLogger("holysheep.redis")

# The runtime that talks to Redis stops before the interpreter finalizes (a runtime torn down later
# can crash the exit).
atexit.register(_shutdown_redis_runtime)

OnError = Literal["fail_closed", "fail_open", "local"]
_POLICIES = ("fail_closed", "fail_open", "local")

#: A loop's channel being opened, and one not asked for yet (None: no channel, use the runtime).
_OPENING = object()
_NOT_OPENED = object()

#: Asking again for a concurrency lease held elsewhere: first pause, and the longest (seconds).
_FIRST_POLL = 0.002
_LONGEST_POLL = 0.05


class RedisBackend(_RedisBackend):
    """A Redis server that holds shared limits; pass it as ``backend=`` with a ``key=``.

        backend = RedisBackend("redis://127.0.0.1:6379/0")
        lim = HolySheepRateLimiter(rpm=600, max_concurrency=50, backend=backend, key="team-a")
        async with lim: ...

    :param url: ``redis://[[user]:password@]host[:port][/db]``; the password never appears in
        messages or repr.
    :param prefix: starts every key; each limit's keys share one hash tag, ``{prefix:key}``, so they
        sit in one Redis Cluster slot.
    :param on_error: when Redis cannot be reached or does not answer in time: ``"fail_closed"`` raises
        `BackendUnavailable`; ``"fail_open"`` admits (logging a warning once per outage);
        ``"local"`` decides in this process at its share of every limit, each unit (budgets
        included) and algorithm kept: ``floor(n / processes)`` of a limit of n, with what the fleet
        had used when Redis last answered still counted, so the fleet never passes the limit; a
        request its share cannot admit raises `BackendUnavailable`. Once Redis answers again, what
        the process admitted alone is counted there. Redis is tried again after a short pause
        growing to 0.5 s; the limiter goes back to it by itself.
    :param connect_timeout: seconds to wait for a connection.
    :param command_timeout: seconds to wait for each answer.
    :param lease_ttl: seconds a concurrency slot outlives its process: a live process renews its
        slots every third of this, so only a dead one's come back, after at most this long. A slot
        whose acquire or release did not get through (a stall, a restart) is given back as soon as
        Redis answers again.
    :param tls_ca_cert: for ``rediss://`` (TLS): a PEM file of the certificates to trust instead of
        the system's, e.g. a managed Redis's private CA.
    :param cluster: ``url`` is one node of a Redis Cluster; the others are found from it.
    :raises ConfigError: a malformed URL or a setting that cannot work. Refused credentials raise it
        at first use.
    """

    __slots__ = ("lease_ttl", "on_error")

    def __new__(
        cls,
        url: str,
        *,
        prefix: str = "holysheep",
        on_error: OnError = "fail_closed",
        connect_timeout: float = 2.0,
        command_timeout: float = 1.0,
        lease_ttl: float = 15.0,
        tls_ca_cert: str | os.PathLike[str] | None = None,
        cluster: bool = False,
    ) -> RedisBackend:
        if on_error not in _POLICIES:
            raise ConfigError(f"on_error: must be one of {', '.join(map(repr, _POLICIES))}, got {on_error!r}", "on_error")
        if not (isinstance(lease_ttl, (int, float)) and lease_ttl >= 0.001 and math.isfinite(lease_ttl)):
            raise ConfigError(f"lease_ttl: must be at least 0.001 seconds, got {lease_ttl!r}", "lease_ttl")
        ca = None if tls_ca_cert is None else pathlib.Path(tls_ca_cert).read_bytes()
        return super().__new__(
            cls,
            url,
            prefix=prefix,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            tls_ca_cert=ca,
            cluster=cluster,
        )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "holysheep",
        on_error: OnError = "fail_closed",
        connect_timeout: float = 2.0,
        command_timeout: float = 1.0,
        lease_ttl: float = 15.0,
        tls_ca_cert: str | os.PathLike[str] | None = None,
        cluster: bool = False,
    ) -> None:
        self.on_error: OnError = on_error
        self.lease_ttl = float(lease_ttl)

    def __repr__(self) -> str:
        return f"RedisBackend({self.url!r}, prefix={self.prefix!r}, on_error={self.on_error!r})"


#: An admission this process holds until `release`: decided in Redis (or at this process's share while
#: it is away), or let through by ``fail_open``.
Held = Union[_Grant, OpenAdmission]


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Completes a decision's future on its loop; a grant whose waiter was cancelled meanwhile goes back."""
    if future.cancelled():
        if ok and isinstance(value, _Grant):
            value.give_back(wait=False)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_shared_classes: dict[type[HolySheepRateLimiter], type[SharedRateLimiter]] = {}


def shared_class(cls: type[HolySheepRateLimiter]) -> type[SharedRateLimiter]:
    """The class that decides ``cls``'s limits in Redis: `SharedRateLimiter` for `HolySheepRateLimiter`,
    and for a preset (`TokenBucket`, ...) a subclass of both, so ``isinstance(bucket, TokenBucket)`` holds."""
    if issubclass(cls, SharedRateLimiter):
        return cls
    if cls is HolySheepRateLimiter:
        return SharedRateLimiter
    shared = _shared_classes.get(cls)
    if shared is None:
        shared = _shared_classes[cls] = type(f"Shared{cls.__name__}", (SharedRateLimiter, cls), {"__slots__": ()})
    return shared


def _in_event_loop() -> bool:
    return asyncio._get_running_loop() is not None


class SharedRateLimiter(HolySheepRateLimiter):
    """A `HolySheepRateLimiter` decided in Redis: what ``HolySheepRateLimiter(..., backend=, key=)``
    makes. Same API; every process passing the same backend server, prefix and key shares the limits.

        lim = HolySheepRateLimiter(rpm=600, tpm=100_000, max_concurrency=50,
                                   backend=RedisBackend("redis://127.0.0.1:6379/0"), key="team-a")

    Rate waiters are served in arrival order across the fleet (Redis reserves their instants in the
    order it decides them); ``priority`` is not applied across processes.
    """

    __slots__ = (
        "_admitted",
        "_backend",
        "_channels",
        "_fallbacks",
        "_held",
        "_key",
        "_outage_logged",
        "_rejected",
        "_remote",
        "_waiting",
        "_waits",
    )

    def __init__(self, *limits_as_given: Any, backend: RedisBackend | None = None, key: str | None = None, **more: Any) -> None:
        # The limits were read by __new__ (in whichever signature the class has: HolySheepRateLimiter's,
        # TokenBucket's, ...) and are in self.limits; what is left to take is where they are shared.
        HolySheepRateLimiter.__init__(self)
        if not isinstance(backend, RedisBackend):
            raise ConfigError(f"backend: must be a RedisBackend, got {backend!r}", "backend")
        if not isinstance(key, str):
            raise ConfigError(f"key: a shared limit needs a key naming it, got {key!r}", "key")
        self._backend = backend
        self._key = key
        self._remote = _RedisLimiter(backend, key, self.limits, self.max_concurrency, backend.lease_ttl)
        #: Admissions taken by acquire/try_acquire and not yet released, most recent last.
        self._held: list[Held] = []
        self._channels: dict[asyncio.AbstractEventLoop, _LoopChannel | object | None] = {}
        self._outage_logged = False
        self._admitted = self._rejected = self._waiting = self._fallbacks = 0
        self._waits: collections.deque[float] = collections.deque(maxlen=4096)

    # --- deciding ------------------------------------------------------------------------------

    def _channel_for(self, loop: asyncio.AbstractEventLoop) -> _LoopChannel | None:
        """This loop's connection to Redis, or None to go through the runtime: while it is being
        opened (off the loop: connecting to an unreachable host must not stall it), after a failure
        until it is open again, and for good where the URL is not plain TCP to one server. Each event
        loop has its own, so loops in several threads share the limiter without a lock."""
        channel = self._channels.get(loop, _NOT_OPENED)
        if isinstance(channel, _LoopChannel) and channel.is_open:
            return channel
        if channel is None or channel is _OPENING:
            return None
        for gone in [other for other in self._channels if other.is_closed()]:
            del self._channels[gone]
        self._channels[loop] = _OPENING
        opening = loop.run_in_executor(None, self._remote.open_channel, loop)
        opening.add_done_callback(lambda done: self._channel_opened(loop, done))
        return None

    def _channel_opened(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[_LoopChannel | None]) -> None:
        try:
            channel = done.result()
        except BaseException:
            # Redis is unreachable (or the loop is closing): the next decision tries again, as often
            # as the backend's pause after a failure allows.
            self._channels.pop(loop, None)
            return
        if channel is not None:
            channel.attach()
        self._channels[loop] = channel

    @property
    def _lease(self) -> bool:
        return self.max_concurrency is not None

    def _unavailable(self, err: BackendUnavailable) -> None:
        """Applies ``fail_closed`` (raise), or notes an outage the other policies decide through."""
        if self._backend.on_error == "fail_closed":
            raise err
        self._fallbacks += 1
        if not self._outage_logged:
            self._outage_logged = True
            logger.warning("Redis unavailable, deciding by on_error=%r until it is back: %s", self._backend.on_error, err)

    def _reachable(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            logger.warning("Redis is back: shared limits decided in Redis again")

    def _by_policy(
        self, err: BackendUnavailable, tokens: int, max_wait: float | None, reserve: bool, operation: str, price: float
    ) -> Held | float:
        """What the failure policy decides while Redis is away: raises (``fail_closed``), admits
        (``fail_open``), or decides at this process's share (``local``: a `_Grant`, or seconds to
        wait before asking again, as Redis would answer)."""
        self._unavailable(err)
        if self._backend.on_error == "fail_open":
            return OpenAdmission(tokens)
        outcome: Held | float = self._remote.decide_locally(tokens, max_wait, reserve, self._lease, operation, price)
        return outcome

    def _admitted_now(self, held: Held) -> Held:
        self._admitted += 1
        self._held.append(held)
        return held

    def try_acquire(self, tokens: int = 0) -> bool:
        """Takes one request (and ``tokens`` LLM tokens) now if every shared limit allows it; never
        waits (beyond one round trip to Redis). Call `release` after, as for the local limiter."""
        try:
            outcome: Held | float = self._remote.decide(tokens, None, False, self._lease, "try_acquire")
            self._reachable()
        except BackendUnavailable as err:
            outcome = self._by_policy(err, tokens, None, False, "try_acquire", 0.0)
        if isinstance(outcome, float):
            self._rejected += 1
            return False
        self._admitted_now(outcome)
        return True

    async def acquire(self, tokens: int = 0, timeout: float | None = None, priority: int = 0) -> None:
        """Waits for the shared rate (and a shared concurrency slot); call `release` after."""
        self._held.append(await self._acquire(tokens, timeout, priority))

    def acquire_blocking(self, tokens: int = 0, timeout: float | None = None, priority: int = 0) -> None:
        """`acquire` for threads: blocks with the GIL released."""
        self._held.append(self._acquire_blocking(tokens, timeout, priority))

    def _admit_at_once(self, tokens: int, price: float) -> None:
        """Never: a shared limit is decided in Redis, by `_acquire`."""
        return None

    async def _decide_in_redis(self, loop: asyncio.AbstractEventLoop, tokens: int, max_wait: float | None, price: float) -> _Grant | float:
        """One reservation decided in Redis for an asyncio caller: on this loop's own connection, or
        through the runtime while it has none."""
        future: asyncio.Future[_Grant | float] = loop.create_future()
        channel = self._channel_for(loop)
        if channel is None:
            self._remote.decide_soon(future, _resolve, tokens, max_wait, True, self._lease, "acquire", price)
        else:
            channel.decide(future, tokens, max_wait, True, self._lease, "acquire", price)
        return await future

    async def _acquire(self, tokens: int, timeout: float | None, priority: int, price: float = 0.0) -> Held:
        # `price` (dollars per million tokens) makes budgets count the request; decided in Redis too.
        _check_timeout(timeout)
        loop = asyncio.get_running_loop()
        remaining = Remaining(timeout, loop.time)
        self._waiting += 1
        try:
            pause = _FIRST_POLL
            while True:
                try:
                    outcome: Held | float = await self._decide_in_redis(loop, tokens, remaining(), price)
                    self._reachable()
                except BackendUnavailable as err:
                    outcome = self._by_policy(err, tokens, remaining(), True, "acquire", price)
                if not isinstance(outcome, float):
                    break
                await asyncio.sleep(self._poll_pause(outcome, pause, remaining))
                pause = min(pause * 2, _LONGEST_POLL)
            if outcome.wait > 0.0:
                try:
                    await sleep_exactly(outcome.wait)
                except BaseException:
                    outcome.give_back(wait=False)
                    raise
        except RateLimitExceeded:
            self._rejected += 1
            raise
        finally:
            self._waiting -= 1
        return self._record(outcome, remaining)

    def _acquire_blocking(self, tokens: int, timeout: float | None, priority: int, price: float = 0.0) -> Held:
        _check_timeout(timeout)
        remaining = Remaining(timeout, time.monotonic)
        self._waiting += 1
        try:
            pause = _FIRST_POLL
            while True:
                try:
                    outcome: Held | float = self._remote.decide(tokens, remaining(), True, self._lease, "acquire", price)
                    self._reachable()
                except BackendUnavailable as err:
                    outcome = self._by_policy(err, tokens, remaining(), True, "acquire", price)
                if not isinstance(outcome, float):
                    break
                time.sleep(self._poll_pause(outcome, pause, remaining))
                pause = min(pause * 2, _LONGEST_POLL)
            if outcome.wait > 0.0:
                try:
                    time.sleep(outcome.wait)
                except BaseException:
                    outcome.give_back()
                    raise
        except RateLimitExceeded:
            self._rejected += 1
            raise
        finally:
            self._waiting -= 1
        return self._record(outcome, remaining)

    @staticmethod
    def _poll_pause(retry_after: float, pause: float, remaining: Remaining) -> float:
        """How long to sleep before asking again for a lease held elsewhere; raises when out of time."""
        left = remaining()
        if left is not None and left <= 0.0:
            raise RateLimitExceeded(
                f"acquire: no concurrency slot within timeout={remaining.timeout}s", retry_after=None, limit="concurrency slot"
            )
        pause = min(retry_after, pause)
        return pause if left is None else min(pause, left)

    def _record(self, held: Held, remaining: Remaining) -> Held:
        self._admitted += 1
        waited = remaining.elapsed()
        if held.wait > 0.0 or waited > _FIRST_POLL:
            self._waits.append(waited)
        return held

    # --- returning ------------------------------------------------------------------------------

    def release(self) -> None:
        """Returns the concurrency slot taken by the last acquire still held (slots are alike)."""
        if not self._held:
            raise RuntimeError("release() without a matching acquire")
        self._finish(self._held.pop())

    def _finish(self, held: Held) -> None:
        # An event loop must not block on Redis: there the release goes out in the background.
        try:
            held.release(wait=not _in_event_loop())
        except BackendUnavailable:
            # The lease comes back by its TTL; a request that is done must not fail for it.
            self._fallbacks += 1

    def _settle_admitted(self, admitted: Admitted, actual_tokens: int) -> None:
        # As for release: an event loop sends the correction without waiting for Redis's answer.
        held: Held = admitted  # type: ignore[assignment]  # a Permit holds what _acquire returned
        held.settle(actual_tokens, wait=not _in_event_loop())

    def _release_admitted(self, admitted: Admitted) -> None:
        self._finish(admitted)  # type: ignore[arg-type]  # a Permit holds what _acquire returned: a Held

    # --- following the server -------------------------------------------------------------------

    def _server_answered(self, status: int, admitted: object, headers: object) -> None:
        """A 429 cuts the rates this process enforces in Redis as a local limiter's would be; after a
        cut, any other answer lets them climb back."""
        super()._server_answered(status, admitted, headers)
        self._remote.follow(*self._rate_factors())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __enter__(self) -> None:
        self.acquire_blocking()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # --- looking ------------------------------------------------------------------------------

    def time_until_ready(self, tokens: int = 0) -> float:
        """Seconds until the shared limits would admit the request; 0.0 when now."""
        try:
            wait, _, _ = self._remote.peek(tokens)
        except BackendUnavailable as err:
            self._unavailable(err)
            return 0.0 if self._backend.on_error == "fail_open" else self._remote.wait_locally(tokens)
        return wait

    def stats(self) -> dict[str, Any]:
        """This process's admitted, rejected, in_flight, waiting, waited, waited_s_p50/p99,
        server_429s, and rate_factor and tokens_rate_factor (the fractions of the configured rates it
        enforces in Redis); the fleet's ``remaining`` per limit and ``fleet_in_flight`` (None while Redis is
        away); ``fleet_members`` (processes seen lately) and ``fallbacks`` (decisions made by the
        failure policy)."""
        try:
            _, leases, remaining = self._remote.peek(0)
            fleet_in_flight: int | None = leases
            left: dict[str, float] | None = {str(limit): n for limit, n in zip(self.limits, remaining)}
        except BackendUnavailable:
            fleet_in_flight = left = None
        waits = sorted(self._waits)
        requests_factor, tokens_factor = self._rate_factors()
        return {
            "admitted": self._admitted,
            "rejected": self._rejected,
            "in_flight": len(self._held),
            "waiting": self._waiting,
            "waited": len(waits),
            "waited_s_p50": _quantile(waits, 0.50),
            "waited_s_p99": _quantile(waits, 0.99),
            "server_429s": super().stats()["server_429s"],
            "rate_factor": requests_factor,
            "tokens_rate_factor": tokens_factor,
            "remaining": left,
            "fleet_in_flight": fleet_in_flight,
            "fleet_members": self._remote.members,
            "fallbacks": self._fallbacks,
        }

    @property
    def key(self) -> str:
        """Names the shared limit; its Redis keys share the hash tag ``{prefix:key}``."""
        return self._key

    def __repr__(self) -> str:
        return (
            f"<SharedRateLimiter key={self.key!r} limits={[str(limit) for limit in self.limits]} "
            f"max_concurrency={self.max_concurrency} in_flight={len(self._held)} backend={self._backend!r}>"
        )


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
