"""What the openai benches print around their tables: the header naming when, where and with what."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import version

import holysheep as hs


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def header(method: str) -> str:
    return "\n".join(
        [
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores (nproc), {cpu_model()}, Linux {platform.release()},"
            f" load average {os.getloadavg()[0]:.2f} at start",
            f"- Python {platform.python_version()}, holysheep {hs.__version__} (maturin develop --release),"
            f" openai {version('openai')}, httpx2 {version('httpx2')}; MockGateway in the same process",
            f"- {method}",
        ]
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(target: str, met: bool, figure: str) -> str:
    return f"- {target}: {'met' if met else 'MISSED'} ({figure})"


def ideal_wall_s(requests: int, limit: int, window_s: float, concurrency: int, latency_s: float) -> float:
    """When the last request ends if each starts as soon as a gateway allowing ``limit`` per ``window_s``
    and ``concurrency`` in flight lets it: the full window at once (in waves of ``concurrency``), then
    each next one as the oldest leaves the window or a slot frees."""
    starts: list[float] = []
    for n in range(requests):
        window_free = starts[n - limit] + window_s if n >= limit else 0.0
        slot_free = starts[n - concurrency] + latency_s if n >= concurrency else 0.0
        starts.append(max(window_free, slot_free))
    return starts[-1] + latency_s
