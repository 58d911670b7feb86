"""What an exchange waits on, for each kind of client: an admission, a send, reading a failed answer, a
backoff. Asyncio clients await them for real; blocking clients get coroutines that block instead of
suspending, so the one exchange written for asyncio runs to its end in one step (`_run_blocking`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from holysheep._limiter import Admitted, HolySheepRateLimiter
    from holysheep.transport._pipeline import _Pipeline
    from holysheep.transport._streams import _Held


class _StepsOf:
    """What an exchange waits on, for one kind of client, and the held body its answers get."""

    __slots__ = ("acquire_timeout", "held", "inner", "limiter")

    def __init__(self, pipeline: _Pipeline, inner: Any, held: type[_Held]) -> None:
        self.inner = inner
        self.held = held
        self.limiter = pipeline.limiter
        self.acquire_timeout = pipeline.acquire_timeout

    def _waiting_limiter(self) -> HolySheepRateLimiter:
        assert self.limiter is not None, "an admission is only waited for with a limiter"
        return self.limiter


class _AsyncSteps(_StepsOf):
    """What an exchange waits on, for asyncio clients: each is awaited for real."""

    __slots__ = ("send",)

    def __init__(self, pipeline: _Pipeline, inner: Any) -> None:
        held = pipeline.settling_async_stream if pipeline._settles else pipeline.async_stream
        super().__init__(pipeline, inner, held)
        self.send = inner.handle_async_request

    async def acquire(self, tokens: int, price: float) -> Admitted:
        return await self._waiting_limiter()._acquire(tokens, self.acquire_timeout, 0, price)

    @staticmethod
    async def read(response: Any) -> bytes:
        """A failed answer's body, the answer closed."""
        body: bytes = await response.aread()
        await response.aclose()
        return body

    sleep = staticmethod(asyncio.sleep)


class _BlockingSteps(_StepsOf):
    """What an exchange waits on, for blocking clients: coroutines that block instead of suspending, so
    the exchange written for asyncio runs to its end in one step (`_run_blocking`)."""

    __slots__ = ()

    def __init__(self, pipeline: _Pipeline, inner: Any) -> None:
        super().__init__(pipeline, inner, pipeline.settling_sync_stream if pipeline._settles else pipeline.sync_stream)

    async def send(self, request: Any) -> Any:
        return self.inner.handle_request(request)

    async def acquire(self, tokens: int, price: float) -> Admitted:
        return self._waiting_limiter()._acquire_blocking(tokens, self.acquire_timeout, 0, price)

    @staticmethod
    async def read(response: Any) -> bytes:
        """A failed answer's body, the answer closed."""
        body: bytes = response.read()
        response.close()
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


