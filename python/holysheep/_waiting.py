"""Waiting helpers for what still waits in Python: the Redis-backed limiter and the keyed limiter.
(A local limiter's waiters stand in the core's line, driven natively.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: How late a poll-style wait (epoll, under asyncio's timers) may wake: Linux lets it slip by 0.1% of its
#: timeout (timer slack), 10 ms of a 10 s wait for the window's oldest admission to leave.
_POLL_SLACK = 0.001
#: Waits shorter than this are slept in one go: their slack is under the kernel's 50 us floor anyway.
_ONE_LEG = 0.05


async def sleep_exactly(seconds: float) -> None:
    """``asyncio.sleep`` that does not wake up to 0.1% late: a long wait stops short of its end, by more
    than the slack, and sleeps the rest (a few ms, with microseconds of slack) in a second leg."""
    if seconds < _ONE_LEG:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    due = loop.time() + seconds
    await asyncio.sleep(seconds * (1.0 - 2 * _POLL_SLACK))
    await asyncio.sleep(max(0.0, due - loop.time()))


class Remaining:
    """A wait's budget on some clock: seconds left before its deadline (None without a timeout), and
    seconds spent so far."""

    __slots__ = ("clock", "deadline", "start", "timeout")

    def __init__(self, timeout: float | None, clock: Callable[[], float]) -> None:
        self.timeout = timeout
        self.clock = clock
        self.start = clock()
        self.deadline = None if timeout is None else self.start + timeout

    def __call__(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock())

    def elapsed(self) -> float:
        return float(self.clock() - self.start)
