"""The demo's PNG: requests per second at the gateway for both runs, one panel each, against the limit.

matplotlib is optional (``pip install 'holysheep[plot]'``; ``make demo`` installs it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from holysheep.demo import Run, Scenario

#: Width of a bar, in seconds.
BIN_S = 0.5


def _per_second(times: list[float], bins: int) -> list[float]:
    counts = [0.0] * bins
    for at in times:
        counts[min(int(at / BIN_S), bins - 1)] += 1 / BIN_S
    return counts


def _window_rate(times: list[float], grid: list[float], window_s: float) -> list[float]:
    """At each instant, admissions in the window that ends there, per second: what the limit caps."""
    ordered = sorted(times)
    rates, first, last = [], 0, 0
    for t in grid:
        while last < len(ordered) and ordered[last] <= t:
            last += 1
        while first < last and ordered[first] <= t - window_s:
            first += 1
        rates.append((last - first) / window_s)
    return rates


def write(ours: Run, bare: Run, scenario: Scenario, path: Path) -> str:
    """Writes the plot to ``path``; what happened, in one line."""
    if importlib.util.find_spec("matplotlib") is None:
        return "no plot: pip install 'holysheep[plot]' (matplotlib) for it"
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    runs = [ours, bare]
    end = max(record.at for run in runs for record in run.log) + 1.0
    bins = int(end / BIN_S) + 1
    lefts = [i * BIN_S for i in range(bins)]
    grid = [i * 0.05 for i in range(int(end / 0.05) + 1)]
    # Each panel its own scale: a 429 storm would flatten the other run to nothing.
    figure, panels = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for panel, run in zip(panels, runs):
        admitted = _per_second([r.at for r in run.log if r.status == 200], bins)
        refused = _per_second([r.at for r in run.log if r.status == 429], bins)
        failed = _per_second([r.at for r in run.log if r.status >= 500], bins)
        panel.bar(lefts, admitted, width=BIN_S, align="edge", color="#4c8bd6", label="admitted (200)")
        panel.bar(lefts, refused, width=BIN_S, align="edge", bottom=admitted, color="#d64c4c", label="429")
        stacked = [a + r for a, r in zip(admitted, refused)]
        panel.bar(lefts, failed, width=BIN_S, align="edge", bottom=stacked, color="#999999", label="5xx")
        admitted_times = [r.at for r in run.log if r.admitted]
        panel.plot(
            grid,
            _window_rate(admitted_times, grid, scenario.window_s),
            color="black",
            linewidth=1.5,
            label=f"admitted per s, over the last {scenario.window_s:g} s",
        )
        panel.axhline(scenario.limit_per_s, color="#2a9d3a", linestyle="--", linewidth=1.5, label="limit")
        panel.axvspan(*scenario.outage_s, color="#f2c14e", alpha=0.25, label="outage")
        title = f"{run.label}: {run.count(429):,} x 429, {run.failed_documents + run.failed_prompts} failed"
        panel.set_title(title, loc="left", fontsize=11)
        panel.set_ylabel("requests / s")
        panel.grid(axis="y", alpha=0.3)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncols=6, fontsize=9, frameon=False)
    panels[-1].set_xlabel("seconds since the gateway started")
    panels[-1].set_xlim(0, end)
    figure.suptitle(
        f"MockGateway at {scenario.requests_per_window} requests per {scenario.window_s:g} s "
        f"({scenario.limit_per_s:g}/s), {scenario.gateway_concurrency} in flight",
        fontsize=12,
    )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"plot: {path}"
