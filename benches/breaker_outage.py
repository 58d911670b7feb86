"""A circuit breaker through an outage, from a real run: a stdlib HTTP server answers 503 with
``Retry-After: 2`` for six seconds and then recovers, while a client calls it every 20 ms through
``hs.CircuitBreaker``. Writes docs/breaker.png (the breaker's state over time above what each call met)
and prints what happened.

    .venv/bin/python benches/breaker_outage.py [docs/breaker.png]
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import holysheep as hs  # noqa: E402

OUTAGE = (2.0, 8.0)  # seconds from the start: the server answers 503 with Retry-After in between
RETRY_AFTER = "2"
RUN_S = 11.0
EVERY_S = 0.02
STATES = {"closed": 0, "half_open": 1, "open": 2}


class Gateway(http.server.BaseHTTPRequestHandler):
    started = 0.0

    def do_GET(self) -> None:
        now = time.monotonic() - self.started
        down = OUTAGE[0] <= now < OUTAGE[1]
        self.send_response(503 if down else 200)
        if down:
            self.send_header("Retry-After", RETRY_AFTER)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run(url: str, started: float) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """Calls until the run ends; each call's (time, what it met) and each state change's (time, state)."""
    changes: list[tuple[float, str]] = [(0.0, "closed")]
    breaker = hs.CircuitBreaker(
        failure_threshold=5,
        recovery_timeout=30.0,
        half_open_max_calls=2,
        name="gateway",
        on_state_change=lambda b, old, new: changes.append((time.monotonic() - started, new)),
    )

    @breaker
    def get() -> int:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)

    calls: list[tuple[float, str]] = []
    while (now := time.monotonic() - started) < RUN_S:
        try:
            get()
            met = "answered 200"
        except urllib.error.HTTPError as error:
            error.close()
            met = "answered 503"
        except hs.CircuitOpenError:
            met = "failed fast"
        calls.append((now, met))
        time.sleep(EVERY_S)
    changes.append((RUN_S, breaker.state))
    return calls, changes


def plot(calls: list[tuple[float, str]], changes: list[tuple[float, str]], path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    for axis in (top, bottom):
        axis.axvspan(*OUTAGE, color="tab:red", alpha=0.08, lw=0)
    times = [t for t, _ in changes]
    levels = [STATES[state] for _, state in changes]
    top.step(times, levels, where="post", color="black")
    top.set_yticks(list(STATES.values()), list(STATES))
    top.set_ylim(-0.4, 2.4)
    top.set_title(f"CircuitBreaker through an outage: 503 + Retry-After: {RETRY_AFTER} from {OUTAGE[0]:.0f} s to {OUTAGE[1]:.0f} s")
    colors = {"answered 200": "tab:green", "answered 503": "tab:red", "failed fast": "tab:gray"}
    for met, color in colors.items():
        at = [t for t, m in calls if m == met]
        bottom.scatter(at, [met] * len(at), s=6, color=color, label=f"{met} ({len(at)})")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("each call")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/breaker.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Gateway.started = started = time.monotonic()
    try:
        calls, changes = run(f"http://127.0.0.1:{server.server_address[1]}/", started)
    finally:
        server.shutdown()
    plot(calls, changes, path)
    counts = {met: sum(1 for _, m in calls if m == met) for met in ("answered 200", "answered 503", "failed fast")}
    story = ", ".join(f"{state} at {t:.2f} s" for t, state in changes[1:-1])
    print(f"{len(calls)} calls: {counts}; {story}; wrote {path}")


if __name__ == "__main__":
    main()
