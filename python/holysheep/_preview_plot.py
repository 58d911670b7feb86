"""A preview's PNG: requests per second admitted against each limit, the share of each limit in use
(shaded where it held the line), the queue, and the waits.

matplotlib is optional (``pip install 'holysheep[plot]'``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from holysheep.preview import PreviewReport

_COLOURS = ["#4c8bd6", "#e07b39", "#2a9d3a", "#8e5bbf", "#c4a000", "#17a2b8", "#888888", "#b03060", "#555555"]


def write(report: PreviewReport, path: Path) -> Path:
    """Writes the plot of ``report`` to ``path`` and returns it."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError("report.plot() needs matplotlib: pip install 'holysheep[plot]'")
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    series = report.series
    bins = len(series.admitted_per_s)
    lefts = [i * series.bin_s for i in range(bins)]
    colour = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(report.limits)}
    figure, (rate, use, queue, waits) = plt.subplots(
        4, 1, figsize=(11, 10), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.5, 1.5]}
    )

    stacked = [a + r for a, r in zip(series.admitted_per_s, series.server_429s_per_s)]
    rate.fill_between(lefts, series.admitted_per_s, step="post", color="#4c8bd6", alpha=0.8, label="admitted")
    if report.server_429s:
        rate.fill_between(
            lefts, series.admitted_per_s, stacked, step="post", color="#d64c4c", alpha=0.8, label="server 429"
        )
    for name, per_s in report.request_rates.items():
        style = "--" if name.startswith("server") else "-."
        rate.axhline(per_s, color=colour.get(name, "black"), linestyle=style, linewidth=1.5, label=f"{name}: {per_s:.3g}/s")
    rate.set_ylabel("requests / s")
    rate.legend(loc="upper right", fontsize=8)
    title = f"{report.requests:,} requests: {report.answered:,} answered, {report.server_429s:,} x 429"
    rate.set_title(title + f", drained after {report.drain_s:,.1f} s", loc="left", fontsize=11)

    for name, used in series.use_of.items():
        use.plot(lefts, used, color=colour[name], linewidth=1.5, label=name, drawstyle="steps-post")
    if report.max_concurrency is not None:
        name, most = report.limits[-1], report.max_concurrency
        in_use = [n / most for n in series.in_flight]
        use.plot(lefts, in_use, color=colour[name], linewidth=1.5, label=name, drawstyle="steps-post")
    for span in report.binding:
        use.axvspan(span.start_s, span.end_s, color=colour[span.limit], alpha=0.12, linewidth=0)
    use.axhline(1.0, color="black", linewidth=0.8)
    use.set_ylabel("share of limit used")
    use.set_ylim(0, 1.15)
    binding = report.binding_limit or "nothing"
    use.set_title(f"binding: {binding} (shaded while each limit held the line)", loc="left", fontsize=10)
    use.legend(loc="lower right", fontsize=8)

    queue.fill_between(lefts, series.queue, step="post", color="#999999", alpha=0.6, label="waiting")
    queue.set_ylabel("waiting")
    flying = queue.twinx()
    flying.step(lefts, series.in_flight, where="post", color="#4c8bd6", linewidth=1.2, label="in flight")
    flying.set_ylabel("in flight", color="#4c8bd6")
    flying.set_ylim(bottom=0)
    queue.set_title("requests waiting in line (grey) and in flight (blue)", loc="left", fontsize=10)

    waits.step(lefts, series.wait_max_s, where="post", color="#d64c4c", linewidth=1.0, label="longest")
    waits.step(lefts, series.wait_p50_s, where="post", color="black", linewidth=1.2, label="median")
    waits.set_ylabel("wait (s)")
    waits.set_xlabel("seconds from the start of the traffic")
    waits.set_title(
        f"wait p50 {report.wait_p50:.2f} s, p99 {report.wait_p99:.2f} s (by admission time)", loc="left", fontsize=10
    )
    waits.legend(loc="upper right", fontsize=8)
    waits.set_xlim(0, max(bins * series.bin_s, 1e-3))

    for panel in (rate, use, queue, waits):
        panel.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
