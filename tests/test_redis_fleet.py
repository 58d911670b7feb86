"""One limit shared by a fleet of processes through a real redis-server: never over the limit in any
window by Redis's own timestamps, nearly all of it used, windows all or nothing, a killed process's
slots back after their TTL, each failure policy through a Redis restart, the ``local`` policy's
shares never over the limit (budgets included) when Redis dies, and no slot lost for longer than a
second after a stall (SIGSTOP/SIGCONT) or a restart."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest
from conftest import max_in_any_window
from redis_server import RedisServer, SentinelPair, redis_server, redis_url, sentinel_pair  # noqa: F401  (fixtures)

import holysheep as hs
from holysheep._holysheep import _LoopChannel

# Fresh interpreters: a forked child would inherit the parent's Redis runtime without its threads.
spawn = multiprocessing.get_context("spawn")


def hammer(url: str, limits: list[tuple[float, float, str]], tokens: int, seconds: float, start: Barrier, out: "multiprocessing.Queue[list[int]]") -> None:
    """Calls try_acquire as fast as it can for ``seconds``; sends back Redis's times of its admissions (us)."""
    specs = [hs.Limit(amount, per=per, unit=unit) for amount, per, unit in limits]  # type: ignore[arg-type]
    lim = hs.HolySheepRateLimiter(limits=specs, backend=hs.RedisBackend(url), key="fleet")
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
    lim.time_until_ready()  # connected before the start
    start.wait()
    deadline = time.monotonic() + seconds
    times = []
    while time.monotonic() < deadline:
        try:
            at_us = lim._admit_blocking(tokens, 0.0, 0.0).at_us
        except hs.RateLimitExceeded:
            continue
        if at_us is not None:
            times.append(at_us)
    out.put(times)


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


