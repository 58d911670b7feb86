"""Wrapper overhead (DESIGN.md section 5): requests/s of 64 concurrent chat calls to a MockGateway with no
limits and no latency, for the bare openai SDK and for `AsyncHolySheep` with a limiter whose limits never
bind, so what is timed is the transport itself (limiter, breaker bookkeeping, retry loop, held stream).

Each round times both clients on ``--requests`` (2,000) through 64 workers, in turns whose order flips
from round to round, so drift on a noisy machine falls on both alike. Beside requests/s it reads the CPU
time of the event loop's thread per request (``time.thread_time``: the gateway's threads not counted),
which other processes on a shared machine do not inflate the way they inflate wall time: the client is
bound by that thread, so the two ratios agree on a quiet machine. The rounds are spread over
``--processes`` (4) fresh processes, each with its own gateway, alternating which client is made first
(an even number, so each order gets half the rounds): one process can carry a bias of its own (where its
objects and connections landed), which paired rounds inside it cannot cancel. The verdict is the median
of all rounds' ratios.

``--instrumented`` turns on `holysheep.instrument` with the OpenTelemetry SDK (a MeterProvider read by an
InMemoryMetricReader, a TracerProvider without exporters) for the holysheep client, so the row prices
the metrics and a span per request as recorded in process (issue: at least 95% of the bare SDK).

    .venv/bin/python benches/openai/overhead.py [--processes N] [--rounds N] [--requests N] [--instrumented]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import openai

import holysheep as hs
from holysheep.testing import MockGateway
from report import header, median, verdict

CONCURRENCY = 64
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
BARE = "bare openai.AsyncOpenAI (max_retries=0)"
OURS = "holysheep AsyncHolySheep(limiter=max_qps=1e9)"
OURS_INSTRUMENTED = OURS + ", instrumented (OpenTelemetry SDK)"
#: Every process is bounded: one that has not reported by then fails the bench.
PROCESS_TIMEOUT_S = 600.0


async def requests_per_s(client: openai.AsyncOpenAI, requests: int) -> tuple[float, float]:
    """Sends ``requests`` chat calls through CONCURRENCY workers; calls per second, and the event loop
    thread's CPU microseconds per call."""
    left = iter(range(requests))

    async def worker() -> None:
        for _ in left:
            await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)

    started, cpu_started = time.perf_counter(), time.thread_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu_us = (time.thread_time() - cpu_started) * 1e6 / requests
    return requests / (time.perf_counter() - started), cpu_us


def instrument() -> None:
    """Records holysheep's requests with the OpenTelemetry SDK, in process (nothing exported)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    hs.instrument(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]), tracer_provider=TracerProvider())


async def one_process(rounds: int, requests: int, ours_first: bool, instrumented: bool) -> dict[str, dict[str, list[float]]]:
    """Both clients' requests/s and CPU per request in each round, in this process."""
    if instrumented:
        instrument()
    with MockGateway(log=False) as gateway:

        def bare() -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(base_url=gateway.base_url, api_key="hs_bench", max_retries=0)

        def ours() -> openai.AsyncOpenAI:
            never_binds = hs.HolySheepRateLimiter(max_qps=1e9, max_concurrency=1_000_000)
            return hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_bench", limiter=never_binds)

        made = [(OURS, ours()), (BARE, bare())] if ours_first else [(BARE, bare()), (OURS, ours())]
        for _, client in made:  # connections opened, the SDK's one-off set-up done
            await requests_per_s(client, CONCURRENCY * 4)
        samples: dict[str, dict[str, list[float]]] = {name: {"rate": [], "cpu_us": []} for name in (BARE, OURS)}
        for round_ in range(rounds):
            for name, client in made if round_ % 2 == 0 else reversed(made):
                rate, cpu_us = await requests_per_s(client, requests)
                samples[name]["rate"].append(rate)
                samples[name]["cpu_us"].append(cpu_us)
        for _, client in made:
            await client.close()
    return samples


