"""HolySheepRateLimiter from threads: `with lim:` blocks with the GIL released and never over-admits."""

from __future__ import annotations

import threading
import time

import pytest

import holysheep as hs
from conftest import max_in_any_window


def test_eight_threads_never_exceed_the_limit() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(50, per=0.25)], max_concurrency=6)
    admitted: list[float] = []
    peak = 0
    lock = threading.Lock()
    started = time.monotonic()

    def hammer() -> None:
        nonlocal peak
        for _ in range(25):
            with lim:
                with lock:
                    admitted.append(time.monotonic() - started)
                    peak = max(peak, lim.stats()["in_flight"])

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(admitted) == 200
    # Times are read after admission under a lock other threads contend for: allow them to trail.
    assert max_in_any_window(admitted, 0.25 - 0.02) <= 50
    assert peak <= 6
    stats = lim.stats()
    assert (stats["admitted"], stats["in_flight"], stats["waiting"]) == (200, 0, 0)


def test_a_blocked_thread_lets_others_run_python() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=1)
    assert lim.try_acquire()
    blocked = threading.Thread(target=lim.acquire_blocking)
    blocked.start()
    time.sleep(0.05)
    assert blocked.is_alive(), "the second acquisition waits for the next window"
    spins = 0
    until = time.monotonic() + 0.2
    while time.monotonic() < until:
        spins += 1
    blocked.join(5)
    assert not blocked.is_alive()
    # Had the waiting thread held the GIL, this thread could not have counted at all meanwhile.
    assert spins > 10_000


def test_threads_wait_for_slots_in_arrival_order() -> None:
    gate = hs.ConcurrencyLimiter(1)
    gate.acquire_blocking()
    order: list[int] = []

    def call(index: int) -> None:
        with gate:
            order.append(index)

    threads = []
    for index in range(5):
        thread = threading.Thread(target=call, args=(index,))
        thread.start()
        threads.append(thread)
        while gate.stats()["waiting"] < index + 1:
            time.sleep(0.001)
    gate.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_blocking_timeout_raises_at_once() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=1)
    lim.acquire_blocking()
    started = time.monotonic()
    with pytest.raises(hs.RateLimitExceeded):
        lim.acquire_blocking(timeout=0.2)
    assert time.monotonic() - started < 0.05


def test_sync_permit_settles() -> None:
    lim = hs.HolySheepRateLimiter(tpm=1_000, max_concurrency=1)
    with lim.slot(tokens=600) as permit:
        permit.settle(1_000)
    assert not lim.try_acquire(tokens=1)
    assert lim.stats()["in_flight"] == 0
