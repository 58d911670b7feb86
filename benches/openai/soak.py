"""Soak: the openai clients for minutes on end against a MockGateway that enforces the client's own
limits and plays faults, with every kind of call the SDK makes mixed together, to find what only a long
run shows: a concurrency slot that leaks, memory that grows with the number of calls, a window the
gateway sees exceeded, a 429 after minutes of calm.

Workers loop until the time is up, each call chosen in turn from: a chat completion, an embedding, a
stream read to the end (with usage), a stream closed after its first chunk, a stream whose consumer
raises, and a raw-response call; four of them call through a blocking `HolySheep` on threads (chat, a
stream read to the end, a stream closed early), sharing the limiter. The gateway answers some requests
503 or 500 and resets some connections; the retry policy goes round again and a call may still end in
the SDK's typed error, which is counted, never a crash. The resident memory is read every
``--sample-s``; its growth is judged from a quarter of the run (warm-up done) to the end, in runs of
two minutes or more (a shorter one is still warming up).

    .venv/bin/python benches/openai/soak.py [--minutes M] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import openai

import holysheep as hs
from holysheep.testing import Faults, MockGateway
from report import header, verdict

#: The gateway's limits, the client's the same: 300 requests and 600,000 tokens per 5 s, 32 in flight.
REQUESTS_PER_WINDOW = 300
TOKENS_PER_WINDOW = 600_000
WINDOW_S = 5.0
IN_FLIGHT = 32
FAULTS = Faults(unavailable=0.02, server_error=0.01, reset=0.005)
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the document in one line."}]
#: Memory may grow by this much per call from a quarter of the run to its end (the gateway's own log
#: keeps 40 bytes a request); a leak of one response a call is tens of kilobytes.
MAX_GROWTH_PER_CALL = 256
#: Memory growth is judged only in runs at least this long.
JUDGE_MEMORY_FROM_S = 120.0
#: Of the workers, these call through a blocking `HolySheep` on threads, sharing the limiter.
BLOCKING_WORKERS = 4
#: Past its end, the run waits this long for calls still out (a call's attempts and backoffs included).
DRAIN_S = 60.0


class Sample(NamedTuple):
    seconds: float
    calls: int
    resident: int


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def calls(client: openai.AsyncOpenAI) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """The kinds of call the workers take in turn."""

    async def chat() -> None:
        await client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16)

    async def embed() -> None:
        await client.embeddings.create(model="text-embedding-3-small", input=["a document"] * 8)

    async def stream_to_end() -> None:
        stream = await client.chat.completions.create(
            model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
        async for _ in stream:
            pass

    async def stream_closed_early() -> None:
        stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16, stream=True)
        async for _ in stream:
            break
        await stream.close()

    async def stream_consumer_raises() -> None:
        stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16, stream=True)
        try:
            async for _ in stream:
                raise LookupError("the consumer failed")
        except LookupError:
            pass
        finally:
            await stream.close()

    async def raw_response() -> None:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16)
        raw.parse()

    return [
        ("chat", chat),
        ("embedding", embed),
        ("stream read to the end", stream_to_end),
        ("stream closed early", stream_closed_early),
        ("stream whose consumer raises", stream_consumer_raises),
        ("raw response", raw_response),
    ]


def blocking_calls(client: openai.OpenAI) -> list[tuple[str, Callable[[], None]]]:
    """The kinds of call the blocking workers (threads sharing the limiter) take in turn."""

    def chat() -> None:
        client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16)

    def stream_to_end() -> None:
        for _ in client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16, stream=True):
            pass

    def stream_closed_early() -> None:
        stream = client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=16, stream=True)
        for _ in stream:
            break
        stream.close()

    return [
        ("blocking chat", chat),
        ("blocking stream read to the end", stream_to_end),
        ("blocking stream closed early", stream_closed_early),
    ]


async def soak(minutes: float, workers: int, sample_s: float) -> bool:
    """Runs the soak and prints its report; True when every target is met."""
    limiter = hs.HolySheepRateLimiter(
        limits=[hs.Limit(REQUESTS_PER_WINDOW, per=WINDOW_S), hs.Limit(TOKENS_PER_WINDOW, per=WINDOW_S, unit="tokens")],
        max_concurrency=IN_FLIGHT,
    )
    retry = hs.RetryPolicy(max_attempts=6, base_delay=0.05, max_delay=1.0)
    gateway = MockGateway(
        rpm=REQUESTS_PER_WINDOW,
        tpm=TOKENS_PER_WINDOW,
        concurrency=IN_FLIGHT,
        window_s=WINDOW_S,
        latency=(0.005, 0.05),
        faults=FAULTS,
        seed=7,
    )
    outcomes: Counter[str] = Counter()
    samples: list[Sample] = []
    with gateway:
        client = hs.AsyncHolySheep(base_url=gateway.base_url, api_key="hs_soak", limiter=limiter, retry=retry)
        blocking = hs.HolySheep(base_url=gateway.base_url, api_key="hs_soak", limiter=limiter, retry=retry)
        kinds = itertools.cycle(calls(client))
        blocking_kinds = itertools.cycle(blocking_calls(blocking))
        started = time.monotonic()
        deadline = started + 60.0 * minutes

        async def worker(on_thread: bool) -> None:
            while time.monotonic() < deadline:
                try:
                    if on_thread:
                        name, blocking_call = next(blocking_kinds)
                        await asyncio.to_thread(blocking_call)
                    else:
                        name, call = next(kinds)
                        await call()
                    outcomes[name] += 1
                except openai.APIError as error:  # the attempts ran out on a fault: a typed error
                    outcomes[f"failed: {type(error).__name__}"] += 1

        def sample() -> Sample:
            return Sample(time.monotonic() - started, sum(outcomes.values()), resident_bytes())

        async def sampler() -> None:
            while time.monotonic() < deadline:
                now = sample()
                samples.append(now)
                print(f"{now.seconds:6.0f} s  {now.calls:>8,} calls  rss {now.resident / 2**20:6.1f} MiB", file=sys.stderr, flush=True)
                await asyncio.sleep(sample_s)

        tasks = [asyncio.ensure_future(worker(on_thread=index < BLOCKING_WORKERS)) for index in range(workers)]
        sampling = asyncio.ensure_future(sampler())
        finished, late = await asyncio.wait(tasks, timeout=deadline - time.monotonic() + DRAIN_S)
        crashed = Counter(type(task.exception()).__name__ for task in finished if task.exception() is not None)
        for task in [*late, sampling]:
            task.cancel()
        await asyncio.gather(*late, sampling, return_exceptions=True)
        await client.close()
        blocking.close()
        end = sample()
        in_flight_at_end = limiter.stats()["in_flight"]
    log = gateway.admission_log()
    refused = sum(record.status == 429 for record in log)
    peak = gateway.peak_admitted()
    peak_tokens = gateway.peak_admitted("tokens")
    done = sum(outcomes.values())
    failed = sum(count for name, count in outcomes.items() if name.startswith("failed"))
    elapsed = end.seconds
    warm = next((s for s in samples if s.seconds >= elapsed / 4), end)
    growth = (end.resident - warm.resident) / max(1, end.calls - warm.calls)

    print(header(f"{minutes:g} minutes, {workers} workers ({BLOCKING_WORKERS} of them on threads), one MockGateway"))
    print()
    print(
        f"**Soak: AsyncHolySheep and HolySheep at the gateway's own limits ({REQUESTS_PER_WINDOW} requests and"
        f" {TOKENS_PER_WINDOW:,} tokens per {WINDOW_S:g} s, {IN_FLIGHT} in flight), 2% 503s, 1% 500s,"
        f" 0.5% connection resets**"
    )
    print()
    print("| calls | count |\n| --- | ---: |")
    for name, count in sorted(outcomes.items()):
        print(f"| {name} | {count:,} |")
    print()
    print(f"- {done:,} calls in {elapsed:.0f} s ({done / elapsed:.1f} a second); {len(log):,} requests reached the gateway")
    print(f"- 429s from the gateway: {refused}; busiest {WINDOW_S:g} s: {peak} requests, {peak_tokens:,} tokens")
    print(f"- resident memory: {warm.resident / 2**20:.1f} MiB at {warm.seconds:.0f} s, {end.resident / 2**20:.1f} MiB"
          f" at the end ({growth:+.0f} bytes a call); in flight at the end: {in_flight_at_end}")
    print()
    targets = [
        ("no 429 from a gateway enforcing the client's own limits", refused == 0, str(refused)),
        ("no window of the gateway over its limits", peak <= REQUESTS_PER_WINDOW and peak_tokens <= TOKENS_PER_WINDOW,
         f"{peak} requests, {peak_tokens:,} tokens"),
        ("no call raised anything but the SDK's typed errors", not crashed, ", ".join(crashed) or "none"),
        (f"every call over within {DRAIN_S:g} s of the end", not late, f"{len(late)} workers still waiting"),
        ("no slot held once every call is done", in_flight_at_end == 0, f"{in_flight_at_end} in flight"),
        ("calls failing after their attempts under 1%", failed < done / 100, f"{failed} of {done:,}"),
    ]
    if elapsed >= JUDGE_MEMORY_FROM_S:
        targets.append(
            (f"memory growth under {MAX_GROWTH_PER_CALL} bytes a call after warm-up", growth < MAX_GROWTH_PER_CALL,
             f"{growth:+.0f} bytes a call")
        )
    print("Targets:")
    for target, met, figure in targets:
        print(verdict(target, met, figure))
    if elapsed < JUDGE_MEMORY_FROM_S:
        print("- memory growth: not judged in a run under 2 minutes (still warming up)")
    return all(met for _, met, _ in targets)


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=positive, default=10.0, help="how long the workers keep calling (10)")
    parser.add_argument("--workers", type=int, default=48, help=f"concurrent callers, {BLOCKING_WORKERS} on threads (48)")
    parser.add_argument("--sample-s", type=positive, default=10.0, help="seconds between samples (10)")
    arguments = parser.parse_args()
    sys.exit(0 if asyncio.run(soak(arguments.minutes, arguments.workers, arguments.sample_s)) else 1)
