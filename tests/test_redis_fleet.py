"""One limit shared by a fleet of processes through a real redis-server: never over the limit in any
window by Redis's own timestamps, nearly all of it used, windows all or nothing, a killed process's
slots back after their TTL, and each failure policy through a Redis restart."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from multiprocessing.synchronize import Barrier, Event

import pytest
from conftest import max_in_any_window
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from holysheep._holysheep import _Grant

# Fresh interpreters: a forked child would inherit the parent's Redis runtime without its threads.
spawn = multiprocessing.get_context("spawn")


def hammer(url: str, limits: list[tuple[float, float, str]], tokens: int, seconds: float, start: Barrier, out: "multiprocessing.Queue[list[int]]") -> None:
    """Calls try_acquire as fast as it can for ``seconds``; sends back Redis's times of its admissions (us)."""
    specs = [hs.Limit(amount, per=per, unit=unit) for amount, per, unit in limits]  # type: ignore[arg-type]
    lim = hs.HolySheepRateLimiter(limits=specs, backend=hs.RedisBackend(url), key="fleet")
    assert isinstance(lim, hs.SharedRateLimiter)
    lim.time_until_ready()  # connected before the start
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lim.try_acquire(tokens)
    out.put([held.at_us for held in lim._held if isinstance(held, _Grant)])


