"""Decisions per second and latency of a limiter decided in Redis, from Python, beside the peers'
Redis backends on the same fresh redis-server, with redis-benchmark PING on one connection as the floor
of one round trip (alternated with our single caller, best of each), and the server's own time per
decision (`INFO commandstats`: the function against PING). `make bench-redis` runs it; it prints one
markdown table for the docs, then the fleet: 4 processes, fair shares of a shared concurrency cap, and
a stall's cost.

Every limit is far above the rate reached, so each decision is an admission. Rows: one caller
deciding one decision after another (sync; async), 32 asyncio tasks deciding at once, 8 threads of one
process and 4 processes (threads waiting for their answers awake first, the default, and with
`spin_wait=0`); and PING from Python over a plain socket, its reader asleep and awake, which shows what
waking a sleeping thread costs on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fleet import SPIN_WAIT, exact_window, fair_shares, processes_row, stall_to_full_use
from timing import REPEATS, fastest, time_async, time_async_concurrent, time_sync

import holysheep as hs

HERE = Path(__file__).resolve().parent
TASKS = 32
THREADS = 8
#: Alternated runs of our single caller and of PING, best of each (a round trip here moves between
#: about 10 and 65 us with the machine's idle CPU states).
ALTERNATIONS = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(250):
        if cli(port, "PING") == "PONG":
            return server
        time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout.strip()


def shared(url: str, key: str, limit: hs.Limit, spin_wait: float = SPIN_WAIT) -> hs.HolySheepRateLimiter:
    lim = hs.HolySheepRateLimiter(limits=[limit], backend=hs.RedisBackend(url, spin_wait=spin_wait), key=key)
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
    return lim


def decider(lim: hs.HolySheepRateLimiter) -> Callable[[], bool]:
    """One sync decision on `lim`, its admission given back at once."""

    def decide() -> bool:
        admitted = lim.try_acquire()
        lim.release()
        return admitted

    return decide


def holysheep_rows(url: str, n: int) -> list[dict[str, Any]]:
    exact = hs.Limit(10**9, per=1.0)
    gcra = hs.Limit(10**9, per=1.0, algorithm="gcra", burst=10**9)
    rows = [time_sync(f"holysheep {hs.__version__} GCRA", decider(shared(url, "sync-GCRA", gcra)), n)]

    def setup() -> Callable[[], Awaitable[bool]]:
        lim = shared(url, "async", exact)

        async def decide() -> bool:
            await lim.acquire()
            lim.release()
            return True

        return decide

    rows.append(time_async(f"holysheep {hs.__version__} exact window", setup, n))
    rows.append(time_async_concurrent(f"holysheep {hs.__version__} exact window", setup, n, TASKS))
    return rows


def threads_row(url: str, spin_wait: float, seconds: float = 2.0) -> dict[str, Any]:
    """Decisions/s of THREADS threads of one process deciding one after another each, on one limit:
    more threads than CPUs, each waiting for its answers awake for up to `spin_wait`."""
    lim = shared(url, f"threads-{spin_wait}", hs.Limit(10**9, per=1.0), spin_wait=spin_wait)
    lim.time_until_ready()
    counts = [0] * THREADS
    start = threading.Barrier(THREADS)

    def decide(index: int) -> None:
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            lim.try_acquire()
            counts[index] += 1

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"name": exact_window(spin_wait), "mode": f"sync, {THREADS} threads", "decisions_per_s": sum(counts) / seconds, "p50_us": None, "p99_us": None}


def single_caller_and_ping_rows(url: str, port: int, n: int) -> list[dict[str, Any]]:
    """Our single caller (sync, the exact window), waiting for its answers awake (the default) and
    asleep (``spin_wait=0``, as redis-benchmark waits), and PING on one connection, alternated, best
    of each."""
    awake = shared(url, "sync-exact window", hs.Limit(10**9, per=1.0))
    asleep = shared(url, "sync-exact window asleep", hs.Limit(10**9, per=1.0), spin_wait=0)
    ours, ours_asleep, pings = [], [], []
    cli(port, "CONFIG", "RESETSTAT")
    for _ in range(ALTERNATIONS):
        ours.append(time_sync(exact_window(SPIN_WAIT), decider(awake), n, repeats_wanted=1))
        ours_asleep.append(time_sync(exact_window(0), decider(asleep), n, repeats_wanted=1))
        pings.append(ping_row(port, n * 2, repeats=1))
    return [fastest(ours), fastest(ours_asleep), fastest(pings)]


def server_us_per_call(port: int) -> dict[str, float]:
    """Redis's own time per call of each command since the last CONFIG RESETSTAT (`INFO commandstats`):
    what a decision costs the server, beside PING's."""
    stats = cli(port, "INFO", "commandstats")
    found = re.findall(r"cmdstat_(\w+):calls=\d+,usec=\d+,usec_per_call=([\d.]+)", stats)
    return {name: float(us) for name, us in found}


