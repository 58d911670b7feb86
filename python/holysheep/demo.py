"""The main job, offline: a RAG pipeline against an embedded MockGateway that enforces small limits on a
short window and goes down for a few seconds in the middle. It embeds 2,000 documents in batches, then
runs 300 chat completions 64 at a time: once through `AsyncHolySheep` (a limiter set to the gateway's
limits, retries, a circuit breaker), once through the bare openai SDK (its own retries only). Then a
table of what each did, read from the gateway's admission log, and a PNG of admitted requests per
second against the limit. Run it with ``holysheep demo`` (or ``make demo``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from holysheep import pricing
from holysheep._holysheep import Limit
from holysheep._limiter import HolySheepRateLimiter
from holysheep.batch import BatchFailure, batch_chat, batch_embed
from holysheep.breaker import CircuitBreaker
from holysheep.retry import RetryPolicy
from holysheep.testing import AdmissionRecord, Faults, MockGateway

if TYPE_CHECKING:  # the SDK is imported when the demo runs, so `holysheep --help` stays quick
    import openai

EMBED_MODEL = "text-embedding-3-small"
CHAT_MODEL = "deepseek-v3.2"
#: USD per million tokens: holysheep's price table (budgets use it too), plus the embedding model at
#: OpenAI's list price, which that table leaves out.
PRICES = {**pricing.PRICES, EMBED_MODEL: 0.02}
EMBEDDINGS, CHATS = "/v1/embeddings", "/v1/chat/completions"
API_KEY = "hs_demo"

TOPICS = ["refunds", "shipping", "warranty", "billing", "accounts", "returns", "privacy", "support"]


@dataclass(frozen=True)
class Scenario:
    """The job and the gateway it runs against."""

    documents: int = 2_000
    batch_size: int = 100
    embed_concurrency: int = 8
    prompts: int = 300
    chat_concurrency: int = 64
    #: The gateway's "minute", and its limits per that window.
    window_s: float = 5.0
    requests_per_window: int = 100
    tokens_per_window: int = 60_000
    gateway_concurrency: int = 32
    latency_s: tuple[float, float] = (0.2, 0.6)
    completion_tokens: int = 48
    #: Seconds after the gateway starts during which it answers every request with 503.
    outage_s: tuple[float, float] = (8.0, 11.0)
    seed: int = 7

    @property
    def limit_per_s(self) -> float:
        return self.requests_per_window / self.window_s

    def gateway(self) -> MockGateway:
        return MockGateway(
            rpm=self.requests_per_window,
            tpm=self.tokens_per_window,
            concurrency=self.gateway_concurrency,
            latency=self.latency_s,
            faults=Faults(outage=self.outage_s),
            window_s=self.window_s,
            seed=self.seed,
            embedding_dim=256,
            completion_tokens=self.completion_tokens,
        )

    def limiter(self) -> HolySheepRateLimiter:
        """The gateway's own limits, told to the client: nothing more is needed to never see a 429."""
        return HolySheepRateLimiter(
            limits=[
                Limit(self.requests_per_window, per=self.window_s),
                Limit(self.tokens_per_window, per=self.window_s, unit="tokens"),
            ],
            max_concurrency=self.gateway_concurrency,
        )


def documents(count: int) -> Iterator[str]:
    """Short support-desk notes, made as they are read."""
    for number in range(count):
        topic = TOPICS[number % len(TOPICS)]
        yield f"Note {number} on {topic}: the customer asked about {topic} and was answered within a day."


def prompts(count: int) -> Iterator[str]:
    for number, document in zip(range(count), documents(count)):
        yield f"Summarise in one line for the FAQ (item {number}): {document}"


