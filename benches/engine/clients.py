"""One client of the engine bench, in a process of its own: sends every request of a Batch API input file
to a MockGateway with 64 in flight, writes one output line per answer, and prints what it measured as
JSON: requests, wall_s, cpu_s (this process: every thread, interpreter start excluded), maxrss_mb, and
server_429s (the engine's report; 0 for the others, which do not retry).

    python clients.py engine|sdk|cookbook BASE_URL INPUT OUTPUT [--strict [--guard SECONDS]]

- engine: ``holysheep.run_batch`` (Rust: tokio + reqwest), no limiter unless ``--strict`` (100 per 2 s,
  16 in flight; the limit's default guard, 1% of the period, unless ``--guard``).
- sdk: ``openai.AsyncOpenAI`` (``max_retries=0``), one task per request through ``asyncio.gather`` and a
  semaphore of 64, as users write it.
- cookbook: the loop of OpenAI's cookbook parallel processor, written here on aiohttp: a loop that starts
  a request whenever capacity allows and sleeps 1 ms per turn, appending each result to the output by
  opening it (run it with a Python that has aiohttp).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

IN_FLIGHT = 64
KEY = "hs_bench"


def requests_of(path: str) -> list[dict[str, Any]]:
    with open(path) as lines:
        return [json.loads(line) for line in lines]


def run_engine(base_url: str, source: str, target: str, strict: bool, guard: float | None) -> tuple[int, int]:
    import holysheep as hs

    limit = hs.Limit(100, per=2.0, guard=guard)
    limiter = hs.HolySheepRateLimiter(limits=[limit], max_concurrency=16) if strict else None
    report = hs.run_batch(source, target, base_url=base_url, api_key=KEY, limiter=limiter,
                          max_concurrency=16 if strict else IN_FLIGHT)
    if report.failed or report.server_429s:
        print(report, file=sys.stderr)
    return report.ok, report.server_429s


async def run_sdk(base_url: str, source: str, target: str) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    gate = asyncio.Semaphore(IN_FLIGHT)
    with open(target, "a") as output:

        async def one(request: dict[str, Any]) -> None:
            async with gate:
                if request["url"].endswith("/embeddings"):
                    answer: Any = await client.embeddings.create(**request["body"])
                else:
                    answer = await client.chat.completions.create(**request["body"])
            line = {"custom_id": request["custom_id"], "response": {"status_code": 200, "body": answer.model_dump()}}
            output.write(json.dumps(line) + "\n")

        await asyncio.gather(*(one(request) for request in requests_of(source)))
    await client.close()
    return sum(1 for _ in open(target))


async def run_cookbook(base_url: str, source: str, target: str) -> int:
    import aiohttp

    pending = iter(requests_of(source))
    root = base_url.rstrip("/").removesuffix("/v1")
    in_flight = 0
    done = 0

    async def call(session: Any, request: dict[str, Any]) -> None:
        nonlocal in_flight, done
        async with session.post(root + request["url"], json=request["body"],
                                headers={"Authorization": f"Bearer {KEY}"}) as answer:
            body = await answer.json()
        with open(target, "a") as output:
            output.write(json.dumps([request["body"], body, {"custom_id": request["custom_id"]}]) + "\n")
        in_flight -= 1
        done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:
        tasks = []
        exhausted = False
        while True:
            if not exhausted and in_flight < IN_FLIGHT:
                request = next(pending, None)
                if request is None:
                    exhausted = True
                else:
                    in_flight += 1
                    tasks.append(asyncio.create_task(call(session, request)))
            if exhausted and in_flight == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    return done


def main() -> None:
    kind, base_url, source, target = sys.argv[1:5]
    flags = sys.argv[5:]
    strict = "--strict" in flags
    guard = float(flags[flags.index("--guard") + 1]) if "--guard" in flags else None
    # Imported before the clock starts: what is timed is the job.
    __import__({"engine": "holysheep", "sdk": "openai", "cookbook": "aiohttp"}[kind])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    server_429s = 0
    if kind == "engine":
        ok, server_429s = run_engine(base_url, source, target, strict, guard)
    elif kind == "sdk":
        ok = asyncio.run(run_sdk(base_url, source, target))
    elif kind == "cookbook":
        ok = asyncio.run(run_cookbook(base_url, source, target))
    else:
        raise SystemExit(f"unknown client {kind!r}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"requests": ok, "wall_s": wall, "cpu_s": cpu, "maxrss_mb": after.ru_maxrss / 1024,
                      "server_429s": server_429s}))


if __name__ == "__main__":
    main()
