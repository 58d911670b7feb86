"""The batch engine survives `kill -9` and the command line: a rerun sends each request once more at most."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import holysheep as hs
from holysheep.testing import MockGateway

pytestmark = pytest.mark.timeout(20)

REQUESTS = 300
IN_FLIGHT = 8


def write_requests(path: Path, count: int) -> Path:
    with path.open("w") as f:
        for i in range(count):
            body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 1}
            f.write(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
    return path


def batch_command(requests: Path, output: Path, base_url: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "holysheep", "batch", str(requests), "-o", str(output), "--base-url", base_url,
            "--api-key", "hs_test", "--no-progress", *more]


def dry_run(requests: Path, output: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """``holysheep batch --dry-run`` against an address nothing listens on (a dry run sends nothing);
    it must succeed."""
    done = subprocess.run(batch_command(requests, output, "http://127.0.0.1:9/v1", *more, "--dry-run"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def whole_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_job_killed_with_sigkill_resumes_and_answers_every_custom_id_exactly_once(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", REQUESTS)
    output = tmp_path / "out.jsonl"
    kill_after = random.Random(os.getpid()).randint(20, 200)
    with MockGateway(latency=(0.005, 0.02)) as gw:
        job = subprocess.Popen(batch_command(requests, output, gw.base_url, "--max-concurrency", str(IN_FLIGHT)))
        deadline = time.monotonic() + 15
        while whole_lines(output) < kill_after and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        job.send_signal(signal.SIGKILL)
        job.wait()
        answered_before = whole_lines(output)
        report = hs.run_batch(requests, output, base_url=gw.base_url, api_key="hs_test", max_concurrency=IN_FLIGHT)
        seen = len(gw.admission_log())
    ids = [json.loads(line)["custom_id"] for line in output.read_text().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(REQUESTS)), f"killed after {kill_after} lines"
    assert report.sent > 0, "killed before the end"
    assert report.skipped + report.sent == REQUESTS and report.skipped >= answered_before - 1
    assert seen <= REQUESTS + IN_FLIGHT, f"the gateway saw {seen}: at most what was in flight is repeated"


def test_the_batch_command_prints_the_report_and_exits_0_when_all_succeeded(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 20)
    output = tmp_path / "out.jsonl"
    with MockGateway() as gw:
        done = subprocess.run(batch_command(requests, output, gw.base_url, "--rpm", "6000"), capture_output=True, text=True)
        again = subprocess.run(batch_command(requests, output, gw.base_url), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "20 sent" in done.stdout and "20 ok, 0 failed" in done.stdout
    assert again.returncode == 0 and "20 answered before" in again.stdout


def test_the_batch_command_dry_run_sends_nothing_and_says_how_long(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 30)
    done = dry_run(requests, tmp_path / "out.jsonl", "--tier", "free")
    assert "dry run: 30 requests" in done.stdout and "0.00 s" in done.stdout, "30 fit the free tier's 60 a minute at once"
    assert not (tmp_path / "out.jsonl").exists()


def test_the_batch_command_dry_run_prints_what_the_budget_lets_go(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 30)
    done = dry_run(requests, tmp_path / "out.jsonl", "--budget-usd", "1e-9")
    plan, note = done.stdout.splitlines()
    assert plan.startswith("dry run: 30 requests, 0 answered before, 0 to send")
    assert note == "The budget covers 0 of the 30 requests left to send: a run would stop after them and report the rest unsent."


def test_the_batch_command_refuses_a_bad_input_with_status_2_naming_the_line(tmp_path: Path) -> None:
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"custom_id": "a", "url": "/v1/embeddings", "body": {}}\n{oops\n')
    done = subprocess.run(batch_command(requests, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "line 2: not a JSON object" in done.stderr
