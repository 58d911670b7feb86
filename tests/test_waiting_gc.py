"""Waiting on the running loop while Python's cyclic garbage collector runs: the collector may traverse a
waiter at any allocation, including one made while the waiter holds its own lock, and on any thread
(holysheep's reclaimer of abandoned streams collects from its own)."""

from __future__ import annotations

import subprocess
import sys

WAITS_UNDER_CONSTANT_COLLECTION = """
import asyncio, gc
import holysheep as hs

async def main():
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    gc.set_threshold(1)  # a collection at almost every allocation, those of the waits included

    async def hold():
        async with lim:
            await asyncio.sleep(0.001)

    await asyncio.gather(*(hold() for _ in range(200)))

asyncio.run(main())
"""


def test_a_collection_while_tasks_wait_for_a_slot_does_not_deadlock() -> None:
    # In a process of its own: a deadlock holds the GIL, so no timeout inside this one could fire.
    done = subprocess.run([sys.executable, "-c", WAITS_UNDER_CONSTANT_COLLECTION], timeout=30, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