def recovered(lim: hs.HolySheepRateLimiter, seconds: float = 5.0) -> bool:
    """Whether the limiter decides in Redis again within ``seconds`` (each try admitted by Redis)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if lim._admit_blocking(0, 0.0, 0.0).at_us is not None:
                return True
        except hs.RateLimitExceeded:
            pass
        except hs.BackendUnavailable:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "local"])
def test_each_failure_policy_holds_through_a_redis_restart(redis_server: RedisServer, redis_url: str, policy: str) -> None:
    def limiter() -> hs.HolySheepRateLimiter:
        backend = hs.RedisBackend(redis_url, on_error=policy, connect_timeout=0.2, command_timeout=0.2)  # type: ignore[arg-type]
        lim = hs.HolySheepRateLimiter(limits=[hs.Limit(4, per=1.0)], backend=backend, key=f"restart-{policy}")
        assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
        return lim

    lim, peer = limiter(), limiter()
    # lim saw two members, which had taken 2 of the 4: its share is half of the 2 left, until they
    # leave the window.
    assert peer.try_acquire() and lim.try_acquire()
    redis_server.stop()
    try:
        if policy == "fail_closed":
            for _ in range(3):
                with pytest.raises(hs.BackendUnavailable):
                    lim.try_acquire()
        elif policy == "fail_open":
            assert all(lim.try_acquire() for _ in range(10))
        else:
            assert [lim.try_acquire() for _ in range(3)] == [True, False, False]
        assert lim.stats()["remaining"] is None
    finally:
        redis_server.start()
    assert recovered(lim), "the limiter did not go back to Redis by itself"


@pytest.mark.parametrize("policy", ["fail_closed", "local"])
def test_a_restart_that_loses_redis_data_mid_run_exceeds_no_window(redis_server: RedisServer, redis_url: str, policy: str) -> None:
    # Four waiting threads, 20 a second; Redis restarts without its data (nor the scripts) a second
    # into the run. What the limiter recalls of its windows from its last answer is counted again by
    # the restarted server (a window does not start empty), and while Redis is away the `local` share
    # counts the reservations Redis had made ahead of that answer until they leave their window.
    backend = hs.RedisBackend(redis_url, on_error=policy, connect_timeout=0.2, command_timeout=0.2)  # type: ignore[arg-type]
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(20, per=1.0)], backend=backend, key=f"restart-run-{policy}")
    admitted: list[float] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + 3.5

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                lim.acquire_blocking(timeout=5.0)
                admitted.append(time.monotonic())
            except hs.BackendUnavailable as err:
                errors.append(err)
                time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    redis_server.stop()
    time.sleep(0.3)
    redis_server.start()
    for thread in threads:
        thread.join(10)
    assert max_in_any_window(admitted, 1.0) <= 20
    assert len(admitted) >= 2 * 20, f"the limit used through the restart: {len(admitted)}"
    if policy == "local":
        assert errors == [], "nothing reaches the callers under the local policy"
    assert recovered(lim), "it decides in Redis again"
    assert "holysheep_" in redis_server.cli("FUNCTION", "LIST"), "the scripts are back in the restarted server"


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
            decided_in_redis = lim._held[-1].at_us is not None
            lim.release()
            if decided_in_redis:
                break
        except hs.BackendUnavailable:
            pass
        assert time.monotonic() < deadline, "asyncio decisions did not go back to Redis"
        await asyncio.sleep(0.05)


def forked_worker(lim: hs.HolySheepRateLimiter) -> None:
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
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
    assert lim.try_acquire()
    child = multiprocessing.get_context("fork").Process(target=forked_worker, args=(lim,))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert lim.stats()["fleet_in_flight"] in (1, 2), "the parent's slot is still held"
    time.sleep(0.6)
    assert lim.stats()["fleet_in_flight"] == 1, "the exited child's slot came back after its TTL"


# --- issue 15: the `local` policy keeps every unit at a share that never lets the fleet over the limit ---

#: A priced request of the budget test: 10 tokens of a model at $8 per million, 80 micro-dollars.
PRICED_TOKENS, PRICE, MICRO_USD = 10, 8.0, 80


def spend(url: str, limits: list[tuple[float, float, str]], price: float, seconds: float, start: Barrier, out: "multiprocessing.Queue[list[float]]") -> None:
    """Takes requests without waiting for ``seconds``, through a Redis that dies meanwhile (policy
    ``local``); sends back when each was admitted, by the machine's monotonic clock."""
    backend = hs.RedisBackend(url, on_error="local", connect_timeout=0.2, command_timeout=0.2)
    specs = [hs.Limit(amount, per=per, unit=unit) for amount, per, unit in limits]  # type: ignore[arg-type]
    lim = hs.HolySheepRateLimiter(limits=specs, backend=backend, key="spend")
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
    lim.time_until_ready()
    start.wait()
    admitted: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lim._admit_blocking(PRICED_TOKENS, 0.0, price)
            admitted.append(time.monotonic())
        except (hs.RateLimitExceeded, hs.BudgetExceeded):
            time.sleep(0.001)
    out.put(admitted)


