"""The fleet rows of the Redis bench: holysheep in several processes on one redis-server. Decisions/s
of 4 processes together; each process's share of a shared concurrency cap under equal demand; and the
time from a Redis stall's end (SIGSTOP, then SIGCONT) to full use of a shared concurrency cap again."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.synchronize import Barrier
from typing import Any

import holysheep as hs

spawn = multiprocessing.get_context("spawn")
PROCESSES = 4
#: RedisBackend's default: a thread waits for its answer awake for up to this long.
SPIN_WAIT = 0.0001


def exact_window(spin_wait: float) -> str:
    """The name of a row of holysheep's exact window, saying when its threads sleep at once."""
    return f"holysheep {hs.__version__} exact window{'' if spin_wait else ', spin_wait=0'}"


def decide_for(url: str, spin_wait: float, seconds: float, start: Barrier, out: "multiprocessing.Queue[int]") -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(10**9, per=1.0)], backend=hs.RedisBackend(url, spin_wait=spin_wait), key="fleet-rate")
    lim.time_until_ready()
    start.wait()
    deadline, done = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        lim.try_acquire()
        done += 1
    out.put(done)


def processes_row(url: str, spin_wait: float, seconds: float = 2.0) -> dict[str, Any]:
    """Decisions/s of 4 processes deciding one after another each, on one limit; each thread waits for
    its answers awake for up to `spin_wait`."""
    start, out = spawn.Barrier(PROCESSES), spawn.Queue()
    workers = [spawn.Process(target=decide_for, args=(url, spin_wait, seconds, start, out)) for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    total = sum(out.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(10)
    return {"name": exact_window(spin_wait), "mode": f"sync, {PROCESSES} processes", "decisions_per_s": total / seconds, "p50_us": None, "p99_us": None}


def share_slots(url: str, seconds: float, start: Barrier, out: "multiprocessing.Queue[int]") -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=2, backend=hs.RedisBackend(url), key="fleet-fair")
    lim.time_until_ready()
    got = [0, 0, 0]
    start.wait()
    deadline = time.monotonic() + seconds

    def work(index: int) -> None:
        while time.monotonic() < deadline:
            with lim:
                time.sleep(0.005)
            got[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(got))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(sum(got))


def fair_shares(url: str, seconds: float = 3.0) -> list[int]:
    """Slots each of 4 processes got (3 threads each, 5 ms a slot) of a shared cap of 2."""
    start, out = spawn.Barrier(PROCESSES), spawn.Queue()
    workers = [spawn.Process(target=share_slots, args=(url, seconds, start, out)) for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    shares = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
    return shares


CAP = 4


def keep_busy(url: str, seconds: float, ready: Any, out: "multiprocessing.Queue[list[float]]") -> None:
    """8 threads on a shared cap of 4, 20 ms a slot; sends back each instant all 4 slots were held."""
    backend = hs.RedisBackend(url, connect_timeout=0.2, command_timeout=0.2)
    lim = hs.HolySheepRateLimiter(max_concurrency=CAP, backend=backend, key="fleet-stall")
    lim.time_until_ready()
    held, full, lock = [0], [], threading.Lock()
    deadline = time.monotonic() + seconds
    ready.set()

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                lim.__enter__()  # `with lim:`, which a stall may fail (fail_closed)
            except hs.BackendUnavailable:
                time.sleep(0.01)
                continue
            with lock:
                held[0] += 1
                if held[0] == CAP:
                    full.append(time.monotonic())
            time.sleep(0.02)
            with lock:
                held[0] -= 1
            lim.release()

    threads = [threading.Thread(target=work) for _ in range(2 * CAP)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(full)


def stall_to_full_use(url: str, redis_pid: int, stall_s: float = 1.0) -> float:
    """Seconds from the end of a Redis stall to all slots of a shared cap held again."""
    ready, out = spawn.Event(), spawn.Queue()
    worker = spawn.Process(target=keep_busy, args=(url, 1.0 + stall_s + 3.0, ready, out))
    worker.start()
    ready.wait(30)
    time.sleep(1.0)
    os.kill(redis_pid, signal.SIGSTOP)
    time.sleep(stall_s)
    os.kill(redis_pid, signal.SIGCONT)
    resumed = time.monotonic()
    full = out.get(timeout=60)
    worker.join(10)
    after = [at for at in full if at > resumed]
    return after[0] - resumed if after else float("inf")