def run_processes(processes: int, rounds: int, requests: int, instrumented: bool) -> list[dict[str, dict[str, list[float]]]]:
    """Each process's samples, the processes run one after another."""
    results = []
    for index in range(processes):
        command = [sys.executable, __file__, "--rounds", str(rounds), "--requests", str(requests)]
        command += ["--instrumented"] if instrumented else []
        command += ["--one-process", "ours-first" if index % 2 else "bare-first"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=True)
        results.append(json.loads(done.stdout))
        print(f"process {index + 1}/{processes} done", file=sys.stderr, flush=True)
    return results


def report(processes: int, rounds: int, requests: int, instrumented: bool) -> None:
    print(header(f"{processes} processes x {rounds} rounds, each round timing both clients on {requests:,} requests"))
    print(flush=True)
    results = run_processes(processes, rounds, requests, instrumented)
    rates = {name: [value for result in results for value in result[name]["rate"]] for name in (BARE, OURS)}
    cpus = {name: [value for result in results for value in result[name]["cpu_us"]] for name in (BARE, OURS)}
    ratios = [ours / bare for result in results for ours, bare in zip(result[OURS]["rate"], result[BARE]["rate"])]
    cpu_ratios = [bare / ours for result in results for ours, bare in zip(result[OURS]["cpu_us"], result[BARE]["cpu_us"])]
    per_process = [median([o / b for o, b in zip(result[OURS]["rate"], result[BARE]["rate"])]) for result in results]
    ratio, cpu_ratio = median(ratios), median(cpu_ratios)
    bare = median(rates[BARE])
    lines = [
        f"**Wrapper overhead: chat calls, {CONCURRENCY} concurrent, MockGateway without limits or latency**",
        "",
        "| client | median requests/s | range | vs bare SDK | event loop CPU per request |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in (BARE, OURS):
        shown = OURS_INSTRUMENTED if name == OURS and instrumented else name
        lines.append(
            f"| {shown} | {median(rates[name]):,.0f} | {min(rates[name]):,.0f}..{max(rates[name]):,.0f} |"
            f" {100 * median(rates[name]) / bare:.1f}% | {median(cpus[name]):,.0f} µs |"
        )
    print("\n".join(lines), end="\n\n")
    print("Each process's median ratio: " + ", ".join(f"{value:.1%}" for value in per_process))
    print(f"Median of all {len(ratios)} rounds' ratios, AsyncHolySheep / bare SDK: {ratio:.1%}")
    print(f"Median of all {len(cpu_ratios)} rounds' CPU ratios, bare SDK / AsyncHolySheep per request: {cpu_ratio:.1%}", end="\n\n")
    print("Targets (DESIGN.md section 5):")
    if instrumented:
        print(verdict("instrumented AsyncHolySheep at least 95% of the bare SDK's requests/s", ratio >= 0.95, f"{ratio:.1%}"))
    else:
        print(verdict("AsyncHolySheep at least 98% of the bare SDK's requests/s", ratio >= 0.98, f"{ratio:.1%}"))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=positive, default=4, help="fresh processes to spread rounds over (4)")
    parser.add_argument("--rounds", type=positive, default=5, help="rounds per process, each timing both clients (5)")
    parser.add_argument("--requests", type=positive, default=2_000, help="requests per round (2,000)")
    parser.add_argument("--instrumented", action="store_true", help="record holysheep's requests with the OpenTelemetry SDK")
    parser.add_argument("--one-process", choices=["bare-first", "ours-first"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one_process:
        ours_first = arguments.one_process == "ours-first"
        samples = asyncio.run(one_process(arguments.rounds, arguments.requests, ours_first, arguments.instrumented))
        print(json.dumps(samples))
    else:
        report(arguments.processes, arguments.rounds, arguments.requests, arguments.instrumented)
