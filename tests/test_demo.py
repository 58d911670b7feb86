"""`holysheep demo`, scaled down to a few seconds: the same job, gateway, table and plot."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from holysheep import _demo_plot
from holysheep.demo import Scenario, add_arguments, demo, run

from conftest import max_in_any_window

SMALL = Scenario(
    documents=200,
    batch_size=20,
    embed_concurrency=4,
    prompts=60,
    chat_concurrency=16,
    window_s=1.0,
    requests_per_window=25,
    tokens_per_window=20_000,
    gateway_concurrency=8,
    latency_s=(0.01, 0.05),
    completion_tokens=8,
    # Over the second window's start, when the limiter lets a window's worth go at once: the breaker opens
    # whatever the load on the machine.
    outage_s=(0.9, 1.4),
)


async def test_demo_keeps_holysheep_inside_the_limits_through_the_outage_and_shows_the_bare_sdk_break_them(
    tmp_path: Path,
) -> None:
    ours, bare, table = await demo(SMALL)

    assert (ours.count(429), ours.failed_documents, ours.failed_prompts) == (0, 0, 0)
    assert ours.count(200) == 10 + 60  # ten embedding requests, sixty chats, each answered once
    assert max_in_any_window([r.at for r in ours.log if r.admitted], SMALL.window_s) <= 25
    assert ours.breaker_changes is not None and ours.breaker_changes[0][1] == "closed->open"
    assert ours.breaker_changes[-1][1] == "half_open->closed"
    # 0.635-0.648 on openai 1.x, 0.654-0.658 on 3.x (1.x builds each request's body more slowly, which
    # delays the breaker's trials behind the workers that wake with them).
    assert ours.goodput(SMALL) > 0.6
    assert bare.count(429) > 0 and bare.breaker_changes is None

    for row in ("429s seen by the gateway", "goodput, % of the limit", "breaker transitions", "cost (USD)"):
        assert row in table
    assert table.splitlines()[0].split() == ["holysheep", "bare", "SDK"]

    plot = tmp_path / "demo.png"
    assert _demo_plot.write(ours, bare, SMALL, plot) == f"plot: {plot}"
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_plot_can_be_turned_off() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).plot == Path("holysheep-demo.png")
    assert parser.parse_args(["--no-plot"]).plot is None


def test_without_the_openai_sdk_the_demo_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec

    def as_if_openai_were_missing(name: str, package: str | None = None) -> object:
        return None if name == "openai" else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", as_if_openai_were_missing)
    assert run(argparse.Namespace(seed=7, plot=None)) == 2
    assert "pip install 'holysheep[openai]'" in capsys.readouterr().err
