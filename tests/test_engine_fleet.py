"""A fleet of batch engines sharing one limit through Redis: jobs running at once keep to it together,
a Redis outage follows the limiter's on_error policy, and a cancelled job leaves nothing held."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from batch_lines import answered, write_requests
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from holysheep.testing import MockGateway

pytestmark = pytest.mark.timeout(30)

KEY = "hs_test"
spawn = multiprocessing.get_context("spawn")


def fleet_limiter(url: str, key: str, on_error: Literal["fail_closed", "fail_open", "local"] = "fail_closed", **limits: Any) -> hs.HolySheepRateLimiter:
    """A limiter on its own RedisBackend, as another process would have it."""
    return hs.HolySheepRateLimiter(backend=hs.RedisBackend(url, on_error=on_error), key=key, **limits)


def test_two_jobs_sharing_a_limit_in_redis_keep_to_it_together(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    # The gateway's strict window of 40 per second, the same limit shared by both jobs (one alone
    # would send its 60 in about a second and a half: together they must take three).
    limits = [hs.Limit(40, per=1.0, guard=0.1)]
    jobs = [(write_requests(tmp_path / f"in-{name}.jsonl", name, 60), tmp_path / f"out-{name}.jsonl") for name in "ab"]
    reports: list[hs.BatchReport] = []
    with MockGateway(rpm=40, window_s=1.0) as gw:

        def run(requests: Path, output: Path) -> None:
            limiter = fleet_limiter(redis_url, "fleet", limits=limits, max_concurrency=6)
            reports.append(hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, limiter=limiter))

        threads = [threading.Thread(target=run, args=job) for job in jobs]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=25)
        wall = time.monotonic() - started
        log = gw.admission_log()
        peak = gw.peak_admitted()
    assert len(reports) == 2 and all(report.ok == 60 and report.server_429s == 0 for report in reports)
    assert sum(record.status == 429 for record in log) == 0
    assert peak <= 40, "no window over the shared limit"
    assert len(log) == 120, "every request sent once"
    for name, (_, output) in zip("ab", jobs, strict=True):
        assert sorted(answered(output)) == sorted(f"{name}{i}" for i in range(60)), "every custom_id answered once"
    assert wall >= 2.0, "120 at 40 per second, shared: at least two more windows"


def run_job_in_a_process(url: str, base_url: str, requests: Path, output: Path, out: "multiprocessing.Queue[tuple[int, int]]") -> None:
    limiter = fleet_limiter(url, "processes", limits=[hs.Limit(30, per=1.0, guard=0.1)], max_concurrency=4)
    report = hs.run_batch(requests, output, base_url=base_url, api_key=KEY, limiter=limiter)
    out.put((report.ok, report.server_429s))


def test_jobs_in_two_processes_keep_to_the_limit_they_share_in_redis(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    out: multiprocessing.Queue[tuple[int, int]] = spawn.Queue()
    with MockGateway(rpm=30, window_s=1.0) as gw:
        workers = [
            spawn.Process(target=run_job_in_a_process, args=(redis_url, gw.base_url, write_requests(tmp_path / f"in-{n}.jsonl", f"p{n}-", 30), tmp_path / f"out-{n}.jsonl", out))
            for n in range(2)
        ]
        for worker in workers:
            worker.start()
        results = [out.get(timeout=25) for _ in workers]
        for worker in workers:
            worker.join(timeout=5)
        log = gw.admission_log()
        peak = gw.peak_admitted()
    assert results == [(30, 0), (30, 0)]
    assert peak <= 30 and len(log) == 60 and all(record.status == 200 for record in log)


async def test_two_async_jobs_share_one_concurrency_limit_in_redis(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    limiters = [fleet_limiter(redis_url, "slots", max_concurrency=3) for _ in range(2)]
    with MockGateway(latency=0.05) as gw:
        reports = await asyncio.gather(
            *(
                hs.arun_batch(write_requests(tmp_path / f"in-{n}.jsonl", f"j{n}-", 30), tmp_path / f"out-{n}.jsonl",
                              base_url=gw.base_url, api_key=KEY, limiter=limiter, max_concurrency=8)  # fmt: skip
                for n, limiter in enumerate(limiters)
            )
        )
        log = gw.admission_log()
    assert [report.ok for report in reports] == [30, 30]
    # Each request is 50 ms at the gateway: in flight when its interval covers another's start.
    spans = sorted((record.at, record.at + 0.05) for record in log)
    most = max(sum(start <= at < end for start, end in spans) for at, _ in spans)
    assert most <= 3, f"{most} in flight at once across both jobs"
    assert all(limiter.stats()["fleet_in_flight"] == 0 for limiter in limiters), "every lease released"


def test_a_job_whose_redis_is_down_under_fail_closed_stops_saying_why(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    down = f"redis://127.0.0.1:{redis_server.port + 1}/0"  # nothing listens there
    requests = write_requests(tmp_path / "in.jsonl", "r", 5)
    output = tmp_path / "out.jsonl"
    limiter = hs.HolySheepRateLimiter(backend=hs.RedisBackend(down, connect_timeout=0.2), key="k", rpm=600)
    with MockGateway() as gw:
        report = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, limiter=limiter)
        assert gw.admission_log() == [], "nothing sent without a decision"
    assert (report.sent, report.unsent) == (0, 5)
    assert report.stopped is not None and "shared limiter" in report.stopped and "Redis" in report.stopped
    # A rerun once Redis is back sends them all.
    back = fleet_limiter(redis_server.url, "k", rpm=600)
    with MockGateway() as gw:
        rerun = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, limiter=back)
    assert rerun.ok == 5 and sorted(answered(output)) == [f"r{i}" for i in range(5)]


def test_a_job_whose_redis_goes_away_under_local_decides_at_its_share(tmp_path: Path, redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    requests = write_requests(tmp_path / "in.jsonl", "r", 20)
    limiter = fleet_limiter(redis_url, "k", on_error="local", max_qps=100)
    assert limiter.try_acquire(), "Redis seen once: the process knows its share of the fleet"
    redis_server.stop()
    try:
        with caplog.at_level("WARNING", logger="holysheep.redis"), MockGateway() as gw:
            report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, limiter=limiter)
    finally:
        redis_server.start()
    assert report.ok == 20 and report.stopped is None
    assert limiter.stats()["fallbacks"] >= 20, "decided by the local policy"
    outages = [record for record in caplog.records if "Redis unavailable" in record.getMessage()]
    assert len(outages) == 1, "the outage is logged once, on the holysheep.redis logger"


async def test_a_job_cancelled_while_waiting_in_the_fleets_line_leaves_nothing_held(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    holder = fleet_limiter(redis_url, "line", max_concurrency=2)
    assert holder.try_acquire(), "one slot held elsewhere in the fleet"
    limiter = fleet_limiter(redis_url, "line", max_concurrency=2)
    with MockGateway(latency=5.0) as gw:
        job = asyncio.ensure_future(
            hs.arun_batch(write_requests(tmp_path / "in.jsonl", "r", 10), tmp_path / "out.jsonl",
                          base_url=gw.base_url, api_key=KEY, limiter=limiter, max_concurrency=6)  # fmt: skip
        )
        deadline = time.monotonic() + 5.0
        while limiter.stats()["in_flight"] < 1 or limiter.stats()["waiting"] < 5:
            assert time.monotonic() < deadline, f"one request sent, five waiting in the fleet's line: {holder.stats()} {limiter.stats()}"
            await asyncio.sleep(0.01)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        holder.release()
        # Far sooner than a lease's TTL (15 s) or a place's in the line (2 s): given back, not expired.
        fresh = fleet_limiter(redis_url, "line", max_concurrency=2)
        deadline = time.monotonic() + 1.0
        while fresh.stats()["fleet_in_flight"] > 0 or limiter.stats()["waiting"] > 0:
            assert time.monotonic() < deadline, f"still held: {fresh.stats()}"
            await asyncio.sleep(0.01)
        assert fresh.try_acquire() and fresh.try_acquire(), "the next job gets the full concurrency"


def test_a_budget_shared_in_redis_stops_every_job_of_the_fleet_once_spent(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    budget = [hs.Limit(0.001, per="hour", unit="usd")]
    with MockGateway() as gw:
        first = hs.run_batch(write_requests(tmp_path / "in-1.jsonl", "a", 40), tmp_path / "out-1.jsonl", base_url=gw.base_url,
                             api_key=KEY, limiter=fleet_limiter(redis_url, "dollars", limits=budget), max_concurrency=1)  # fmt: skip
        second = hs.run_batch(write_requests(tmp_path / "in-2.jsonl", "b", 40), tmp_path / "out-2.jsonl", base_url=gw.base_url,
                              api_key=KEY, limiter=fleet_limiter(redis_url, "dollars", limits=budget), max_concurrency=1)  # fmt: skip
    assert 0 < first.sent < 40 and first.unsent == 40 - first.sent
    assert first.stopped is not None and "usd" in first.stopped
    assert (second.sent, second.unsent) == (0, 40), "the fleet's budget is spent for every job"
    assert second.stopped is not None and "usd" in second.stopped


def test_a_job_whose_redis_is_down_under_fail_open_sends_everything_uncounted(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    down = f"redis://127.0.0.1:{redis_server.port + 1}/0"
    limiter = hs.HolySheepRateLimiter(backend=hs.RedisBackend(down, on_error="fail_open", connect_timeout=0.2), key="k", rpm=600, max_concurrency=4)
    with MockGateway() as gw:
        report = hs.run_batch(write_requests(tmp_path / "in.jsonl", "r", 10), tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, limiter=limiter)
    assert report.ok == 10 and report.stopped is None
    assert limiter.stats()["fallbacks"] >= 10


def batch_command(requests: Path, output: Path, base_url: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "holysheep", "batch", str(requests), "-o", str(output), "--base-url", base_url,
            "--api-key", KEY, "--no-progress", *more]


def test_batch_commands_naming_one_key_share_its_limits_through_redis(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    fleet = ("--redis-url", redis_url, "--key", "cli-fleet", "--rpm", "20")
    with MockGateway(rpm=20) as gw:
        runs = [
            subprocess.Popen(batch_command(write_requests(tmp_path / f"in-{name}.jsonl", name, 10), tmp_path / f"out-{name}.jsonl", gw.base_url, *fleet),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in "ab"
        ]
        done = [run.communicate(timeout=25) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], done
        assert sum(record.status == 429 for record in gw.admission_log()) == 0
    assert sorted(answered(tmp_path / "out-a.jsonl") + answered(tmp_path / "out-b.jsonl")) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)])
    peer = fleet_limiter(redis_url, "cli-fleet", rpm=20)
    assert peer.stats()["remaining"] == {"20 requests per minute": 0}, "both jobs were counted under the key, in Redis"


def test_the_batch_command_refuses_a_key_without_a_redis_url_naming_it(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", "a", 1)
    done = subprocess.run(batch_command(requests, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1", "--key", "k"), capture_output=True, text=True)
    assert done.returncode == 2 and "key" in done.stderr and "--redis-url" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_dry_run_under_a_shared_limit_says_its_time_assumes_the_job_alone(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    requests = write_requests(tmp_path / "in.jsonl", "r", 30)
    limiter = fleet_limiter(redis_url, "plan", rpm=60)
    report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key=KEY,
                          limiter=limiter, dry_run=True)  # fmt: skip
    assert report.sent == 0 and report.unsent == 30
    assert report.planned_s == 0.0, "30 fit 60 a minute at once"
    assert report.stopped == "dry run", "why nothing was sent, and nothing more"
    assert report.notes == ("The limits are shared through Redis: the time assumes this job has them alone.",)
    assert str(report).splitlines()[1:] == list(report.notes), "the plan, then each note on a line of its own"
    local = hs.run_batch(requests, tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key=KEY,
                         limiter=hs.HolySheepRateLimiter(rpm=60), dry_run=True)  # fmt: skip
    assert local.notes == () and "Redis" not in str(local)


def test_a_dry_run_over_budget_says_how_many_the_budget_lets_go(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", "r", 30)
    report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key=KEY,
                          budget_usd=1e-9, dry_run=True)  # fmt: skip
    assert report.unsent < 30 and report.stopped == "dry run"
    assert report.notes == (
        f"The budget covers {report.unsent} of the 30 requests left to send: "
        "a run would stop after them and report the rest unsent.",
    )
    assert str(report).splitlines()[1:] == list(report.notes)


def test_a_dry_run_over_budget_under_a_shared_limit_gives_both_notes_in_order(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    requests = write_requests(tmp_path / "in.jsonl", "r", 30)
    report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key=KEY,
                          limiter=fleet_limiter(redis_url, "plan", rpm=60), budget_usd=1e-9, dry_run=True)  # fmt: skip
    assert [note.split(":")[0] for note in report.notes] == [
        f"The budget covers {report.unsent} of the 30 requests left to send",
        "The limits are shared through Redis",
    ]
    assert str(report).splitlines()[1:] == list(report.notes)
