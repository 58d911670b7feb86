"""Priority across a fleet for waits at the rate, through a real redis-server: a request of higher
priority in one process is admitted ahead of a lower-priority backlog in another, a priority keeps
arrival order across processes, a waiter that gives up takes nothing, and random arrivals at random
priorities from several processes never put more in a window than its limit (by Redis's own times)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from multiprocessing.synchronize import Barrier, Event

from conftest import max_in_any_window
from redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs

# Fresh interpreters: a forked child would inherit the parent's Redis runtime without its threads.
spawn = multiprocessing.get_context("spawn")

WINDOW = 0.5


def fleet_limiter(url: str, key: str) -> hs.HolySheepRateLimiter:
    """One request per WINDOW, shared under ``key``."""
    return hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=WINDOW)], backend=hs.RedisBackend(url), key=key)


# who, priority, arrival index in its process, when it asked and Redis's time of its admission (us;
# Redis runs on this machine's clock)
Admitted = tuple[str, int, int, int, int]


def backlog(url: str, key: str, who: str, priority: int, count: int, ready: Event, go: Event, queued: Event, out: "multiprocessing.Queue[Admitted]") -> None:
    """Once told to go, waits for ``count`` admissions at ``priority``, asked in order on one event
    loop; sends back what `Admitted` holds for each."""
    lim = fleet_limiter(url, key)
    lim.time_until_ready()  # connected before the first ask
    ready.set()
    go.wait()

    async def one(index: int) -> None:
        asked_us = time.time_ns() // 1000
        admission = await lim._admit(0, None, 0.0, priority)
        assert admission.at_us is not None
        out.put((who, priority, index, asked_us, admission.at_us))

    async def run() -> None:
        tasks = []
        for index in range(count):
            tasks.append(asyncio.ensure_future(one(index)))
            await asyncio.sleep(0.02)  # each asks before the next arrives
        queued.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())


class Fleet:
    """Processes waiting on one shared limit, and what they were admitted at."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.out: multiprocessing.Queue[Admitted] = spawn.Queue()
        self.workers: list[tuple[multiprocessing.process.BaseProcess, Event, Event]] = []
        self.count = 0

    def backlog(self, who: str, priority: int, count: int) -> None:
        """A process of ``count`` waiters at ``priority``, ready to ask."""
        ready, go, queued = spawn.Event(), spawn.Event(), spawn.Event()
        worker = spawn.Process(target=backlog, args=(self.url, self.key, who, priority, count, ready, go, queued, self.out))
        worker.start()
        assert ready.wait(30)
        self.workers.append((worker, go, queued))
        self.count += count

    def ask(self) -> None:
        """Takes the rate's next instant, so that every waiter waits; then each process's waiters ask,
        in the order the processes came, each process's all standing in line before the next asks."""
        assert fleet_limiter(self.url, self.key).try_acquire()
        for _, go, queued in self.workers:
            go.set()
            assert queued.wait(30)

    def admitted(self) -> list[Admitted]:
        """Every admission, in the order of Redis's times."""
        got = [self.out.get(timeout=30) for _ in range(self.count)]
        for worker, _, _ in self.workers:
            worker.join(10)
            assert worker.exitcode == 0
        order = sorted(got, key=lambda admission: admission[4])
        times = [at for *_, at in order]
        assert all(later - earlier >= WINDOW * 1e6 for earlier, later in zip(times, times[1:])), "one per window"
        return order


HORIZON_US = 250_000  # how far ahead a reservation may be made: a turn that has come


def overtaken(order: list[Admitted]) -> list[tuple[Admitted, Admitted]]:
    """Pairs (earlier, later) in admission order where the later one should have gone first: of higher
    priority, it asked while the earlier one's turn had not come (its instant more than the horizon
    off)."""
    return [
        (earlier, later)
        for i, earlier in enumerate(order)
        for later in order[i + 1 :]
        if later[1] > earlier[1] and earlier[4] > later[3] + HORIZON_US
    ]


def test_a_high_priority_request_in_another_process_is_admitted_ahead_of_a_low_priority_backlog(redis_url: str) -> None:
    fleet = Fleet(redis_url, "backlog")
    fleet.backlog("low", 0, 8)
    fleet.backlog("urgent", 5, 1)
    fleet.ask()
    order = fleet.admitted()
    who = [name for name, *_ in order]
    # First come, first reserved, it went last. Now only lows whose turn had come when it asked
    # (reserved by then: at most the horizon ahead) may go first: none here, nor more than one on a
    # slow machine.
    assert not overtaken(order), overtaken(order)
    assert who.index("urgent") <= 1, who
    lows = [index for name, _, index, *_ in order if name == "low"]
    assert lows == sorted(lows), f"arrival order within a priority: {lows}"


