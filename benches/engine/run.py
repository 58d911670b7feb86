"""The batch engine beside the ways users send batches today (DESIGN.md section 5, issue 16).

Against a MockGateway in another process (`holysheep mock-server`, no limits, no log), 64 in flight:
requests/s and client CPU per request for chat completions (max_tokens 1) and embeddings (1536
dimensions), for the engine (`holysheep.run_batch`), `openai.AsyncOpenAI` with `asyncio.gather`, and the
cookbook-style aiohttp loop (when its venv has aiohttp), with wrk's ceiling on the same endpoint; each
client runs in a process of its own, medians of ``--runs``. Then the engine against strict limits (100 per
2 s, 16 in flight, a gateway enforcing the same) beside the ideal schedule, and its peak RSS on a
1,000,000-line file.

    .venv/bin/python benches/engine/run.py [--runs 3] [--peers-python benches/engine/.venv/bin/python]
    .venv/bin/python benches/engine/run.py --strict-only [--runs 5]    # the strict-limit row alone
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "openai"))
from report import cpu_model, ideal_wall_s  # noqa: E402

import holysheep as hs  # noqa: E402

#: Every client process is bounded.
CLIENT_TIMEOUT_S = 900.0
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 1}
EMBEDDING = {"model": "text-embedding-3-small", "input": "a short document to embed"}
#: A guard a user may choose against a server on the same host, where a request reaches it within a
#: millisecond of leaving: the strict row is also run with it, so the schedule is seen without the default.
STRICT_TIGHT_GUARD_S = 0.005


def write_input(path: Path, count: int, url: str, body: dict[str, Any]) -> Path:
    encoded = json.dumps(body)
    with path.open("w") as f:
        for i in range(count):
            f.write(f'{{"custom_id": "r{i}", "method": "POST", "url": "{url}", "body": {encoded}}}\n')
    return path


@contextmanager
def gateway(*flags: str) -> Iterator[str]:
    """A MockGateway in its own process; yields its base URL."""
    server = subprocess.Popen([sys.executable, "-m", "holysheep", "mock-server", "--port", "0", "--no-log", *flags],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", banner)
        if match is None:
            raise RuntimeError(f"mock-server did not start: {banner!r}")
        yield match.group(0)
    finally:
        server.terminate()
        server.wait(timeout=10)


def client(python: str, kind: str, base_url: str, source: Path, workdir: Path, *flags: str) -> dict[str, float]:
    target = workdir / f"out-{kind}.jsonl"
    target.unlink(missing_ok=True)
    done = subprocess.run([python, str(HERE / "clients.py"), kind, base_url, str(source), str(target), *flags],
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, check=True)
    if done.stderr.strip():
        print(f"  ({kind}: {done.stderr.strip().splitlines()[-1]})", file=sys.stderr)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    target.unlink(missing_ok=True)
    return result


def wrk(base_url: str, script: str, duration: str = "5s") -> float:
    if shutil.which("wrk") is None:
        return float("nan")
    root = base_url.removesuffix("/v1")
    report = subprocess.run(["wrk", "-t1", "-c64", f"-d{duration}", "-s", str(HERE / script), root],
                            capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1))  # type: ignore[union-attr]


def strict_row(workdir: Path, runs: int, guard: float | None = None) -> str:
    """The engine against strict limits (100 per 2 s, 16 in flight, the gateway enforcing the same), each
    run a fresh client process and a fresh gateway, beside the gateway's ideal schedule. The limit keeps
    each admission counted for its guard past the period (default 1% of it: 20 ms, so 4 turns of the
    window cost 1.0% of the 8 s schedule by design), or ``guard`` seconds."""
    strict = write_input(workdir / "strict.jsonl", 500, "/v1/chat/completions", CHAT)
    results = []
    for _ in range(runs):
        with gateway("--rpm", "100", "--window-s", "2") as base_url:
            flags = ("--strict",) if guard is None else ("--strict", "--guard", str(guard))
            results.append(client(sys.executable, "engine", base_url, strict, workdir, *flags))
    ideal = ideal_wall_s(500, 100, 2.0, 16, 0.0)
    # The limiter's own schedule: each admission counted for the period plus its guard.
    guard_s = hs.Limit(100, per=2.0, guard=guard).guard
    guarded_ideal = ideal_wall_s(500, 100, 2.0 + guard_s, 16, 0.0)
    walls = sorted(r["wall_s"] for r in results)
    wall = statistics.median(walls)
    answered = min(int(r["requests"]) for r in results)
    refused = sum(int(r["server_429s"]) for r in results)
    guarded = f"{'the default' if guard is None else 'a'} guard of {1_000 * guard_s:g} ms"
    return (f"- strict limits (100 per 2 s, 16 in flight, 500 requests, {guarded}): median {wall:.2f} s against the ideal "
            f"{ideal:.2f} s ({wall / ideal - 1:+.1%}; {wall / guarded_ideal - 1:+.1%} against {guarded_ideal:.2f} s, the "
            f"ideal with the guard; runs {walls[0]:.2f}..{walls[-1]:.2f} s, {runs} runs); at "
            f"least {answered} answered per run; {refused} 429s in all")


def header(runs: int) -> str:
    import platform
    from datetime import datetime, timezone
    from importlib.metadata import version

    return "\n".join([
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, {cpu_model()}, "
        f"load average {os.getloadavg()[0]:.2f} at start (shared with other work)",
        f"- Python {platform.python_version()}, holysheep {version('holysheep')}, openai {version('openai')}",
        f"- 64 in flight; every client in its own process, the MockGateway in another (no limits, no log); "
        f"medians of {runs} runs",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chat", type=int, default=20_000, help="chat requests per engine run")
    parser.add_argument("--embeddings", type=int, default=5_000, help="embedding requests per engine run")
    parser.add_argument("--peer-requests", type=int, default=3_000, help="requests per SDK / cookbook run")
    parser.add_argument("--rss-lines", type=int, default=1_000_000)
    parser.add_argument("--peers-python", default=None, help="a Python with aiohttp, for the cookbook loop")
    parser.add_argument("--strict-only", action="store_true", help="only the strict-limit row")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="holysheep-engine-bench-"))
    print(header(args.runs))
    print()
    if args.strict_only:
        try:
            print(strict_row(workdir, args.runs))
            print(strict_row(workdir, args.runs, guard=STRICT_TIGHT_GUARD_S))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    rows: list[tuple[str, str, float, float, float]] = []
    try:
        with gateway() as base_url:
            for name, url, body, script, count in [
                ("chat (max_tokens 1)", "/v1/chat/completions", CHAT, "chat.lua", args.chat),
                ("embeddings (1536 dims)", "/v1/embeddings", EMBEDDING, "embeddings.lua", args.embeddings),
            ]:
                big = write_input(workdir / "big.jsonl", count, url, body)
                small = write_input(workdir / "small.jsonl", args.peer_requests, url, body)
                ceiling = wrk(base_url, script)
                clients = [("holysheep engine", sys.executable, "engine", big), ("openai.AsyncOpenAI + gather", sys.executable, "sdk", small)]
                if args.peers_python:
                    clients.append(("cookbook-style aiohttp loop", args.peers_python, "cookbook", small))
                results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in clients}
                for _ in range(args.runs):
                    for label, python, kind, source in clients:
                        results[label].append(client(python, kind, base_url, source, workdir))
                sdk_rate = statistics.median(r["requests"] / r["wall_s"] for r in results["openai.AsyncOpenAI + gather"])
                for label, runs in results.items():
                    rate = statistics.median(r["requests"] / r["wall_s"] for r in runs)
                    cpu_us = statistics.median(1e6 * r["cpu_s"] / r["requests"] for r in runs)
                    rows.append((name, label, rate, cpu_us, rate / sdk_rate))
                rows.append((name, "wrk (ceiling, -t1 -c64)", ceiling, float("nan"), ceiling / sdk_rate))
        print("| endpoint | client | requests/s | client CPU per request (µs) | x AsyncOpenAI |")
        print("|---|---|---:|---:|---:|")
        for name, label, rate, cpu_us, ratio in rows:
            cpu = "" if cpu_us != cpu_us else f"{cpu_us:,.0f}"
            print(f"| {name} | {label} | {rate:,.0f} | {cpu} | {ratio:.1f} |")
        for name in {row[0] for row in rows}:
            engine = next(row for row in rows if row[0] == name and row[1] == "holysheep engine")
            ceiling = next(row for row in rows if row[0] == name and row[1].startswith("wrk"))
            print(f"- {name}: the engine at {engine[2] / ceiling[2]:.0%} of wrk's ceiling")

        print(strict_row(workdir, args.runs))
        print(strict_row(workdir, args.runs, guard=STRICT_TIGHT_GUARD_S))

        big = write_input(workdir / "rss.jsonl", args.rss_lines, "/v1/chat/completions", CHAT)
        with gateway() as base_url:
            result = client(sys.executable, "engine", base_url, big, workdir)
        print(f"- {args.rss_lines:,} chat lines ({big.stat().st_size / 1e6:,.0f} MB in): peak RSS "
              f"{result['maxrss_mb']:,.0f} MB, {result['requests'] / result['wall_s']:,.0f} requests/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HOLYSHEEP_API_KEY", "hs_bench")
    main()
