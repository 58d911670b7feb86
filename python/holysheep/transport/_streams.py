"""The bodies of answers handed to the client: each holds what its request was admitted with (the
concurrency slot) until it is read to the end, closed or dropped, and settles the request's token
estimate with the ``usage`` the server reported; and the request body that stamps its admission when it
starts out on the connection.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any

from holysheep._holysheep import _Reservation

if TYPE_CHECKING:
    from holysheep._limiter import Admitted, HolySheepRateLimiter

#: How much of a response's end is kept to find its ``usage`` (it comes last in a body or a stream).
_TAIL_BYTES = 2048
#: A count too long to be one (over 18 digits) is not read: it could not be settled.
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d{1,18})(?!\d)')


class _Held:
    """A response body that holds what its request was admitted with until it is read to the end,
    closed, or dropped unread: the concurrency slot (`finish` gives it back)."""

    __slots__ = ("_admitted", "_limiter", "inner")

    def __init__(self, inner: Any, limiter: HolySheepRateLimiter | None, admitted: Admitted) -> None:
        self.inner = inner
        self._limiter = limiter
        self._admitted = admitted

    def finish(self, body: bytes = b"") -> None:
        """Gives the admission back; only the first call counts."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release_admitted(self._admitted)

    def __del__(self) -> None:
        # A response dropped without being read to the end or closed still gives its slot back.
        if self._limiter is not None:
            self.finish()


class _Settling(_Held):
    """`_Held` that first settles the request's token estimate with the ``usage`` the server reported,
    found at the end of the body (a stream's last events, or a JSON body's last field)."""

    __slots__ = ("_tail",)

    def __init__(self, inner: Any, limiter: HolySheepRateLimiter | None, admitted: Admitted) -> None:
        super().__init__(inner, limiter, admitted)
        self._tail = b""

    def _saw(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-_TAIL_BYTES:]

    def finish(self, body: bytes = b"") -> None:
        try:
            matches = _TOTAL_TOKENS.findall(self._tail + body[-_TAIL_BYTES:])
            if matches and self._limiter is not None:
                self._limiter._settle_admitted(self._admitted, int(matches[-1]))
        finally:
            super().finish()


class _HeldAsyncStream(_Held):
    """`_Held` for asyncio clients: the body goes by untouched, and the slot comes back at aclose, which
    httpx calls once the body is read to the end, or the response is closed or dropped."""

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.inner.__aiter__()  # type: ignore[no-any-return]

    def aclose(self) -> Awaitable[None]:
        # The inner body's own closing is handed back to be awaited: no coroutine of ours in between.
        try:
            return self.inner.aclose()  # type: ignore[no-any-return]
        finally:
            self.finish()


class _SettlingAsyncStream(_Settling, _HeldAsyncStream):
    """`_Settling` for asyncio clients: reads the body on its way."""

    __slots__ = ()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                self._saw(chunk)
                yield chunk
        finally:
            self.finish()


class _HeldSyncStream(_Held):
    """`_Held` for blocking clients."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.finish()


class _SettlingSyncStream(_Settling, _HeldSyncStream):
    """`_Settling` for blocking clients: reads the body on its way."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.inner:
                self._saw(chunk)
                yield chunk
        finally:
            self.finish()


class _StampedWhenSent:
    """A request body that moves its admission to when it starts out on the connection, just after the
    request's headers, which is when a server counts the request: one admitted in a burst may wait a
    while for a connection, and its window entry must not expire before the server's own does. Made
    over the body of the attempt before on a retry; the body's own iterator does the sending."""

    __slots__ = ("_reservation", "body")

    def __init__(self, body: Any, reservation: _Reservation) -> None:
        self.body: Any = body.body if isinstance(body, _StampedWhenSent) else body
        self._reservation = reservation

    def __iter__(self) -> Iterator[bytes]:
        self._reservation.stamp()
        return iter(self.body)

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._reservation.stamp()
        return self.body.__aiter__()  # type: ignore[no-any-return]


