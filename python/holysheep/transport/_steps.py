"""What an exchange waits on, for each kind of client: an admission, a send, reading an answer, a
backoff. Asyncio clients await them for real; blocking clients get coroutines that block instead of
suspending, so the one exchange written for asyncio runs to its end in one step (`_run_blocking`).

A request that must wait for a concurrency slot first reclaims the bodies its own task (or thread) left
half-read, then waits counted by the reclaimer (`holysheep.transport._holds`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Union

from holysheep._priority import current_priority
from holysheep.transport._admission import Admission, admit_blocking, admit_now, admit_waiting
from holysheep.transport._holds import reclaim_left, waiting_for_slot

if TYPE_CHECKING:
    from holysheep._limiter import HolySheepRateLimiter
    from holysheep.transport._pipeline import _Pipeline
    from holysheep.transport._streams import _HeldAsyncStream, _HeldSyncStream

logger = logging.getLogger("holysheep")


class _StepsOf:
    """What an exchange waits on, for one kind of client."""

    __slots__ = ("acquire_timeout", "inner")

    def __init__(self, pipeline: _Pipeline, inner: Any) -> None:
        self.inner = inner
        self.acquire_timeout = pipeline.acquire_timeout


class _AsyncSteps(_StepsOf):
    """What an exchange waits on, for asyncio clients: each is awaited for real."""

    __slots__ = ("held", "send")

    def __init__(self, pipeline: _Pipeline, inner: Any) -> None:
        super().__init__(pipeline, inner)
        self.held: type[_HeldAsyncStream] = pipeline.async_stream
        self.send = inner.handle_async_request

    me = staticmethod(asyncio.current_task)

    async def acquire(self, limiter: HolySheepRateLimiter, tokens: int, price: float) -> Admission:
        """An admission of ``limiter``, at the priority of the caller's context."""
        priority = current_priority()
        if limiter.max_concurrency is None:
            return await admit_waiting(limiter, tokens, price, self.acquire_timeout, priority)
        if await self._reclaim_left(limiter):
            admission = admit_now(limiter, tokens, price)
            if admission is not None:
                return admission
        with waiting_for_slot(limiter):
            return await admit_waiting(limiter, tokens, price, self.acquire_timeout, priority)

    async def _reclaim_left(self, limiter: HolySheepRateLimiter) -> bool:
        """Closes the bodies this task left half-read while every slot is taken; whether there were any."""
        claimed = reclaim_left(self.me(), limiter)
        for held, admission in claimed:
            try:
                await held.inner.aclose()
            except Exception:  # closed as far as it goes; its slot comes back all the same
                logger.debug("holysheep: closing a reclaimed stream failed", exc_info=True)
            finally:
                admission.release()
        return bool(claimed)

    @staticmethod
    def read(response: Any) -> Awaitable[bytes]:
        """An answer's whole body (read to the end, the answer is closed): the library's own coroutine,
        none of ours around it."""
        return response.aread()  # type: ignore[no-any-return]

    sleep = staticmethod(asyncio.sleep)


class _BlockingSteps(_StepsOf):
    """What an exchange waits on, for blocking clients: coroutines that block instead of suspending, so
    the exchange written for asyncio runs to its end in one step (`_run_blocking`)."""

    __slots__ = ("held",)

    def __init__(self, pipeline: _Pipeline, inner: Any) -> None:
        super().__init__(pipeline, inner)
        self.held: type[_HeldSyncStream] = pipeline.sync_stream

    me = staticmethod(threading.get_ident)

    async def send(self, request: Any) -> Any:
        return self.inner.handle_request(request)

    async def acquire(self, limiter: HolySheepRateLimiter, tokens: int, price: float) -> Admission:
        """An admission of ``limiter``, at the priority of the calling thread's context."""
        priority = current_priority()
        if limiter.max_concurrency is None:
            return admit_blocking(limiter, tokens, price, self.acquire_timeout, priority)
        if self._reclaim_left(limiter):
            admission = admit_now(limiter, tokens, price)
            if admission is not None:
                return admission
        with waiting_for_slot(limiter):
            return admit_blocking(limiter, tokens, price, self.acquire_timeout, priority)

    def _reclaim_left(self, limiter: HolySheepRateLimiter) -> bool:
        """Closes the bodies this thread left half-read while every slot is taken; whether there were any."""
        claimed = reclaim_left(self.me(), limiter)
        for held, admission in claimed:
            try:
                held.inner.close()
            except Exception:  # closed as far as it goes; its slot comes back all the same
                logger.debug("holysheep: closing a reclaimed stream failed", exc_info=True)
            finally:
                admission.release()
        return bool(claimed)

    @staticmethod
    async def read(response: Any) -> bytes:
        """An answer's whole body (read to the end, the answer is closed)."""
        body: bytes = response.read()
        return body

    @staticmethod
    async def sleep(seconds: float) -> None:
        time.sleep(seconds)


_Steps = Union[_AsyncSteps, _BlockingSteps]


def _run_blocking(exchange: Coroutine[Any, Any, Any]) -> Any:
    """The outcome of an exchange whose steps never suspend (`_BlockingSteps`)."""
    try:
        exchange.send(None)
    except StopIteration as done:
        return done.value
    exchange.close()
    raise RuntimeError("a blocking exchange suspended: its steps must not await anything that waits")
