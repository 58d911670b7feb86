"""Cutting the first attempts of a retry policy's coroutine calls: no timer for an attempt that never
waits, and one timer per event loop for those that do.

An attempt that finishes without suspending cannot be cut (asyncio cancels a task only where it
waits), so the first attempt is started by hand (``RetryCore.first_step``, natively, as the
``StopIteration`` of ``coroutine.send`` would cost more than the rest of the call) and only one that
suspends is registered. Every first attempt of a policy may run for the same budget (``attempt_timeout``, cut to
``max_elapsed``), so their deadlines come in the order the calls began: the oldest attempt still running
is always the next to pass its deadline, and one ``loop.call_later`` timer armed for the oldest cuts
them all. A registered attempt is a dict entry; the timer is armed only when none is (on a busy loop,
about once per budget), where ``asyncio.timeout`` arms and cancels a timer for every call (about 5 µs).

The cut follows ``asyncio.timeout``: the timer cancels the attempt's task, and the attempt's end turns
that cancellation into ``TimeoutError`` unless another came with it, so a cancellation from elsewhere
(the caller's, an enclosing timeout's) still propagates as ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import itertools
import types
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar, cast

from holysheep._holysheep import RetryCore

__all__ = ["FirstAttempts"]

T = TypeVar("T")

_first_step = RetryCore.first_step

# Python 3.10 has no cancellation counts: there a cut always reads as the cut.
_cancelling: Callable[[asyncio.Task[Any]], int] = getattr(asyncio.Task, "cancelling", lambda task: 0)
_uncancel: Callable[[asyncio.Task[Any]], int] = getattr(asyncio.Task, "uncancel", lambda task: 0)


class _OnLoop:
    """One policy's registered first attempts on one loop, in the order the calls began, and the
    timer armed for the oldest."""

    __slots__ = ("_left", "keys", "loop", "running", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, left: Callable[[int], float | None]) -> None:
        self.loop = weakref.ref(loop)
        self._left = left
        self.running: dict[int, tuple[asyncio.Task[Any], int]] = {}
        self.keys = itertools.count()
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, delay: float) -> None:
        """Arms the timer to fire in ``delay`` seconds."""
        loop = self.loop()
        if loop is not None:
            self.timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        """Cuts every attempt past its deadline, oldest first, and re-arms for the next one."""
        self.timer = None
        running = self.running
        while running:
            key = next(iter(running))
            task, started = running[key]
            left = self._left(started)
            if left:
                self.arm(left)
                return
            del running[key]
            task.cancel()


class FirstAttempts:
    """The first attempts of one policy's coroutine calls, cut at their budget.

    :param left: seconds the first attempt of a call begun at ``started`` has left
        (``RetryCore.first_attempt_left``).
    :param cut: the error a cut attempt raises.
    """

    __slots__ = ("_current", "_cut", "_left")

    def __init__(self, left: Callable[[int], float | None], cut: Callable[[], TimeoutError]) -> None:
        self._left = left
        self._cut = cut
        self._current: _OnLoop | None = None

    async def run(self, attempt: Awaitable[T], started: int) -> T:
        """Awaits ``attempt``, the first of the call begun at ``started``, cutting it at its budget.

        (The decorators inline this first step, :meth:`until_done` being the rest: a coroutine frame
        less per call.)
        """
        ended, value, steps = _first_step(attempt)
        if ended:
            return cast(T, value)
        return cast(T, await self.until_done(steps, value, started))

    @types.coroutine
    def until_done(self, steps: Generator[Any, Any, Any], waiting_on: Any, started: int) -> Generator[Any, Any, Any]:
        """The rest of a first attempt that suspended on ``waiting_on``: it is registered for the timer,
        what it waits on passed up to the task, and what the task throws in (a cancellation) passed
        down, until it ends.

        :raises TimeoutError: when the timer cut it (an ``Exception``, which the table retries).
        """
        on_loop, key, task, cancelling = self._register(started)
        try:
            while True:
                try:
                    yield waiting_on
                except GeneratorExit:
                    steps.close()
                    raise
                except BaseException as thrown:
                    try:
                        waiting_on = steps.throw(thrown)
                    except StopIteration as returned:
                        result = returned.value
                        break
                    continue
                result = yield from steps
                break
        except BaseException as error:
            if on_loop.running.pop(key, None) is not None:
                raise
            # Cut by the timer: withdraw its cancellation, as asyncio.timeout does.
            if _uncancel(task) > cancelling or not isinstance(error, asyncio.CancelledError):
                raise
            raise self._cut() from error
        if on_loop.running.pop(key, None) is None:
            _uncancel(task)  # cut, yet it returned: the result stands, as with asyncio.timeout
        return result

    def _register(self, started: int) -> tuple[_OnLoop, int, asyncio.Task[Any], int]:
        """Registers the suspended first attempt of the call begun at ``started``, running in this task.

        :raises RuntimeError: outside a task (as ``asyncio.timeout`` does).
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a retry policy's attempt timeout needs a task to cancel")
        on_loop = self._current
        if on_loop is None or on_loop.loop() is not loop:
            # Another loop (or thread) took the last one: its attempts keep theirs, held by their frames.
            on_loop = self._current = _OnLoop(loop, self._left)
        key = next(on_loop.keys)
        on_loop.running[key] = (task, started)
        if on_loop.timer is None:
            on_loop.arm(self._left(started) or 0.0)
        return on_loop, key, task, _cancelling(task)