def spend_through_redis_death(redis_server: RedisServer, limits: list[tuple[float, float, str]], price: float, dies_after: float, seconds: float) -> list[float]:
    """When four processes' requests were admitted, Redis stopped ``dies_after`` seconds into their run."""
    start, out = spawn.Barrier(5), spawn.Queue()
    workers = [spawn.Process(target=spend, args=(redis_server.url, limits, price, seconds, start, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.wait()
    time.sleep(dies_after)
    redis_server.stop()
    times = sorted(at for _ in workers for at in out.get(timeout=30))
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    return times


def test_when_redis_dies_four_processes_at_their_local_share_never_exceed_the_limit(redis_server: RedisServer, redis_url: str) -> None:
    # Redis admits the whole 20 at once; 0.6 s later each process goes on alone at its share of 5,
    # counting what the fleet had taken in Redis's last second.
    times = spend_through_redis_death(redis_server, [(20, 1.0, "requests")], 0.0, dies_after=0.6, seconds=2.2)
    assert max_in_any_window(times, 1.0) <= 20
    assert len(times) >= 35, "after Redis's window, the shares (5 each) admit again"


def test_when_redis_dies_four_processes_at_a_fractional_share_never_exceed_the_limit(redis_server: RedisServer, redis_url: str) -> None:
    # 50 per 2 s over four processes is 12.5 each: a share that rounded up, or let its half carry over,
    # would let the fleet past 50 in some 2 s (116 were seen once).
    times = spend_through_redis_death(redis_server, [(50, 2.0, "requests")], 0.0, dies_after=0.6, seconds=2.8)
    assert max_in_any_window(times, 2.0) <= 50
    assert len(times) >= 50 + 4 * 12, "after Redis's window, each share admits its 12 whole requests"


def test_the_local_policy_keeps_a_usd_budget(redis_server: RedisServer, redis_url: str) -> None:
    # $0.0024 is 30 requests of $0.00008: Redis admits 20, then up to 10 a second later, then refuses.
    # Once it is gone, each process's share of the budget counts what the fleet spent.
    limits = [(20, 1.0, "requests"), (0.0024, 3600.0, "usd")]
    times = spend_through_redis_death(redis_server, limits, PRICE, dies_after=1.3, seconds=2.5)
    assert 20 < len(times) <= int(0.0024 * 1e6) // MICRO_USD, f"{len(times)} requests of $0.00008 against $0.0024"


# --- issue 15: a Redis stall or restart costs no more than the stall itself plus one second ---------


def wait_for_a_slot(lim: hs.HolySheepRateLimiter, seconds: float) -> float:
    """Seconds until ``lim`` gets a slot decided in Redis (failing the test after ``seconds``)."""
    started = time.monotonic()
    while True:
        try:
            if lim.try_acquire() and lim._held[-1].at_us is not None:
                return time.monotonic() - started
        except hs.BackendUnavailable:
            pass
        assert time.monotonic() - started < seconds, f"no slot within {seconds} s of Redis answering again"
        time.sleep(0.02)


async def test_acquires_that_timed_out_in_a_stall_leave_no_orphaned_slots(redis_server: RedisServer, redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url, command_timeout=0.3)
    lim = hs.HolySheepRateLimiter(max_concurrency=4, backend=backend, key="stall")
    peer = hs.HolySheepRateLimiter(max_concurrency=4, backend=hs.RedisBackend(redis_url), key="stall")
    assert lim.backend is not None and peer.backend is not None
    loop = asyncio.get_running_loop()
    while not isinstance(lim._loop_channel(loop), _LoopChannel):  # this loop's own connection, open
        async with lim:
            await asyncio.sleep(0.01)
    pid = int(redis_server.cli("INFO", "server").split("process_id:")[1].split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        # Four acquires go out, time out here, and run in Redis when it resumes: nobody owns their slots.
        outcomes = await asyncio.gather(*(lim.acquire() for _ in range(4)), return_exceptions=True)
        assert all(isinstance(outcome, hs.BackendUnavailable) for outcome in outcomes), outcomes
        await asyncio.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.to_thread(wait_for_a_slot, peer, 1.0)


def take_slots(lim: hs.HolySheepRateLimiter, count: int) -> None:
    for _ in range(count):
        assert lim.try_acquire()


def test_slots_released_while_redis_was_down_are_free_within_a_second_of_its_restart(tmp_path: Path) -> None:
    # A Redis that keeps its data across a restart (append-only file), as a production one does.
    server = RedisServer()
    server.start("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    try:
        backend = hs.RedisBackend(server.url, connect_timeout=0.2, command_timeout=0.2)
        lim = hs.HolySheepRateLimiter(max_concurrency=4, backend=backend, key="restart")
        peer = hs.HolySheepRateLimiter(max_concurrency=4, backend=hs.RedisBackend(server.url), key="restart")
        assert lim.backend is not None and peer.backend is not None
        take_slots(lim, 4)
        assert server.cli("ZCARD", "{holysheep:restart}:leases") == "4"
        server.stop()  # the four leases are kept on disk, and come back with Redis
        for _ in range(4):
            lim.release()  # their requests are done; Redis is not there to hear it
        server.start()
        wait_for_a_slot(peer, 1.0)
    finally:
        server.stop()


# --- issue 19: the fleet's line for a shared concurrency cap: fair shares, priority across processes ---


def share_slots(url: str, threads: int, seconds: float, start: Barrier, out: "multiprocessing.Queue[int]") -> None:
    """``threads`` threads each taking a slot, holding it 5 ms and giving it back, for ``seconds``;
    sends back how many slots this process got."""
    import threading

    lim = hs.HolySheepRateLimiter(max_concurrency=2, backend=hs.RedisBackend(url), key="fair")
    lim.time_until_ready()
    got = [0] * threads
    start.wait()
    deadline = time.monotonic() + seconds

    def work(index: int) -> None:
        while time.monotonic() < deadline:
            with lim:
                time.sleep(0.005)
            got[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(sum(got))


def test_four_processes_with_equal_demand_get_equal_shares_of_a_shared_concurrency_cap(redis_url: str) -> None:
    # Before the fleet's line, the process that released a slot mostly took it again: [8, 8, 15, 61].
    start, out = spawn.Barrier(4), spawn.Queue()
    workers = [spawn.Process(target=share_slots, args=(redis_url, 3, 3.0, start, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    shares = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
    mean = sum(shares) / len(shares)
    assert all(abs(share - mean) <= 0.35 * mean for share in shares), shares


def wait_at(url: str, priority: int, queued: Event, out: "multiprocessing.Queue[tuple[int, float]]") -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1, backend=hs.RedisBackend(url), key="ranked")
    lim.time_until_ready()
    queued.set()

    async def take() -> None:
        await lim.acquire(priority=priority)
        out.put((priority, time.monotonic()))
        await asyncio.sleep(0.05)
        lim.release()

    asyncio.run(take())


def test_a_waiters_priority_orders_it_in_the_fleets_line_not_just_its_processes(redis_url: str) -> None:
    holder = hs.HolySheepRateLimiter(max_concurrency=1, backend=hs.RedisBackend(redis_url), key="ranked")
    assert holder.try_acquire()
    out = spawn.Queue()
    workers = []
    for priority in [0, 1, 5]:  # the low-priority ones line up first, each in a process of its own
        queued = spawn.Event()
        workers.append(spawn.Process(target=wait_at, args=(redis_url, priority, queued, out)))
        workers[-1].start()
        assert queued.wait(20)
        time.sleep(0.3)  # in line
    holder.release()
    order = [out.get(timeout=20)[0] for _ in workers]
    for worker in workers:
        worker.join(10)
    assert order == [5, 1, 0]


def test_fail_closed_logs_an_outage_and_the_recovery_once_each(redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = hs.RedisBackend(redis_url, connect_timeout=0.2, command_timeout=0.2)
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per=1.0)], backend=backend, key="closed-logs")
    assert lim.try_acquire()
    redis_server.stop()
    try:
        with caplog.at_level("WARNING", logger="holysheep"):
            for _ in range(5):
                with pytest.raises(hs.BackendUnavailable):
                    lim.try_acquire()
                time.sleep(0.05)
    finally:
        redis_server.start()
    with caplog.at_level("WARNING", logger="holysheep"):
        assert recovered(lim)
        lim.try_acquire()
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("holysheep")]
    assert len(messages) == 2, messages
    assert "fail_closed" in messages[0] and "back" in messages[1]


# --- issue 19: Sentinel: a failover mid-run exceeds no window and orphans no lease --------------------


def test_through_a_sentinel_failover_no_window_is_exceeded_and_no_lease_is_orphaned(sentinel_pair: SentinelPair) -> None:
    backend = hs.RedisBackend(sentinel_pair.url, connect_timeout=0.3, command_timeout=0.3)
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(20, per=0.5)], max_concurrency=3, backend=backend, key="failover")
    assert lim.backend is not None and lim.backend.url == sentinel_pair.url
    times: list[int] = []
    # Until 20 decisions came from the promoted primary, bounded: a loaded machine fails over slowly.
    run_until = time.monotonic() + 20.0
    failover_at = time.monotonic() + 1.0
    failed_over = False
    while time.monotonic() < run_until and sum(at > times[0] + 1_500_000 for at in times) < 20:
        if not failed_over and time.monotonic() > failover_at:
            sentinel_pair.failover()
            failed_over = True
        try:
            admission = lim._admit_blocking(0, 0.0, 0.0)
        except hs.RateLimitExceeded:
            continue
        except hs.BackendUnavailable:  # fail_closed, while the Sentinel promotes the replica
            time.sleep(0.01)
            continue
        if admission.at_us is not None:
            times.append(admission.at_us)
        admission.release()
    promoted = sentinel_pair.replica if sentinel_pair.primary_port() == sentinel_pair.replica.port else sentinel_pair.primary
    assert promoted is sentinel_pair.replica
    after = [at for at in times if at > times[0] + 1_500_000]
    assert len(after) >= 20, "decided in the promoted primary after the failover"
    assert max_in_any_window(sorted(times), 500_000) <= 20
    deadline = time.monotonic() + 2.0
    while promoted.cli("ZCARD", "{holysheep:failover}:leases") != "0":
        assert time.monotonic() < deadline, "a lease was orphaned by the failover"
        time.sleep(0.05)
    assert "holysheep_" in promoted.cli("FUNCTION", "LIST"), "the library came over with the data or was loaded again"


def test_after_a_stall_with_waiters_in_the_fleets_line_a_shared_cap_is_in_full_use_within_a_second(redis_server: RedisServer, redis_url: str) -> None:
    # Waiters that gave up in the stall (their asks timed out) must not leave dead places ahead in
    # line, even when Redis runs those asks after it resumes.
    import threading

    backend = hs.RedisBackend(redis_url, connect_timeout=0.2, command_timeout=0.2)
    lim = hs.HolySheepRateLimiter(max_concurrency=2, backend=backend, key="stall-line")
    held, full, lock = [0], [], threading.Lock()
    deadline = time.monotonic() + 3.5

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                admission = lim._admit_blocking(0, None, 0.0)
            except hs.BackendUnavailable:
                time.sleep(0.01)
                continue
            with lock:
                held[0] += 1
                if held[0] == 2:
                    full.append(time.monotonic())
            time.sleep(0.02)
            with lock:
                held[0] -= 1
            admission.release()

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.8)
    pid = int(redis_server.cli("INFO", "server").split("process_id:")[1].split()[0])
    os.kill(pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    for thread in threads:
        thread.join()
    after = [at for at in full if at > resumed]
    assert after and after[0] - resumed < 1.0, f"full use {after[0] - resumed if after else None} s after the stall"


def test_slots_held_through_a_restart_that_loses_redis_data_stay_held(redis_server: RedisServer, redis_url: str) -> None:
    # Two processes share a cap of 2, and one holds both while Redis restarts without its data. The
    # other saw them held: it takes no slot after the restart, neither while stand-ins hold them nor
    # once those would have expired, since the holder's renewals put its own slots back.
    def limiter() -> hs.HolySheepRateLimiter:
        backend = hs.RedisBackend(redis_url, on_error="fail_closed", connect_timeout=0.2, command_timeout=0.2, lease_ttl=3.0)
        return hs.HolySheepRateLimiter(max_concurrency=2, backend=backend, key="restart-slots")

    holder, other = limiter(), limiter()
    assert holder.try_acquire() and holder.try_acquire()
    assert not other.try_acquire()
    redis_server.stop()
    redis_server.start()
    taken = 0
    past_the_stand_ins = time.monotonic() + 4.0
    while time.monotonic() < past_the_stand_ins:
        with contextlib.suppress(hs.BackendUnavailable):
            taken += other.try_acquire()
        time.sleep(0.02)
    assert taken == 0, "a slot the holder still holds was taken"
    holder.release()
    assert recovered_slot(other), "the slot released after the restart goes to the other process"


def recovered_slot(lim: hs.HolySheepRateLimiter, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(hs.BackendUnavailable):
            if lim.try_acquire():
                return True
        time.sleep(0.02)
    return False


async def test_a_restart_costs_asyncio_and_blocking_callers_no_error(redis_server: RedisServer, redis_url: str) -> None:
    # A restart closes every connection. The decisions that find theirs closed are sent again on new
    # ones, so under fail_closed no caller sees the restart (before: BackendUnavailable, and a pause
    # that refused every caller for 50 ms).
    backend = hs.RedisBackend(redis_url, on_error="fail_closed")
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1000, per=1.0)], max_concurrency=4, backend=backend, key="restart-no-error")
    for _ in range(3):  # the loop's own connection is open after the first
        await lim.acquire()
        lim.release()
    assert lim.try_acquire()
    lim.release()
    redis_server.stop()
    redis_server.start()
    await lim.acquire()
    lim.release()
    assert lim.try_acquire()
    lim.release()
