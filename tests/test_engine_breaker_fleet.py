"""Batch jobs through a circuit breaker shared by a fleet in a real redis-server: one job's failures open
it for every job and process naming its key, an isolation anywhere stops a job saying why, and when
Redis is away the backend's on_error policy decides as it does for any other caller."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from batch_lines import answered, write_requests
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from holysheep.testing import Faults, MockGateway

pytestmark = pytest.mark.timeout(40)

KEY = "hs_test"
BREAKER_KEY = "gateway"
spawn = multiprocessing.get_context("spawn")

#: How stale a busy process's view of the breaker may be (src/backend/redis/breaker.rs,
#: SYNC_INTERVAL_NS), plus slack for a loaded 2-core machine.
STALENESS = 0.05
SLACK = 0.5


OnError = Literal["fail_closed", "fail_open", "local"]


def shared(url: str, on_error: OnError = "fail_closed", **settings: Any) -> hs.CircuitBreaker:
    """A breaker on its own RedisBackend under the fleet's key, as another process would have it."""
    return hs.CircuitBreaker(backend=hs.RedisBackend(url, on_error=on_error), key=BREAKER_KEY, **settings)


def patient_retry() -> hs.RetryPolicy:
    """Retries quickly and often, not told by Retry-After: only the breaker holds requests back."""
    return hs.RetryPolicy(max_attempts=50, base_delay=0.01, max_delay=0.05, max_elapsed=60.0, respect_retry_after=False)


def run_job_in_a_process(url: str, base_url: str, requests: Path, output: Path, out: "multiprocessing.Queue[tuple[int, int]]") -> None:
    breaker = shared(url, failure_threshold=3, recovery_timeout=0.3)
    report = hs.run_batch(requests, output, base_url=base_url, api_key=KEY, breaker=breaker, retry=patient_retry(), max_concurrency=4)
    out.put((report.ok, report.sent))


def test_a_job_whose_gateway_fails_opens_the_shared_breaker_and_another_process_fails_fast(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    requests, output = write_requests(tmp_path / "in.jsonl", "r", 20), tmp_path / "out.jsonl"
    observer = shared(redis_url, failure_threshold=3, recovery_timeout=0.3)
    # Every request answered 503 (Retry-After: the outage's end) for the first seconds of the gateway.
    with MockGateway(faults=Faults(outage=(0.0, 4.0))) as gw:
        out: multiprocessing.Queue[tuple[int, int]] = spawn.Queue()
        job = spawn.Process(target=run_job_in_a_process, args=(redis_url, gw.base_url, requests, output, out))
        job.start()
        try:
            deadline = time.monotonic() + 20.0
            while observer.state != "open" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert observer.state == "open", "the job's failures opened the breaker this process shares"
            started = time.monotonic()
            with pytest.raises(hs.CircuitOpenError):
                observer.call_sync(lambda: "never called")
            assert time.monotonic() - started < 0.05, "an open shared breaker fails fast"
            ok, sent = out.get(timeout=25)
        finally:
            job.join(timeout=5)
            if job.is_alive():
                job.kill()
        sent_in_outage = sum(record.fault == "outage" for record in gw.admission_log())
    assert (ok, sent) == (20, 20), "the breaker closed again after the outage and the job finished"
    assert sorted(answered(output)) == sorted(f"r{i}" for i in range(20))
    assert sent_in_outage < 20, f"{sent_in_outage} sent into the outage: the shared breaker held the rest back"


async def test_one_jobs_failures_open_the_breaker_for_another_job_sharing_it(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    failing_in = write_requests(tmp_path / "in-a.jsonl", "a", 50)
    healthy_in = write_requests(tmp_path / "in-b.jsonl", "b", 2_000)
    watcher = shared(redis_url, failure_threshold=3, recovery_timeout=30.0)
    with MockGateway(faults=Faults(server_error=1.0)) as failing, MockGateway(latency=0.01) as healthy:
        jobs = [
            asyncio.ensure_future(hs.arun_batch(
                source, tmp_path / f"out-{name}.jsonl", base_url=gw.base_url, api_key=KEY, max_concurrency=2,
                breaker=shared(redis_url, failure_threshold=3, recovery_timeout=30.0), retry=hs.RetryPolicy(max_attempts=1),
            ))
            for name, source, gw in (("a", failing_in, failing), ("b", healthy_in, healthy))
        ]
        try:
            deadline = time.monotonic() + 10.0
            while watcher.state != "open" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert watcher.state == "open", "the failing job opened the shared breaker"
            await asyncio.sleep(STALENESS + SLACK)
            held = len(healthy.admission_log())
            await asyncio.sleep(0.5)
            assert len(healthy.admission_log()) == held, "the healthy job sends nothing while the fleet's breaker is open"
            assert held < 2_000
            assert len(failing.admission_log()) < 50, "the failing job stopped sending once its failures opened it"
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)


def test_a_job_through_a_closed_shared_breaker_asks_redis_nothing_per_request(tmp_path: Path, redis_server: RedisServer, redis_url: str) -> None:  # noqa: F811
    requests = write_requests(tmp_path / "in.jsonl", "r", 2_000)
    breaker = shared(redis_url)
    redis_server.cli("CONFIG", "RESETSTAT")
    with MockGateway() as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, breaker=breaker)
    calls = redis_server.script_calls()
    assert report.ok == 2_000
    assert calls <= report.wall_s / STALENESS + 3, f"{calls} script calls for 2,000 requests in {report.wall_s:.3f} s"