#: A Redis function that returns at once, called with a decision's keys and arguments (seven keys, the
#: numbers, three empty strings, one window's id): what any decision made by a function costs before
#: it does anything.
EMPTY_FUNCTION = "#!lua name=bench_floor\nredis.register_function('bench_floor_empty', function() return 1 end)"
EMPTY_CALL = ["FCALL", "bench_floor_empty", "7", *(f"{{bench}}:{name}" for name in ["state", "leases", "members", "withdrawn", "line", "places", "log"]), "x" * 136, "", "", "", "w"]


def empty_function_row(port: int, n: int) -> tuple[dict[str, Any], float]:
    """redis-benchmark calling EMPTY_FUNCTION on one connection (best of ALTERNATIONS), and Redis's own
    time per call of it."""
    cli(port, "FUNCTION", "LOAD", "REPLACE", EMPTY_FUNCTION)
    cli(port, "CONFIG", "RESETSTAT")
    row = fastest([benchmark_row(port, n, "redis-benchmark FCALL of an empty function", EMPTY_CALL) for _ in range(ALTERNATIONS)])
    return row, server_us_per_call(port).get("fcall", float("nan"))


def ping_row(port: int, n: int, repeats: int = REPEATS) -> dict[str, Any]:
    """redis-benchmark PING on one connection: the round trip of a client that sleeps while it waits."""
    return fastest([benchmark_row(port, n, "redis-benchmark PING (one round trip)", ["-t", "ping_mbulk"]) for _ in range(repeats)])


PING = b"*1\r\n$4\r\nPING\r\n"


