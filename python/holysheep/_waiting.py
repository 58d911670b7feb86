"""Waiting helpers for what still waits in Python: the Redis-backed limiter and the keyed limiter.
(A local limiter's waiters stand in the core's line, driven natively.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from holysheep._holysheep import _timer_leg

async def sleep_exactly(seconds: float) -> None:
    """``asyncio.sleep`` that does not wake up to 0.1% late (epoll's slack): a long wait stops short of
    its end and sleeps the rest in a second leg (the rule is the core's: `_timer_leg`)."""
    loop = asyncio.get_running_loop()
    due = loop.time() + seconds
    await asyncio.sleep(_timer_leg(seconds))
    left = due - loop.time()
    if left > 0.0:
        await asyncio.sleep(left)


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