@dataclass
class Run:
    """What one pass of the job did, as the client saw it and as the gateway logged it."""

    label: str
    wall_s: float = 0.0
    failed_documents: int = 0
    failed_prompts: int = 0
    log: list[AdmissionRecord] = field(default_factory=list)
    waits_s: tuple[float, float] | None = None  # p50, p99 of the limiter's waits; None without one
    breaker_changes: list[tuple[float, str]] | None = None  # (seconds into the run, "old->new")

    def count(self, status: int) -> int:
        return sum(record.status == status for record in self.log)

    def admission_span_s(self, scenario: Scenario) -> float:
        """Seconds from the first admission to the last, less the outage: the time the limit was usable."""
        times = [record.at for record in self.log if record.admitted]
        if not times:
            return 0.0
        first, last = min(times), max(times)
        start, end = scenario.outage_s
        overlap = max(0.0, min(last, end) - max(first, start))
        return last - first - overlap

    def goodput(self, scenario: Scenario) -> float:
        """Successful requests as a share of the most the limit allows over the admission span: n per
        window for each window in it, plus the window's worth it may take at once at the start."""
        allowed = scenario.requests_per_window * (self.admission_span_s(scenario) / scenario.window_s + 1)
        return self.count(200) / allowed

    def cost_usd(self) -> float:
        """What the successful requests' tokens cost at `PRICES`."""
        price = {EMBEDDINGS: PRICES[EMBED_MODEL], CHATS: PRICES[CHAT_MODEL]}
        return sum(r.tokens * price[r.endpoint] for r in self.log if r.status == 200) / 1_000_000


async def _run_job(client: openai.AsyncOpenAI, scenario: Scenario, run: Run, progress: bool) -> None:
    started = time.monotonic()
    vectors = await batch_embed(
        client,
        documents(scenario.documents),
        model=EMBED_MODEL,
        batch_size=scenario.batch_size,
        concurrency=scenario.embed_concurrency,
        progress=f"{run.label}: embed" if progress else False,
    )
    replies = await batch_chat(
        client,
        prompts(scenario.prompts),
        model=CHAT_MODEL,
        concurrency=scenario.chat_concurrency,
        progress=f"{run.label}: chat" if progress else False,
        max_tokens=scenario.completion_tokens,
    )
    run.wall_s = time.monotonic() - started
    run.failed_documents = sum(isinstance(vector, BatchFailure) for vector in vectors)
    run.failed_prompts = sum(isinstance(reply, BatchFailure) for reply in replies)


async def run_holysheep(scenario: Scenario, progress: bool = False) -> Run:
    """The job through `AsyncHolySheep`, told the gateway's limits."""
    from holysheep.client import AsyncHolySheep

    run = Run("holysheep", breaker_changes=[])
    limiter = scenario.limiter()
    with scenario.gateway() as gateway:
        started = time.monotonic()

        def on_change(breaker: CircuitBreaker, old: str, new: str) -> None:
            assert run.breaker_changes is not None
            run.breaker_changes.append((time.monotonic() - started, f"{old}->{new}"))

        client = AsyncHolySheep(
            base_url=gateway.base_url,
            api_key=API_KEY,
            limiter=limiter,
            retry=RetryPolicy(max_attempts=6, base_delay=0.2, max_delay=3.0),
            breaker=CircuitBreaker(
                failure_threshold=5, recovery_timeout=1.0, half_open_max_calls=2, on_state_change=on_change
            ),
        )
        async with client:
            await _run_job(client, scenario, run, progress)
    run.log = gateway.admission_log()
    stats = limiter.stats()
    run.waits_s = (stats["waited_s_p50"], stats["waited_s_p99"])
    return run


async def run_bare(scenario: Scenario, progress: bool = False) -> Run:
    """The same job through the bare openai SDK, with its default retries."""
    import openai

    run = Run("bare SDK")
    with scenario.gateway() as gateway:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY) as client:
            await _run_job(client, scenario, run, progress)
    run.log = gateway.admission_log()
    return run


def _breaker_summary(changes: list[tuple[float, str]] | None) -> str:
    """How many times the breaker changed state, when it first opened and when it last closed."""
    if changes is None:
        return "no breaker"
    opened = [f"opened {at:.1f} s" for at, change in changes if change.endswith("->open")][:1]
    closed = [f"closed {at:.1f} s" for at, change in changes if change.endswith("->closed")][-1:]
    return ", ".join([str(len(changes)), *opened, *closed])


