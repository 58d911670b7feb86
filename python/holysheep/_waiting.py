"""Waiting for what still waits in Python: the keyed limiter's table. (A limiter's waiters stand in
the core's line or wait for Redis, driven natively.)"""

from __future__ import annotations

import asyncio

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