def test_a_job_held_back_by_a_shared_breaker_goes_on_soon_after_another_process_resets_it(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    requests, output = write_requests(tmp_path / "in.jsonl", "r", 10), tmp_path / "out.jsonl"
    operator = shared(redis_url, failure_threshold=1, recovery_timeout=60.0)
    with pytest.raises(OSError):
        operator.call_sync(_raise_connection_error)
    assert operator.state == "open"
    reports: list[hs.BatchReport] = []
    with MockGateway() as gw:
        job = threading.Thread(target=lambda: reports.append(hs.run_batch(
            requests, output, base_url=gw.base_url, api_key=KEY, breaker=shared(redis_url, recovery_timeout=60.0),
        )))
        started = time.monotonic()
        job.start()
        time.sleep(0.5)
        assert gw.admission_log() == [], "open for a minute: nothing sent"
        operator.reset()
        job.join(timeout=10)
        took = time.monotonic() - started
    [report] = reports
    assert report.ok == 10
    assert took < 5.0, f"{took:.1f} s: the job saw the reset long before the minute was out"


def _raise_connection_error() -> None:
    raise ConnectionError("the gateway is down")


def test_a_job_whose_shared_breaker_another_process_isolated_sends_nothing_and_says_why(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    requests, output = write_requests(tmp_path / "in.jsonl", "r", 10), tmp_path / "out.jsonl"
    operator = shared(redis_url)
    operator.isolate()
    with MockGateway() as gw:
        report = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, breaker=shared(redis_url))
        assert gw.admission_log() == []
    assert (report.sent, report.unsent) == (0, 10)
    assert report.stopped is not None and "isolated" in report.stopped and "reset()" in report.stopped
    operator.reset()
    with MockGateway() as gw:
        rerun = hs.run_batch(requests, output, base_url=gw.base_url, api_key=KEY, breaker=shared(redis_url))
    assert (rerun.ok, rerun.stopped) == (10, None), "once reset, a rerun sends what was held back"


def test_isolating_the_shared_breaker_mid_job_stops_the_job_within_the_staleness(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    requests, output = write_requests(tmp_path / "in.jsonl", "r", 2_000), tmp_path / "out.jsonl"
    operator = shared(redis_url)
    reports: list[hs.BatchReport] = []
    with MockGateway(latency=0.01) as gw:
        job = threading.Thread(target=lambda: reports.append(hs.run_batch(
            requests, output, base_url=gw.base_url, api_key=KEY, breaker=shared(redis_url), max_concurrency=2,
        )))
        job.start()
        deadline = time.monotonic() + 10.0
        while len(gw.admission_log()) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        operator.isolate()
        isolated_at = len(gw.admission_log())
        job.join(timeout=10)
        assert not job.is_alive(), "an isolated breaker ends the job instead of holding it until reset()"
        sent = len(gw.admission_log())
    [report] = reports
    assert report.stopped is not None and "isolated" in report.stopped
    assert report.unsent > 0 and report.sent == sent
    # Two requests in flight, 10 ms each: what the cache's staleness lets through after the isolation.
    assert sent - isolated_at <= 2 * (STALENESS + SLACK) / 0.01, f"{sent - isolated_at} sent after the isolation"


def test_a_job_whose_breakers_redis_is_down_under_fail_closed_stops_saying_why(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    down = f"redis://127.0.0.1:{redis_server.port + 1}/0"  # nothing listens there
    requests = write_requests(tmp_path / "in.jsonl", "r", 10)
    with MockGateway() as gw:
        report = hs.run_batch(requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, breaker=shared(down, "fail_closed"))
        assert gw.admission_log() == []
    assert (report.sent, report.unsent) == (0, 10)
    assert report.stopped is not None and "shared breaker" in report.stopped and "Redis" in report.stopped


def test_a_job_whose_breakers_redis_is_down_under_fail_open_sends_everything_uncounted(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    down = f"redis://127.0.0.1:{redis_server.port + 1}/0"
    requests = write_requests(tmp_path / "in.jsonl", "r", 10)
    with MockGateway(faults=Faults(server_error=1.0)) as gw:
        report = hs.run_batch(
            requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, retry=hs.RetryPolicy(max_attempts=1),
            breaker=shared(down, "fail_open", failure_threshold=1, recovery_timeout=30.0),
        )
    assert (report.sent, report.failed, report.stopped) == (10, 10, None), "every request let through, no failure counted"


def test_a_job_whose_breakers_redis_is_down_under_local_is_held_back_by_this_process_alone(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    down = f"redis://127.0.0.1:{redis_server.port + 1}/0"
    requests = write_requests(tmp_path / "in.jsonl", "r", 20)
    breaker = shared(down, "local", failure_threshold=3, recovery_timeout=0.3)
    with MockGateway(faults=Faults(outage=(0.0, 1.0))) as gw:
        report = hs.run_batch(
            requests, tmp_path / "out.jsonl", base_url=gw.base_url, api_key=KEY, breaker=breaker, retry=patient_retry(), max_concurrency=4,
        )
        sent_in_outage = sum(record.fault == "outage" for record in gw.admission_log())
    assert report.ok == 20
    assert sent_in_outage < 20, f"{sent_in_outage} sent into the outage: the local stand-in held the rest back"
