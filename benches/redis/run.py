"""Decisions per second and latency of a limiter decided in Redis, from Python, beside the peers'
Redis backends on the same fresh redis-server, with redis-benchmark running holysheep's own script by
EVALSHA as the ceiling. `make bench-redis` runs it; it prints one markdown table for README.md.

Every limit is far above the rate reached, so each decision is an admission. Rows: one caller
deciding one decision after another (sync; async), and 32 asyncio tasks deciding at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timing import REPEATS, fastest, time_async, time_async_concurrent, time_sync

import holysheep as hs

HERE = Path(__file__).resolve().parent
ACQUIRE_LUA = HERE.parents[1] / "src" / "backend" / "redis" / "scripts" / "acquire.lua"
TASKS = 32


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


def shared(url: str, key: str, limit: hs.Limit) -> hs.HolySheepRateLimiter:
    lim = hs.HolySheepRateLimiter(limits=[limit], backend=hs.RedisBackend(url), key=key)
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
    return lim


def holysheep_rows(url: str, n: int) -> list[dict[str, Any]]:
    exact = hs.Limit(10**9, per=1.0)
    gcra = hs.Limit(10**9, per=1.0, algorithm="gcra", burst=10**9)
    rows = []
    for name, limit in [("exact window", exact), ("GCRA", gcra)]:
        lim = shared(url, f"sync-{name}", limit)

        def decide(lim: hs.HolySheepRateLimiter = lim) -> bool:
            admitted = lim.try_acquire()
            lim.release()
            return admitted

        rows.append(time_sync(f"holysheep {hs.__version__} {name}", decide, n))

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


def ceiling_rows(port: int, n: int) -> list[dict[str, Any]]:
    """redis-benchmark running the same decision (acquire.lua, one exact window) by EVALSHA."""
    sha = cli(port, "SCRIPT", "LOAD", ACQUIRE_LUA.read_text())
    tag = "{holysheep:ceiling}"
    # The keys and arguments as src/backend/redis/limiter.rs sends them (see acquire.lua's header): one
    # window (id, kind, limit, span, base, cost, merge, budget, debt), then no hand-over.
    args = [
        "EVALSHA", sha, "5", f"{tag}:state", f"{tag}:leases", f"{tag}:members", f"{tag}:withdrawn", f"{tag}:log",
        "now", "-1", "", "0", "1000000", "", "10000000", "1", "w", "log", str(10**9), "1000000", "1000000", "1", "976", "0", "0",
        "0", "",
    ]  # fmt: skip
    rows = []
    for clients, mode in [(1, "sync"), (TASKS, f"async x{TASKS}")]:
        repeats = []
        for _ in range(REPEATS):
            done = subprocess.run(
                ["redis-benchmark", "-p", str(port), "-n", str(n), "-c", str(clients), "-q", *args],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            found = re.search(r"([\d.]+) requests per second, p50=([\d.]+) msec", done.stdout)
            assert found, done.stdout
            rate, p50_ms = float(found.group(1)), float(found.group(2))
            repeats.append({"name": "redis-benchmark EVALSHA (ceiling)", "mode": mode, "decisions_per_s": rate, "p50_us": p50_ms * 1e3, "p99_us": None})
        rows.append(fastest(repeats))
    return rows


def ping_row(port: int, n: int) -> dict[str, Any]:
    """redis-benchmark PING on one connection: the round trip a single caller's decision can never beat."""
    repeats = []
    for _ in range(REPEATS):
        done = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-n", str(n), "-c", "1", "-q", "-t", "ping_mbulk"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        found = re.search(r"([\d.]+) requests per second, p50=([\d.]+) msec", done.stdout)
        assert found, done.stdout
        repeats.append({"name": "redis-benchmark PING (one round trip)", "mode": "sync", "decisions_per_s": float(found.group(1)), "p50_us": float(found.group(2)) * 1e3, "p99_us": None})
    return fastest(repeats)


def ping_verdict(rows: list[dict[str, Any]]) -> str:
    """DESIGN.md section 5: one caller's decisions/s at least 80% of one round trip's rate."""
    ours = next(row for row in rows if row["mode"] == "sync" and row["name"].startswith("holysheep") and "exact" in row["name"])
    ping = next(row for row in rows if row["name"].startswith("redis-benchmark PING"))
    share = ours["decisions_per_s"] / ping["decisions_per_s"]
    return f"- one caller's decisions/s at least 80% of PING on one connection: {'met' if share >= 0.8 else 'MISSED'} ({share:.0%})"


def table(rows: list[dict[str, Any]], header: str) -> str:
    modes = ["sync", "async", f"async x{TASKS}"]
    lines = [header, "", "| implementation | calls | decisions/s | p50 µs | p99 µs | holysheep exact ÷ this |", "|---|---|---:|---:|---:|---:|"]
    for mode in modes:
        in_mode = [row for row in rows if row["mode"] == mode]
        # Compared with the default (the exact window, which the ceiling row runs too), not the faster GCRA.
        ours = next((row["decisions_per_s"] for row in in_mode if row["name"].startswith("holysheep") and "exact" in row["name"]), None)
        for row in in_mode:
            ratio = "" if ours is None or row["name"].startswith("holysheep") else f"{ours / row['decisions_per_s']:.2f}x"
            p99 = "" if row["p99_us"] is None else f"{row['p99_us']:.0f}"
            lines.append(f"| {row['name']} | {mode} | {row['decisions_per_s']:,.0f} | {row['p50_us']:.0f} | {p99} | {ratio} |")
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
        rows = holysheep_rows(url, options.n)
        if options.peers_python:
            peers = subprocess.run(
                [options.peers_python, str(HERE / "peers.py"), url, str(options.n)], capture_output=True, text=True, check=True
            )
            rows += [json.loads(line) for line in peers.stdout.splitlines()]
        rows += ceiling_rows(port, options.n * 2)
        rows.append(ping_row(port, options.n * 2))
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


if __name__ == "__main__":
    main()