def test_four_processes_waiting_at_four_priorities_are_admitted_by_priority_then_arrival(redis_url: str) -> None:
    fleet = Fleet(redis_url, "four")
    for priority in range(4):  # the lowest first: first come, first reserved, it would go first
        fleet.backlog(f"p{priority}", priority, 3)
    fleet.ask()
    order = fleet.admitted()
    assert not overtaken(order), overtaken(order)
    for priority in range(4):
        mine = [index for _, p, index, *_ in order if p == priority]
        assert mine == sorted(mine), f"arrival order within priority {priority}: {mine}"
    assert [p for _, p, *_ in order][-3:] == [0, 0, 0], order


def test_within_a_priority_the_fleet_admits_in_arrival_order_across_processes(redis_url: str) -> None:
    fleet = Fleet(redis_url, "arrivals")
    fleet.backlog("first", 2, 3)
    fleet.backlog("second", 2, 3)
    fleet.ask()
    order = [(name, index) for name, _, index, *_ in fleet.admitted()]
    assert order == [("first", 0), ("first", 1), ("first", 2), ("second", 0), ("second", 1), ("second", 2)]


async def test_a_cancelled_waiter_leaves_the_fleets_line_and_the_next_goes_at_the_instant_it_left(redis_url: str) -> None:
    lim = fleet_limiter(redis_url, "cancelled")
    first = lim._admit_blocking(0, 0.0, 0.0)
    assert first.at_us is not None
    quitter = asyncio.ensure_future(lim._admit(0, None, 0.0, 9))
    await asyncio.sleep(0.05)
    following = asyncio.ensure_future(lim._admit(0, None, 0.0, 0))
    await asyncio.sleep(0.05)
    quitter.cancel()
    admitted = await asyncio.wait_for(following, 5)
    assert admitted.at_us is not None
    # The next instant (a window and the guard past the first); not one after the quitter's, nor after
    # its place expired.
    assert WINDOW * 1e6 <= admitted.at_us - first.at_us < 1.2 * WINDOW * 1e6


def test_a_waiter_that_runs_out_of_time_behind_a_higher_priority_takes_nothing(redis_url: str) -> None:
    lim = fleet_limiter(redis_url, "impatient")
    assert lim.try_acquire()
    ahead = threading.Thread(target=lim.acquire_blocking, kwargs={"priority": 9})
    ahead.start()
    time.sleep(0.05)
    started = time.monotonic()
    # Alone it would pass within its timeout (one window); behind the other it cannot.
    try:
        lim.acquire_blocking(timeout=0.7)
    except hs.RateLimitExceeded:
        pass
    else:
        raise AssertionError("admitted behind a waiter of higher priority within less than two windows")
    assert time.monotonic() - started < 0.7
    ahead.join()
    assert WINDOW * 0.8 < lim.time_until_ready() < WINDOW * 1.2, "the next instant is one window after the last admission"


def mixed_waits(url: str, n: float, window: float, seconds: float, seed: int, start: Barrier, out: "multiprocessing.Queue[list[int]]") -> None:
    """Three threads waiting at random priorities, with random timeouts, for ``seconds``; sends back
    Redis's times of their admissions (us)."""
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(n, per=window)], backend=hs.RedisBackend(url), key="mixed")
    lim.time_until_ready()
    start.wait()
    deadline = time.monotonic() + seconds
    times: list[int] = []
    lock = threading.Lock()

    def work(rng: random.Random) -> None:
        while time.monotonic() < deadline:
            time.sleep(rng.random() * 0.05)
            timeout = rng.choice([None, 0.0, 0.2, 0.6])
            try:
                at_us = lim._admit_blocking(0, timeout, 0.0, rng.randrange(4)).at_us
            except hs.RateLimitExceeded:
                continue
            assert at_us is not None
            with lock:
                times.append(at_us)

    threads = [threading.Thread(target=work, args=(random.Random(seed * 10 + i),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(times)


def test_random_waits_at_random_priorities_from_three_processes_never_exceed_a_fractional_limit(redis_url: str) -> None:
    rng = random.Random(19)
    n, window = 2 + rng.random() * 3, 0.2 + rng.random() * 0.3
    start, out = spawn.Barrier(3), spawn.Queue()
    workers = [spawn.Process(target=mixed_waits, args=(redis_url, n, window, 2.5, seed, start, out)) for seed in range(3)]
    for worker in workers:
        worker.start()
    times = sorted(at for _ in workers for at in out.get(timeout=60))
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    window_us = int(window * 1e6)
    assert max_in_any_window(times, window_us) <= int(n), f"limit {n} per {window} s"
    assert len(times) >= 0.8 * int(n) * 2.5 / window, f"{len(times)} admitted of {int(n) * 2.5 / window:.0f}"
