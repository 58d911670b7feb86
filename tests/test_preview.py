"""`hs.preview`: a limiter configuration simulated on a virtual clock, its report, and its bad input."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import holysheep as hs
import openai
import pytest
from holysheep.preview import Binding
from holysheep.testing import MockGateway

# Issue 17: 1,000 requests at once against 100 per minute drain in 9 windows of 60 s, each with the
# 50 ms guard the rpm shorthand keeps past the window.
NINE_GUARDED_WINDOWS = 9 * 60.05


def test_a_thousand_at_once_against_a_hundred_a_minute_drain_in_540_s_plus_the_guard() -> None:
    report = hs.preview(hs.HolySheepRateLimiter(rpm=100), traffic="1000 at once")
    assert report.drain_s == pytest.approx(NINE_GUARDED_WINDOWS, rel=0.01)
    assert report.drain_s == pytest.approx(NINE_GUARDED_WINDOWS, abs=1e-9), "exact, not just within 1%"
    assert (report.requests, report.admitted, report.answered, report.refused) == (1_000, 1_000, 1_000, 0)
    assert report.wait_p50 == pytest.approx(4 * 60.05) and report.wait_p99 == pytest.approx(9 * 60.05)
    assert report.binding_limit == "100 requests per minute"
    assert report.binding == [Binding("100 requests per minute", 0.0, report.drain_s)]


def test_the_report_shows_the_server_429s_the_cost_and_what_bound_when() -> None:
    lim = hs.HolySheepRateLimiter(rpm=300)
    server = hs.ServerModel(rpm=100)
    report = hs.preview(lim, "300 at once", latency=2.0, tokens=1_000, server=server, model="gpt-4.1")
    assert report.server_429s >= 200, "the server counts 100 a minute; the limiter let 300 go"
    assert report.answered + report.failed == 300
    # gpt-4.1 at $8 per million tokens, 1,000 tokens per answered request.
    assert report.cost_usd == pytest.approx(report.answered * 0.008)
    assert report.server_limits == ["100 requests per minute"]
    assert report.limits == ["300 requests per minute"]
    assert report.binding_limit in report.limits
    assert all(span.limit in report.limits and span.end_s > span.start_s for span in report.binding)
    assert sum(report.held_s.values()) > 0


def test_the_limiter_previewed_is_left_untouched() -> None:
    lim = hs.HolySheepRateLimiter(rpm=5, max_concurrency=2)
    hs.preview(lim, "50 at once", latency=1.0)
    stats = lim.stats()
    assert (stats["admitted"], stats["in_flight"], stats["waiting"]) == (0, 0, 0)
    assert lim.try_acquire()


def test_a_redis_backed_limiter_previews_its_limits_here() -> None:
    backend = hs.RedisBackend("redis://127.0.0.1:1/0")  # never reached: the preview runs in this process
    lim = hs.HolySheepRateLimiter(rpm=100, backend=backend, key="team-a")
    assert hs.preview(lim, "1000 at once").drain_s == pytest.approx(NINE_GUARDED_WINDOWS)


def test_every_form_of_traffic_is_read(tmp_path: Path) -> None:
    lim = hs.HolySheepRateLimiter(tpm=1_000)
    assert hs.preview(lim, 5.0, duration=10).requests == 50
    assert hs.preview(lim, 5.0).requests == 300, "a rate lasts 60 s unless told"
    times = hs.preview(lim, [0.0, 0.5, (1.0, 900)], tokens=100)
    assert (times.requests, times.admitted) == (3, 3)
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"at": i * 0.1, "tokens": 400}) for i in range(5)) + "\n")
    for path in (trace, str(trace)):
        report = hs.preview(lim, path)
        assert (report.requests, report.admitted) == (5, 5)
        assert report.binding_limit == "1000 tokens per minute", "400 tokens each: the third waits a minute"
    stages = hs.preview(lim, "ramp 0->10/s over 10s, 10/s for 5s, 20 at once")
    assert stages.requests == 50 + 50 + 20


def test_the_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = hs.preview(
        hs.HolySheepRateLimiter.from_tier("starter"),
        "ramp 0->20/s over 30s, 20/s for 30s",
        latency=(1.0, 3.0),
        tokens=150,
        server=hs.ServerModel(tier="starter"),
    )
    written = report.plot(tmp_path / "preview.png")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_prints_the_table_and_writes_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from holysheep.cli import main

    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    status = main(["preview", "1000 at once", "--rpm", "100", "--server-rpm", "100", "--png", str(png)])
    out = capsys.readouterr().out
    assert status == 0 and png.exists()
    assert "binding limit         100 requests per minute" in out
    assert "540.450 s" in out
    assert main(["preview", "50/s fr 1m", "--rpm", "100"]) == 2
    assert 'stage 1 "50/s fr 1m"' in capsys.readouterr().err


def _field(call: Callable[[], Any]) -> tuple[str | None, str]:
    with pytest.raises(hs.ConfigError) as caught:
        call()
    return caught.value.field, str(caught.value)


LIM = hs.HolySheepRateLimiter(rpm=100)


@pytest.mark.parametrize(
    ("call", "field", "said"),
    [
        (lambda: hs.preview(LIM, "50/s for 1m, 50/s fr 10m"), "traffic", 'stage 2 "50/s fr 10m"'),
        (lambda: hs.preview(LIM, "-5/s for 1m"), "traffic", "negative"),
        (lambda: hs.preview(LIM, "ramp 0->50/s over soon"), "traffic", '"soon"'),
        (lambda: hs.preview(LIM, -5.0), "traffic", "0 or more"),
        (lambda: hs.preview(LIM, [0.0, -1.0]), "traffic", "arrival 1"),
        (lambda: hs.preview(LIM, ["soon"]), "traffic", "item 0"),  # type: ignore[list-item]
        (lambda: hs.preview(LIM, {"at": 1}), "traffic", "stages string"),  # type: ignore[arg-type]
        (lambda: hs.preview(LIM, "missing.jsonl"), "traffic", "cannot read the trace"),
        (lambda: hs.preview(LIM, "1000000/s for 1h"), "traffic", "more than"),
        (lambda: hs.preview(LIM, "1 at once", duration=10), "duration", "constant rate"),
        (lambda: hs.preview(LIM, 5.0, duration=-1), "duration", "greater than 0"),
        (lambda: hs.preview(LIM, "1 at once", latency=-1.0), "latency", "0 or more"),
        (lambda: hs.preview(LIM, "1 at once", latency=(3.0, 1.0)), "latency", "must not exceed"),
        (lambda: hs.preview(LIM, "1 at once", latency=(1.0, 2.0, 3.0)), "latency", "pair"),  # type: ignore[arg-type]
        (lambda: hs.preview(LIM, "1 at once", tokens=-1), "tokens", "0 to"),
        (lambda: hs.preview(LIM, "1 at once", max_attempts=0), "max_attempts", "from 1"),
        (lambda: hs.preview(LIM, "1 at once", timeout=-1), "timeout", "0 or more"),
        (lambda: hs.preview(LIM, "1 at once", model=5), "model", "str"),  # type: ignore[arg-type]
        (lambda: hs.preview(LIM, "1 at once", prices={"m": -1.0}, model="m"), "prices", "0 or more"),
        (lambda: hs.preview(LIM, "1 at once", server="pro"), "server", "ServerModel"),  # type: ignore[arg-type]
        (lambda: hs.preview("rpm=100", "1 at once"), "limiter", "HolySheepRateLimiter"),  # type: ignore[arg-type]
        (lambda: hs.ServerModel(tier="platinum"), "tier", "free, starter, pro, enterprise"),
        (lambda: hs.ServerModel(), "tier", "at least one"),
        (lambda: hs.ServerModel(rpm=0), "rpm", "from 1"),
        (lambda: hs.ServerModel(rpm=10, window_s=0), "window_s", "longer than 0"),
        (lambda: hs.ServerModel(tier=5), "tier", "str"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_raises_config_error_naming_the_field(call: Callable[[], Any], field: str, said: str) -> None:
    got_field, message = _field(call)
    assert got_field == field
    assert said in message, message


def test_a_bad_trace_line_is_named(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"at": 0}\n{"tokens": 5}\n')
    field, message = _field(lambda: hs.preview(LIM, trace))
    assert field == "traffic" and "line 2 of" in message


def test_a_server_model_shows_its_limits() -> None:
    pro = hs.ServerModel(tier="pro", tpm=1_000)
    assert (pro.tier, pro.rpm, pro.tpm, pro.concurrency, pro.window_s) == ("pro", 2_000, 1_000, 50, 60.0)
    assert repr(pro) == "ServerModel(2000 requests per minute, 1000 tokens per minute, 50 in flight)"


async def _real_waits(limit: hs.Limit, arrivals: list[float], gw: MockGateway) -> list[float]:
    """Sends a request at each arrival through a limiter of ``limit``; returns how long each waited."""
    lim = hs.HolySheepRateLimiter(limits=[limit])
    # Admitted here, above the SDK, each request is sent a moment later; on a loaded machine that moment
    # can outlast the guard, and the gateway refuses it: the SDK retries it then, so its wait still counts.
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="hs_test", max_retries=2)
    # What a first call loads and connects is done before the clock starts, and its window emptied.
    await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    await asyncio.sleep(1.1)
    start = time.monotonic()

    async def one(at: float) -> float:
        await asyncio.sleep(at - (time.monotonic() - start))
        arrived = time.monotonic()
        await lim.acquire()
        waited = time.monotonic() - arrived
        await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
        return waited

    try:
        return list(await asyncio.gather(*(one(at) for at in arrivals)))
    finally:
        await client.close()


async def test_the_median_wait_agrees_with_a_real_run_against_mock_gateway() -> None:
    # 20 requests a second for 3 s against 10 per second, at the gateway and at the limiter.
    arrivals = [i * 0.05 for i in range(60)]
    limit = hs.Limit(10, per=1.0, guard=0.05)
    with MockGateway(rpm=10, window_s=1.0, latency=0.05) as gw:
        waits = sorted(await _real_waits(limit, arrivals, gw))
        refused = sum(record.status == 429 for record in gw.admission_log())
    real_p50 = waits[len(waits) // 2 - 1]  # nearest rank, as the preview takes it
    report = hs.preview(
        hs.HolySheepRateLimiter(limits=[limit]),
        arrivals,
        latency=0.05,
        server=hs.ServerModel(rpm=10, window_s=1.0),
    )
    assert report.wait_p50 == pytest.approx(1.1, abs=1e-6), "10 at once, then each a guarded window after"
    assert real_p50 == pytest.approx(report.wait_p50, rel=0.10)
    assert report.server_429s == 0
    assert refused <= 2, f"{refused} refused: more than a loaded machine's late sends explain"
    assert report.answered == len(arrivals)