def report(ours: Run, bare: Run, scenario: Scenario) -> str:
    """The table: one row per measure, one column per run, and what goodput means under it."""

    def waits(run: Run) -> str:
        return "-" if run.waits_s is None else f"{run.waits_s[0]:.2f} / {run.waits_s[1]:.2f}"

    measures: list[tuple[str, Callable[[Run], str]]] = [
        ("requests sent", lambda r: f"{len(r.log):,}"),
        ("429s seen by the gateway", lambda r: f"{r.count(429):,}"),
        ("503s (outage)", lambda r: f"{r.count(503):,}"),
        ("failed documents / prompts", lambda r: f"{r.failed_documents:,} / {r.failed_prompts:,}"),
        ("goodput, % of the limit *", lambda r: f"{100 * r.goodput(scenario):.0f}%"),
        ("wait p50 / p99 (s)", waits),
        ("breaker transitions", lambda r: _breaker_summary(r.breaker_changes)),
        ("estimated cost (USD)", lambda r: f"${r.cost_usd():.4f}"),
        ("wall time (s)", lambda r: f"{r.wall_s:.1f}"),
    ]
    rows = [("", ours.label, bare.label)] + [(name, show(ours), show(bare)) for name, show in measures]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [
        "  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2])]) for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        f"* successful requests over what {scenario.requests_per_window} per {scenario.window_s:g} s allows "
        "from the first admission to the last, the outage left out"
    )
    return "\n".join(lines)


def describe(scenario: Scenario) -> str:
    start, end = scenario.outage_s
    low, high = scenario.latency_s
    return (
        f"MockGateway: {scenario.requests_per_window} requests and {scenario.tokens_per_window:,} tokens per "
        f"{scenario.window_s:g} s window, {scenario.gateway_concurrency} in flight, "
        f"{low:g}-{high:g} s latency, down from {start:g} s to {end:g} s.\n"
        f"Job: embed {scenario.documents:,} documents ({scenario.batch_size} a request), then "
        f"{scenario.prompts} chat completions, {scenario.chat_concurrency} at a time."
    )


async def warm_up() -> None:
    """Loads what first calls load (the SDK imports numpy and its response types, holysheep tiktoken's
    encoding: 0.2-0.5 s here) against a gateway of its own: a run's clock, and so the outage, starts with
    its gateway, and would otherwise start that much before its job."""
    from holysheep.client import AsyncHolySheep

    counts_tokens = HolySheepRateLimiter(limits=[Limit(1_000_000, per=60.0, unit="tokens")])
    with MockGateway() as gateway:
        async with AsyncHolySheep(base_url=gateway.base_url, api_key=API_KEY, limiter=counts_tokens) as client:
            await client.embeddings.create(model=EMBED_MODEL, input=["warm-up"])
            await client.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "warm-up"}], max_tokens=1
            )


async def demo(scenario: Scenario, progress: bool = False) -> tuple[Run, Run, str]:
    """Runs the job through holysheep, then through the bare SDK; returns both runs and the table."""
    await warm_up()
    ours = await run_holysheep(scenario, progress)
    bare = await run_bare(scenario, progress)
    return ours, bare, report(ours, bare, scenario)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, for the ``holysheep demo`` command."""
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("holysheep-demo.png"),
        metavar="PNG",
        help="where to write the plot of admitted requests per second (holysheep-demo.png)",
    )
    parser.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="write no plot")
    parser.add_argument("--seed", type=int, default=Scenario.seed, help="seed for latencies and embeddings")


def _logs_above_the_bars(progress: bool) -> AbstractContextManager[object]:
    """Prints holysheep's log lines (the breaker opening, ...) above the progress bars, not through them."""
    if not progress:
        return contextlib.nullcontext()
    redirect = importlib.import_module("tqdm.contrib.logging").logging_redirect_tqdm
    manager: AbstractContextManager[object] = redirect(loggers=[logging.getLogger("holysheep")])
    return manager


def run(args: argparse.Namespace) -> int:
    """Runs the demo, prints its table and writes the plot; the exit status."""
    if importlib.util.find_spec("openai") is None:
        print("holysheep demo: it drives the openai SDK; pip install 'holysheep[openai]'", file=sys.stderr)
        return 2
    scenario = replace(Scenario(), seed=args.seed)
    print(describe(scenario), flush=True)
    progress = importlib.util.find_spec("tqdm") is not None
    if not progress:
        print("(pip install 'holysheep[progress]' for live progress bars)", flush=True)
    with _logs_above_the_bars(progress):
        ours, bare, table = asyncio.run(demo(scenario, progress))
    print()
    print(table)
    if args.plot is not None:
        from holysheep import _demo_plot

        print(_demo_plot.write(ours, bare, scenario, args.plot))
    return 0
