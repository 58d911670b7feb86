"""The bodies the transport hands out: an answer's body that holds its request's admission (the
concurrency slot) until it is read to the end, closed or abandoned, and a request's body that stamps its
admission when it starts out on the connection.

A held body keeps its `Hold` (`holysheep.transport._holds`), which the rules for abandoned bodies read:
who read it last, whether a read is in progress. It ends its hold when it is read to the end, closed, or
freed; the hold settles the token estimate with the ``usage`` the body ended with and gives the slot
back, once. A stream of server-sent events is checked as it passes (`holysheep.transport._events`): one
whose event is not JSON ends with an ``error`` event, its connection closed and its hold ended before
the client gets that event. (Without a limiter, the body is made only for that check: its hold, never
registered, holds nothing.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from holysheep.transport._holds import Hold, end

if TYPE_CHECKING:
    from holysheep.transport._admission import Admission
    from holysheep.transport._events import EventCheck

__all__ = ["_HeldAsyncStream", "_HeldSyncStream", "_StampedWhenSent", "reclaimed_error"]

_current_task = asyncio.current_task
_current_thread = threading.get_ident


def reclaimed_error(lib: Any) -> type[Exception]:
    """The error reading a body raises once it was closed to give its slot to its reader's next request:
    the library's own ``StreamClosed``, saying why."""

    class StreamReclaimed(lib.StreamClosed):  # type: ignore[misc]
        def __init__(self) -> None:
            lib.StreamError.__init__(
                self,
                "holysheep closed this stream: the task (or thread) reading it started another request that "
                "had to wait for a concurrency slot while the stream sat half-read, so the stream's slot went "
                "to that request. Read a stream to its end or close it (`async with stream:`) before the next "
                "request.",
            )

    return StreamReclaimed


class _HeldAsyncStream:
    """A held body for asyncio clients (made a byte stream of the HTTP library by `transport_class`)."""

    __slots__ = ("_events", "_hold")
    reclaimed: ClassVar[type[Exception]]

    def __init__(self, held: Hold, events: EventCheck | None = None) -> None:
        self._hold = held
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held, events = self._hold, self._events
        chunks = held.inner.__aiter__()
        try:
            while True:
                if held.reclaimed:
                    raise self.reclaimed()
                held.reader, held.reading, held.pulls = _current_task(), True, held.pulls + 1
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    held.reading = False
                if held.keeps_tail:
                    held.saw(chunk)
                if events is not None:
                    chunk = events.feed(chunk)
                    if events.broken:  # the last chunk: ended here, not when the client closes the body
                        try:
                            await held.inner.aclose()
                        finally:
                            end(held)
                        yield chunk
                        return
                    if not chunk:  # an event not ended yet
                        continue
                yield chunk
            if events is not None and (rest := events.finish()):
                yield rest
        finally:
            end(held)

    def aclose(self) -> Awaitable[None]:
        # The inner body's own closing is handed back to be awaited: no coroutine of ours in between.
        try:
            return self._hold.inner.aclose()  # type: ignore[no-any-return]
        finally:
            end(self._hold)

    def __del__(self, _end: Any = end) -> None:  # bound now: module globals may be gone at exit
        # A body dropped unread and unclosed gives its slot back when it is freed.
        _end(self._hold)


class _HeldSyncStream:
    """A held body for blocking clients (made a byte stream of the HTTP library by `transport_class`)."""

    __slots__ = ("_events", "_hold")
    reclaimed: ClassVar[type[Exception]]

    def __init__(self, held: Hold, events: EventCheck | None = None) -> None:
        self._hold = held
        self._events = events

    def __iter__(self) -> Iterator[bytes]:
        held, events = self._hold, self._events
        chunks = iter(held.inner)
        try:
            while True:
                if held.reclaimed:
                    raise self.reclaimed()
                held.reader, held.reading, held.pulls = _current_thread(), True, held.pulls + 1
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                finally:
                    held.reading = False
                if held.keeps_tail:
                    held.saw(chunk)
                if events is not None:
                    chunk = events.feed(chunk)
                    if events.broken:  # the last chunk: ended here, not when the client closes the body
                        try:
                            held.inner.close()
                        finally:
                            end(held)
                        yield chunk
                        return
                    if not chunk:  # an event not ended yet
                        continue
                yield chunk
            if events is not None and (rest := events.finish()):
                yield rest
        finally:
            end(held)

    def close(self) -> None:
        try:
            self._hold.inner.close()
        finally:
            end(self._hold)

    def __del__(self, _end: Any = end) -> None:
        _end(self._hold)


class _StampedWhenSent:
    """A request body that moves its admission to when it starts out on the connection, just after the
    request's headers, which is when a server counts the request: one admitted in a burst may wait a
    while for a connection, and its window entry must not expire before the server's own does. Made
    over the body of the attempt before on a retry; the body's own iterator does the sending."""

    __slots__ = ("_admission", "body")

    def __init__(self, body: Any, admission: Admission) -> None:
        self.body: Any = body.body if isinstance(body, _StampedWhenSent) else body
        self._admission = admission

    def __iter__(self) -> Iterator[bytes]:
        self._admission.stamp()
        return iter(self.body)

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._admission.stamp()
        return self.body.__aiter__()  # type: ignore[no-any-return]