def python_ping_rows(port: int, n: int) -> list[dict[str, Any]]:
    """PING from Python over a plain socket, its reader asleep in recv, then awake (polling the socket
    without blocking): what waking a sleeping thread costs on this machine, beside a round trip."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def asleep() -> bytes:
            connection.sendall(PING)
            return connection.recv(64)

        def awake() -> bytes:
            connection.sendall(PING)
            while True:
                try:
                    if answer := connection.recv(64):
                        return answer
                except BlockingIOError:
                    pass

        rows = [time_sync("Python socket PING, asleep in recv", asleep, n)]
        connection.setblocking(False)
        rows.append(time_sync("Python socket PING, awake (polling)", awake, n))
        return rows


def benchmark_row(port: int, n: int, name: str, command: list[str]) -> dict[str, Any]:
    done = subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(n), "-c", "1", "-q", *command], capture_output=True, text=True, check=True)
    found = re.search(r"([\d.]+) requests per second, p50=([\d.]+) msec", done.stdout)
    assert found, done.stdout
    return {"name": name, "mode": "sync", "decisions_per_s": float(found.group(1)), "p50_us": float(found.group(2)) * 1e3, "p99_us": None}


def ping_verdict(rows: list[dict[str, Any]]) -> str:
    """DESIGN.md section 5: one caller's decisions/s at least 80% of one round trip's rate; and the
    same caller sleeping while it waits, as redis-benchmark does."""
    ping = next(row for row in rows if row["name"].startswith("redis-benchmark PING"))
    exact = [row for row in rows if row["mode"] == "sync" and row["name"].startswith("holysheep") and "exact" in row["name"]]
    ours = next(row for row in exact if "spin_wait=0" not in row["name"])
    asleep = next(row for row in exact if "spin_wait=0" in row["name"])
    share = ours["decisions_per_s"] / ping["decisions_per_s"]
    return (
        f"- one caller's decisions/s at least 80% of PING on one connection: {'met' if share >= 0.8 else 'MISSED'} ({share:.0%}); "
        f"with spin_wait=0, sleeping while it waits as redis-benchmark does: {asleep['decisions_per_s'] / ping['decisions_per_s']:.0%}"
    )


def peers_verdict(rows: list[dict[str, Any]]) -> str:
    """DESIGN.md section 5: 32 concurrent asyncio callers at least 3x the peers."""
    mode = f"async x{TASKS}"
    ours = next((row["decisions_per_s"] for row in rows if row["mode"] == mode and row["name"].startswith("holysheep")), None)
    peers = [row["decisions_per_s"] for row in rows if row["mode"] == mode and not row["name"].startswith(("holysheep", "redis-benchmark"))]
    if ours is None or not peers:
        return "- 32 asyncio callers at least 3x the peers: not measured (no peers)"
    share = ours / max(peers)
    return f"- 32 asyncio callers at least 3x the peers: {'met' if share >= 3 else 'MISSED'} ({share:.1f}x the fastest peer)"


def table(rows: list[dict[str, Any]], header: str) -> str:
    modes = ["sync", f"sync, {THREADS} threads", "async", f"async x{TASKS}", "sync, 4 processes"]
    lines = [header, "", "| implementation | calls | decisions/s | p50 µs | p99 µs | holysheep exact ÷ this |", "|---|---|---:|---:|---:|---:|"]
    for mode in modes:
        in_mode = [row for row in rows if row["mode"] == mode]
        # Compared with the default (the exact window), not the faster GCRA.
        ours = next((row["decisions_per_s"] for row in in_mode if row["name"].startswith("holysheep") and "exact" in row["name"]), None)
        for row in in_mode:
            ratio = "" if ours is None or row["name"].startswith("holysheep") else f"{ours / row['decisions_per_s']:.2f}x"
            p50 = "" if row["p50_us"] is None else f"{row['p50_us']:.0f}"
            p99 = "" if row["p99_us"] is None else f"{row['p99_us']:.0f}"
            lines.append(f"| {row['name']} | {mode} | {row['decisions_per_s']:,.0f} | {p50} | {p99} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers-python", help="the Python of the peers' venv; peers are skipped without it")
    parser.add_argument("-n", type=int, default=10_000, help="decisions per run of a row")
    options = parser.parse_args()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_server(port)
    try:
        rows = single_caller_and_ping_rows(url, port, options.n)
        server_us = server_us_per_call(port)
        empty, empty_us = empty_function_row(port, options.n * 2)
        rows.append(empty)
        rows += python_ping_rows(port, options.n)
        rows += holysheep_rows(url, options.n)
        if options.peers_python:
            peers = subprocess.run(
                [options.peers_python, str(HERE / "peers.py"), url, str(options.n)], capture_output=True, text=True, check=True
            )
            rows += [json.loads(line) for line in peers.stdout.splitlines()]
        rows += [threads_row(url, spin_wait) for spin_wait in (SPIN_WAIT, 0)]
        rows += [processes_row(url, spin_wait) for spin_wait in (SPIN_WAIT, 0)]
        shares = fair_shares(url)
        stall_s = stall_to_full_use(url, server.pid)
        redis_version = cli(port, "INFO", "server").split("redis_version:")[1].split()[0]
    finally:
        server.terminate()
        server.wait()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    header = (
        f"Redis decisions from Python, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu}); "
        f"Python {platform.python_version()}; redis-server {redis_version} on 127.0.0.1; the fastest of {REPEATS} runs of "
        f"{options.n:,} decisions per row."
    )
    print(table(rows, header))
    print()
    print(ping_verdict(rows))
    print(f"- the floor of any decision made by a Redis function, an empty one called with a decision's keys and arguments: {empty['decisions_per_s'] / next(row for row in rows if row['name'].startswith('redis-benchmark PING'))['decisions_per_s']:.0%} of PING")
    print(f"- Redis's own time per call (INFO commandstats): a decision {server_us.get('fcall', float('nan')):.2f} µs, an empty function {empty_us:.2f} µs, PING {server_us.get('ping', float('nan')):.2f} µs")
    print(peers_verdict(rows))
    mean = sum(shares) / len(shares)
    spread = max(abs(share - mean) / mean for share in shares)
    print(f"- fair shares of a shared cap of 2 (4 processes x 3 threads, 5 ms a slot, 3 s): {shares}, each within {spread:.0%} of the mean (goal: 35%)")
    print(f"- a 1 s Redis stall (SIGSTOP/SIGCONT): all 4 slots of a shared cap held again {stall_s * 1e3:.0f} ms after it ended (goal: under 1 s)")


if __name__ == "__main__":
    main()
