"""Alerts: ``on_threshold`` calls back once per crossing of a limit's use (from threads and tasks, and
on a fleet's use through Redis), and a budget warns on the ``holysheep`` logger at 80%, 95% and 100%."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Any

import pytest
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs


class Calls:
    """Records each alert as (limiter, limit_name, used_fraction)."""

    def __init__(self) -> None:
        self.calls: list[tuple[hs.HolySheepRateLimiter, str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, limiter: hs.HolySheepRateLimiter, limit: str, used: float) -> None:
        with self._lock:
            self.calls.append((limiter, limit, used))


def test_a_threshold_calls_back_once_per_crossing_and_again_after_the_window_empties() -> None:
    lim, calls = hs.HolySheepRateLimiter(max_qps=10), Calls()
    lim.on_threshold(0.8, calls)
    for _ in range(7):
        assert lim.try_acquire()
    assert calls.calls == []
    for _ in range(3):
        assert lim.try_acquire()
    assert calls.calls == [(lim, "10 requests per second", 0.8)]
    time.sleep(1.1)
    for _ in range(8):
        assert lim.try_acquire()
    assert len(calls.calls) == 2, "fell back below, then crossed again"


def test_threads_crossing_together_alert_once() -> None:
    lim, calls = hs.HolySheepRateLimiter(rpm=400), Calls()
    lim.on_threshold(0.5, calls)
    start = threading.Barrier(8)

    def spend() -> None:
        start.wait()
        for _ in range(50):
            lim.acquire_blocking()

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(name, used) for _, name, used in calls.calls] == [("400 requests per minute", 0.5)]


async def test_tasks_crossing_together_alert_once_each_threshold() -> None:
    lim, calls = hs.HolySheepRateLimiter(rpm=100, tpm=1_000), Calls()
    lim.on_threshold(0.9, calls)

    async def one() -> None:
        async with lim.slot(tokens=10):
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(95)))
    assert sorted(name for _, name, _ in calls.calls) == ["100 requests per minute", "1000 tokens per minute"]


def test_a_budget_warns_on_the_holysheep_logger_at_80_95_and_100_percent(caplog: pytest.LogCaptureFixture) -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1.0, per="day", unit="usd")])
    caplog.set_level(logging.WARNING, logger="holysheep")
    # 10,000 tokens at $5 per million: $0.05 a request.
    for _ in range(20):
        lim._admit_blocking(10_000, None, 5.0).release()
    with pytest.raises(hs.BudgetExceeded):
        lim._admit_blocking(10_000, None, 5.0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "holysheep"]
    assert warnings == [
        "budget '1 usd per day' is 80% used",
        "budget '1 usd per day' is 95% used",
        "budget '1 usd per day' is 100% used",
    ]


def test_a_rate_limit_alone_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    lim = hs.HolySheepRateLimiter(max_qps=2)
    caplog.set_level(logging.WARNING, logger="holysheep")
    while lim.try_acquire():
        pass
    assert caplog.records == []


def test_a_callback_that_raises_is_reported_and_the_request_still_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    lim = hs.HolySheepRateLimiter(max_qps=1)

    def broken(limiter: hs.HolySheepRateLimiter, limit: str, used: float) -> None:
        raise RuntimeError("alert sink down")

    lim.on_threshold(1.0, broken)
    assert lim.try_acquire()
    assert len(reported) == 1 and isinstance(reported[0].exc_value, RuntimeError)


def test_a_callback_does_not_keep_its_limiter_alive() -> None:
    import gc
    import weakref

    lim = hs.HolySheepRateLimiter(max_qps=1)
    lim.on_threshold(0.5, lambda limiter, limit, used: None)
    gone = weakref.ref(lim)
    del lim
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize(
    ("fraction", "callback", "field"),
    [(0, print, "fraction"), (1.5, print, "fraction"), (-0.1, print, "fraction"), ("0.8", print, "fraction"), (0.8, "log", "callback")],
)
def test_on_threshold_refuses_bad_arguments_naming_them(fraction: Any, callback: Any, field: str) -> None:
    with pytest.raises(hs.ConfigError) as err:
        hs.HolySheepRateLimiter(max_qps=1).on_threshold(fraction, callback)
    assert err.value.field == field


def test_a_shared_limiter_alerts_on_the_fleets_use(redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url)
    here = hs.HolySheepRateLimiter(rpm=10, backend=backend, key="fleet")
    elsewhere = hs.HolySheepRateLimiter(rpm=10, backend=backend, key="fleet")
    calls = Calls()
    here.on_threshold(0.8, calls)
    for _ in range(7):
        assert elsewhere.try_acquire()
    assert here.try_acquire()
    assert [(name, used) for _, name, used in calls.calls] == [("10 requests per minute", 0.8)]
