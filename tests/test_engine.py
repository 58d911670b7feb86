"""The batch engine against a MockGateway over real HTTP: formats, limits, faults, budgets, bad input."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from batch_lines import chat_line

import holysheep as hs
from holysheep.testing import Faults, MockGateway

pytestmark = pytest.mark.timeout(20)

KEY = "hs_test"


def embedding_line(custom_id: str, text: str = "a document") -> dict[str, Any]:
    body = {"model": "text-embedding-3-small", "input": text}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_output(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fast_retry(max_attempts: int = 4) -> hs.RetryPolicy:
    return hs.RetryPolicy(max_attempts=max_attempts, base_delay=0.01, max_delay=0.05)


def test_chat_and_embeddings_come_back_in_the_batch_api_output_format(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line("c1"), embedding_line("e1"), chat_line("c2")])
    output = tmp_path / "out.jsonl"
    with MockGateway(embedding_dim=8) as gw:
        report = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY)
    assert (report.total, report.sent, report.ok, report.failed, report.unsent) == (3, 3, 3, 0, 0)
    lines = {line["custom_id"]: line for line in read_output(output)}
    assert set(lines) == {"c1", "e1", "c2"}
    for line in lines.values():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
    assert lines["c1"]["response"]["body"]["object"] == "chat.completion"
    assert len(lines["e1"]["response"]["body"]["data"][0]["embedding"]) == 8
    assert report.cost_usd > 0, "priced at the table from the tokens usage reported"


def test_exact_limits_leave_no_window_over_and_no_429s(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(120)])
    # The gateway's strict window of 50 per second; the same limit here, with a guard for this loaded machine.
    limiter = hs.HolySheepRateLimiter(limits=[hs.Limit(50, per=1.0, guard=0.2)], max_concurrency=8)
    with MockGateway(rpm=50, window_s=1.0) as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, limiter=limiter)
        log = gw.admission_log()
        peak = gw.peak_admitted()
    assert report.ok == 120 and report.server_429s == 0
    assert sum(record.status == 429 for record in log) == 0
    assert peak <= 50
    assert len(log) == 120, "every request once"
    assert report.wall_s >= 2.0, "120 at 50 per second takes at least two more windows"


def test_a_server_allowing_less_than_told_is_followed_and_every_request_answered(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(60)])
    limiter = hs.HolySheepRateLimiter(limits=[hs.Limit(60, per=1.0)], max_concurrency=16)
    with MockGateway(rpm=30, window_s=1.0) as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, limiter=limiter)
        assert gw.peak_admitted() <= 30
    assert report.ok == 60 and report.failed == 0
    assert report.retries >= report.server_429s, "every 429 retried"
    stats = limiter.stats()
    assert stats["rate_factor"] < 1.0, "the limiter passed in followed the server's x-ratelimit-* and 429s"
    assert stats["server_429s"] == report.server_429s, "the same limiter heard every 429"


def test_faults_become_output_lines_never_a_crash(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(80)])
    output = tmp_path / "out.jsonl"
    faults = Faults(server_error=0.2, reset=0.1, timeout=0.05, malformed=0.1)
    with MockGateway(faults=faults, seed=7) as gw:
        report = hs.run_batch(
            requests, output, base_url=gw.base_url, api_key=KEY, retry=fast_retry(max_attempts=1), timeout=1.0
        )
    lines = read_output(output)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"r{i}" for i in range(80))
    assert report.ok + report.failed == 80 and report.failed > 0
    assert set(report.failures) <= {"http_500", "connection_error", "timeout", "invalid_json"}
    assert {"http_500", "timeout", "invalid_json"} <= set(report.failures)
    by_reason = {line["custom_id"]: line for line in lines if line["error"] is not None}
    assert {line["error"]["code"] for line in by_reason.values()} <= {"connection_error", "timeout", "invalid_json"}
    failed_status = [line for line in lines if line["response"] and line["response"]["status_code"] == 500]
    assert len(failed_status) == report.failures["http_500"], "an error status keeps its answer in the line"


def test_retries_turn_transient_faults_into_answers(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [embedding_line(f"e{i}") for i in range(40)])
    with MockGateway(faults=Faults(server_error=0.3, reset=0.1), seed=3, embedding_dim=4) as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, retry=fast_retry(8))
    assert report.ok == 40 and report.retries > 0


def test_an_open_breaker_stops_sending_until_it_lets_a_trial_through(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(20)])
    breaker = hs.CircuitBreaker(failure_threshold=3, recovery_timeout=0.3)
    with MockGateway(faults=Faults(outage=(0.0, 0.5))) as gw:
        report = hs.run_batch(
            requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, breaker=breaker,
            retry=hs.RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.05, respect_retry_after=False),
            max_concurrency=4,
        )
        sent_in_outage = sum(record.fault == "outage" for record in gw.admission_log())
    assert report.ok == 20
    assert sent_in_outage < 20, f"{sent_in_outage} sent into the outage: the breaker held the rest back"
    assert breaker.state == "closed"


def test_a_job_whose_breaker_is_isolated_sends_nothing_and_stops_saying_why(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    breaker = hs.CircuitBreaker()
    breaker.isolate()
    with MockGateway() as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, breaker=breaker)
        assert gw.admission_log() == []
    assert (report.sent, report.unsent) == (0, 5), "isolated until reset(): the job ends instead of waiting forever"
    assert report.stopped is not None and "isolated" in report.stopped


def test_a_request_no_limit_can_ever_pass_is_a_failed_line_and_the_rest_go_on(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line("small"), chat_line("huge", content="x" * 2_000)])
    output = tmp_path / "out.jsonl"
    limiter = hs.HolySheepRateLimiter(tpm=100)
    with MockGateway() as gw:
        report = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, limiter=limiter)
        assert len(gw.admission_log()) == 1
    assert (report.ok, report.failed, report.failures) == (1, 1, {"exceeds_limit": 1})
    huge = next(line for line in read_output(output) if line["custom_id"] == "huge")
    assert huge["response"] is None and huge["error"]["code"] == "exceeds_limit"
    assert "never" in huge["error"]["message"]


def test_a_budget_stops_sending_and_reports_the_rest_unsent(tmp_path: Path) -> None:
    # About 1,000 tokens a request at gpt-4.1's $8 per million: $0.008 each, so $0.05 pays for six.
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}", content="x" * 4_000) for i in range(30)])
    with MockGateway() as gw:
        report = hs.run_batch(
            requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, budget_usd=0.05, max_concurrency=2
        )
        sent = len(gw.admission_log())
    assert 1 <= report.sent <= 6 and report.sent == sent
    assert report.unsent == 30 - report.sent and report.stopped and "budget" in report.stopped
    assert report.cost_usd <= 0.05
    assert report.notes == (), "notes are a dry run's: a real run says why it stopped in stopped"
    assert str(report).splitlines()[-1] == f"stopped: {report.stopped}"


def test_a_rerun_skips_what_is_answered_and_drops_a_line_cut_short(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(10)])
    output = tmp_path / "out.jsonl"
    with MockGateway() as gw:
        hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY)
        kept = output.read_text().splitlines(keepends=True)
        # A crash while writing the eighth line: seven whole, the eighth cut.
        output.write_text("".join(kept[:7]) + kept[7][:25])
        report = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY)
        assert len(gw.admission_log()) == 10 + 3, "ten the first time, three again"
    assert (report.skipped, report.sent, report.ok) == (7, 3, 3)
    ids = [line["custom_id"] for line in read_output(output)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(10)), "each custom_id exactly once"


def test_retry_failed_sends_only_the_failed_ones_again(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(30)])
    output = tmp_path / "out.jsonl"
    with MockGateway(faults=Faults(server_error=0.3), seed=1) as failing:
        first = hs.run_batch(requests, output, base_url=failing.base_url, api_key=KEY, retry=fast_retry(1))
    assert first.failed > 0
    with MockGateway() as gw:
        again = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, retry_failed=True)
        assert len(gw.admission_log()) == first.failed
    assert (again.skipped, again.sent, again.ok) == (first.ok, first.failed, first.failed)
    lines = read_output(output)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"r{i}" for i in range(30))
    assert all(line["response"]["status_code"] == 200 for line in lines)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("not json at all", "line 2: not a JSON object"),
        ({"method": "POST", "url": "/v1/embeddings", "body": {}}, "line 2: no custom_id"),
        ({"custom_id": "x", "method": "POST", "url": "/v1/images/generations", "body": {}}, "line 2: unknown url"),
        (chat_line("r0"), 'line 2: custom_id "r0" already on line 1'),
    ],
)
def test_a_bad_input_line_is_refused_by_number_and_nothing_answered_is_lost(
    tmp_path: Path, bad: Any, says: str
) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line("r0"), bad, chat_line("r2")])
    output = tmp_path / "out.jsonl"
    earlier = '{"id": "batch_req_1", "custom_id": "r0", "response": {"status_code": 200, "request_id": null, "body": {}}, "error": null}\n'
    output.write_text(earlier)
    with MockGateway() as gw:
        with pytest.raises(hs.ConfigError, match=says) as raised:
            hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY)
        assert gw.admission_log() == [], "nothing sent"
    assert raised.value.field == "input"
    assert output.read_text() == earlier


def test_dry_run_says_how_long_and_how_much_without_sending(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(250)])
    limiter = hs.HolySheepRateLimiter(rpm=100)
    report = hs.run_batch(
        requests, tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key=KEY, limiter=limiter, dry_run=True
    )
    assert (report.sent, report.unsent) == (0, 250)
    # 100 at once, then 100 a minute later, the last 50 a minute after that (each minute plus its guard).
    assert report.planned_s is not None and 120.0 <= report.planned_s <= 121.0
    assert report.cost_usd == pytest.approx(250 * (3 + 4 + 3 + 1) * 8.0 / 1e6)
    assert not (tmp_path / "out.jsonl").exists()
    assert report.stopped == "dry run" and report.notes == (), "a limit of this process alone, no budget: nothing to note"
    assert str(report).startswith("dry run: 250 requests") and "\n" not in str(report)


def test_a_real_run_has_no_notes(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    with MockGateway() as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY,
                              limiter=hs.HolySheepRateLimiter(rpm=600), budget_usd=1.0)  # fmt: skip
    assert (report.ok, report.stopped, report.notes) == (5, None, ())
    assert len(str(report).splitlines()) == 2, "the counts and the 429s, retries and cost: nothing else to say"


def test_progress_draws_a_live_line_with_the_rate_and_the_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(30)])
    with MockGateway(latency=0.05) as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, max_concurrency=4,
                              progress=True)
    assert report.ok == 30
    drawn = capsys.readouterr().err
    assert "req" in drawn and "failed" in drawn


async def test_arun_batch_runs_the_job_while_the_event_loop_stays_free(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(40)])
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    with MockGateway(latency=0.05) as gw:
        ticker = asyncio.ensure_future(ticking())
        report = await hs.arun_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, max_concurrency=4)
        ticker.cancel()
    assert report.ok == 40
    assert ticks >= 20, "the loop ran while the engine worked"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"budget_usd": 0.0}, "budget_usd"),
        ({"limiter": "fast"}, "limiter"),
        ({"retry": 5}, "retry"),
        ({"breaker": "on"}, "breaker"),
        ({"retry_failed": "yes"}, "retry_failed"),
        ({"prices": {"gpt-4.1": -1.0}}, "prices"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"tier": "gold"}, "tier"),
        ({"limiter": hs.HolySheepRateLimiter(rpm=5), "rpm": 5}, "limiter"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(tmp_path: Path, arguments: dict[str, Any], field: str) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line("r0")])
    settings: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1", "api_key": KEY, **arguments}
    with pytest.raises(hs.ConfigError) as raised:
        hs.run_batch(requests, tmp_path / "out.jsonl", **settings)
    assert raised.value.field == field


def test_the_output_must_not_be_the_input(tmp_path: Path) -> None:
    requests = write_lines(tmp_path / "in.jsonl", [chat_line("r0")])
    with pytest.raises(hs.ConfigError) as raised:
        hs.run_batch(requests, requests, base_url="http://127.0.0.1:9/v1", api_key=KEY)
    assert raised.value.field == "output"
