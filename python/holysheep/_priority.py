"""`priority`: a context variable the transport passes to the limiter, so interactive requests go ahead
of waiting batch work.

    with hs.priority(10):
        answer = await client.chat.completions.create(...)   # ahead of waiting requests of priority < 10

A context variable follows tasks (each ``asyncio`` task starts with a copy of its creator's context) and
stays with its thread, so a priority set around a call reaches every request that call makes, however
deep. Only requests still waiting are overtaken: a request already admitted (or holding a reservation)
keeps its place. Limiters shared through Redis serve their waiters in the order Redis decides them.
"""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar, Token
from typing import Any, Callable, TypeVar

from holysheep._holysheep import _check_priority

__all__ = ["current_priority", "priority"]

_F = TypeVar("_F", bound=Callable[..., Any])

_PRIORITY: ContextVar[int] = ContextVar("holysheep_priority", default=0)

#: The priority of the requests made in this context now (0 unless `priority` set one).
current_priority = _PRIORITY.get


class priority:  # noqa: N801 - used like a function: `with hs.priority(10):`
    """Requests made inside the block wait ahead of waiting requests of lower priority (default 0).

        with hs.priority(10):
            await client.embeddings.create(model="text-embedding-3-small", input=query)

    Nested blocks set their own level; the outer one comes back after them. As a decorator (of ``def``
    or ``async def``) each call runs at that level.

    :param level: an int that fits 64 bits; higher goes first, negative for background work.
    :raises ConfigError: ``level`` is not such an int (``field == "priority"``), at once.
    """

    __slots__ = ("_token", "level")

    def __init__(self, level: int) -> None:
        self.level = _check_priority("priority", level)
        self._token: Token[int] | None = None

    def __enter__(self) -> int:
        if self._token is not None:
            raise RuntimeError("priority: this block is already entered; make one hs.priority(...) per with")
        self._token = _PRIORITY.set(self.level)
        return self.level

    def __exit__(self, *exc_info: object) -> None:
        token, self._token = self._token, None
        if token is not None:
            _PRIORITY.reset(token)

    def __call__(self, function: _F) -> _F:
        level = self.level
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def at_level_async(*args: Any, **kwargs: Any) -> Any:
                with priority(level):
                    return await function(*args, **kwargs)

            return at_level_async  # type: ignore[return-value]

        @functools.wraps(function)
        def at_level(*args: Any, **kwargs: Any) -> Any:
            with priority(level):
                return function(*args, **kwargs)

        return at_level  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"hs.priority({self.level})"