def run_fleet(url: str, limits: list[tuple[float, float, str]], tokens: int, seconds: float, processes: int = 4) -> list[int]:
    """Redis's times of every admission (whole microseconds: exact, where float seconds could round an
    admission exactly one window after another into that window)."""
    start, out = spawn.Barrier(processes), spawn.Queue()
    workers = [spawn.Process(target=hammer, args=(url, limits, tokens, seconds, start, out)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    times = [at for _ in workers for at in out.get(timeout=30)]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    return sorted(times)


def test_four_processes_never_exceed_the_shared_limit_and_use_nearly_all_of_it(redis_url: str) -> None:
    window, n = 0.5, 20
    times = run_fleet(redis_url, [(n, window, "requests")], 0, seconds=2.3)
    window_us = int(window * 1e6)
    assert max_in_any_window(times, window_us) == n
    first = times[0]
    used = sum(1 for at in times if at < first + 4 * window_us)
    assert used >= 0.97 * 4 * n, f"{used} of {4 * n} admitted in four windows"


def test_windows_admit_all_or_nothing_across_processes(redis_url: str) -> None:
    # 30 tokens a request against 100 tokens per window: the token window binds at 3 requests, and
    # the refused requests must not count in the request window.
    limits = [(10, 2.0, "requests"), (100, 2.0, "tokens")]
    times = run_fleet(redis_url, limits, 30, seconds=0.4)
    assert len(times) == 3
    peer = hs.HolySheepRateLimiter(limits=[hs.Limit(10, per=2.0), hs.Limit(100, per=2.0, unit="tokens")],
                                   backend=hs.RedisBackend(redis_url), key="fleet")
    remaining = peer.stats()["remaining"]
    assert list(remaining.values()) == [7, 10]


def hold_slots(url: str, held: Event) -> None:
    backend = hs.RedisBackend(url, lease_ttl=0.5)
    lim = hs.HolySheepRateLimiter(max_concurrency=2, backend=backend, key="slots")
    assert lim.try_acquire() and lim.try_acquire()
    held.set()
    time.sleep(60)


def test_a_killed_process_slots_come_back_after_their_ttl(redis_url: str) -> None:
    held = spawn.Event()
    holder = spawn.Process(target=hold_slots, args=(redis_url, held))
    holder.start()
    assert held.wait(20)
    lim = hs.HolySheepRateLimiter(max_concurrency=2, backend=hs.RedisBackend(redis_url, lease_ttl=0.5), key="slots")
    time.sleep(0.6)
    assert not lim.try_acquire(), "a live process keeps its slots past the TTL"
    os.kill(holder.pid or 0, signal.SIGKILL)
    holder.join(5)
    killed = time.monotonic()
    while not lim.try_acquire():
        assert time.monotonic() - killed < 1.0, "the dead process's slots did not come back"
        time.sleep(0.02)
    assert lim.try_acquire()


def recovered(lim: hs.SharedRateLimiter, seconds: float = 5.0) -> bool:
    """Whether the limiter decides in Redis again within ``seconds`` (each try admitted by Redis)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if lim.try_acquire() and isinstance(lim._held[-1], _Grant):
                return True
        except hs.BackendUnavailable:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "local"])
def test_each_failure_policy_holds_through_a_redis_restart(redis_server: RedisServer, redis_url: str, policy: str) -> None:
    def limiter() -> hs.SharedRateLimiter:
        backend = hs.RedisBackend(redis_url, on_error=policy, connect_timeout=0.2, command_timeout=0.2)  # type: ignore[arg-type]
        lim = hs.HolySheepRateLimiter(limits=[hs.Limit(4, per=1.0)], backend=backend, key=f"restart-{policy}")
        assert isinstance(lim, hs.SharedRateLimiter)
        return lim

    lim, peer = limiter(), limiter()
    assert peer.try_acquire() and lim.try_acquire()  # lim saw two members: its share is half
    redis_server.stop()
    try:
        if policy == "fail_closed":
            for _ in range(3):
                with pytest.raises(hs.BackendUnavailable):
                    lim.try_acquire()
        elif policy == "fail_open":
            assert all(lim.try_acquire() for _ in range(10))
        else:
            assert [lim.try_acquire() for _ in range(3)] == [True, True, False]
        assert lim.stats()["remaining"] is None
    finally:
        redis_server.start()
    assert recovered(lim), "the limiter did not go back to Redis by itself"


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "local"])
async def test_asyncio_decisions_follow_the_policy_through_a_restart(redis_server: RedisServer, redis_url: str, policy: str) -> None:
    backend = hs.RedisBackend(redis_url, on_error=policy, connect_timeout=0.2, command_timeout=0.2)  # type: ignore[arg-type]
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per=1.0)], max_concurrency=10, backend=backend, key=f"aio-{policy}")
    await lim.acquire()
    lim.release()
    redis_server.stop()
    try:
        if policy == "fail_closed":
            with pytest.raises(hs.BackendUnavailable):
                await lim.acquire()
        else:
            async with lim:
                assert lim.stats()["fallbacks"] >= 1
    finally:
        redis_server.start()
    deadline = time.monotonic() + 5.0
    while True:
        try:
            await lim.acquire()
            decided_in_redis = isinstance(lim._held[-1], _Grant)
            lim.release()
            if decided_in_redis:
                break
        except hs.BackendUnavailable:
            pass
        assert time.monotonic() < deadline, "asyncio decisions did not go back to Redis"
        await asyncio.sleep(0.05)


def forked_worker(lim: hs.SharedRateLimiter) -> None:
    """In a forked child of a process whose limiter already talked to Redis and holds a slot."""

    async def once() -> None:
        async with lim:
            pass

    assert lim.try_acquire(), "the child decides on connections of its own"
    asyncio.run(once())
    time.sleep(0.05)  # the asyncio release went out in the background
    assert lim.stats()["fleet_in_flight"] == 2
    time.sleep(0.8)  # past the lease TTL: the child renews its own slot, the parent its own
    assert lim.stats()["fleet_in_flight"] == 2
    os._exit(0)


# Python 3.12+ warns that forking a process with threads (here, the Redis runtime's) may deadlock:
# forking after the limiter was used is exactly what is tested.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_worker_gets_its_own_connections_runtime_and_slots(redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url, lease_ttl=0.5)
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per=1.0)], max_concurrency=3, backend=backend, key="fork")
    assert isinstance(lim, hs.SharedRateLimiter)
    assert lim.try_acquire()
    child = multiprocessing.get_context("fork").Process(target=forked_worker, args=(lim,))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert lim.stats()["fleet_in_flight"] in (1, 2), "the parent's slot is still held"
    time.sleep(0.6)
    assert lim.stats()["fleet_in_flight"] == 1, "the exited child's slot came back after its TTL"
