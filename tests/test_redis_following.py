"""What a server says is left (``x-ratelimit-remaining-*``) held against the fleet's count in Redis by the
core's one rule, as a local limiter holds it against its own: what we count where the server counted a
request, plus what it says is left, is what it allows; and what went up to the limit's guard after the
request counts with it, since the server may have counted it first (issue 19)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs


def shared(url: str, **limits: object) -> hs.HolySheepRateLimiter:
    return hs.HolySheepRateLimiter(backend=hs.RedisBackend(url), key="following", **limits)  # type: ignore[arg-type]


def heard(admission: Any, remaining: int) -> None:
    """The server's answer to the admission's request: `remaining` requests left in its minute."""
    raw = [(b"x-ratelimit-remaining-requests", str(remaining).encode()), (b"x-ratelimit-reset-requests", b"50s")]
    admission.observe(200, SimpleNamespace(raw=raw))


def rate_factor_after_the_logs_are_read(lim: hs.HolySheepRateLimiter, expected: float) -> float:
    """The rate in force once it is `expected`, or after a second: a cut is checked against the fleet's
    logs in the background first."""
    deadline = time.monotonic() + 1.0
    while lim.stats()["rate_factor"] != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    factor: float = lim.stats()["rate_factor"]
    return factor


def test_requests_admitted_just_after_one_and_counted_first_by_the_server_cut_nothing(redis_url: str) -> None:
    # One process: two requests admitted right after the first reached the server first; it counted
    # all three when it answered the first: 7 left of 10 is what it allows, all 10.
    alone = hs.HolySheepRateLimiter(rpm=10)
    first = alone._admit_blocking(0, None, 0.0)
    assert alone.try_acquire() and alone.try_acquire()
    heard(first, 7)
    assert alone.stats()["rate_factor"] == 1.0
    # A fleet, the same: Redis counted 1 when it admitted the first; the other two came after. It was
    # cut to 0.8 (1 counted + 7 left).
    lim, other = shared(redis_url, rpm=10), shared(redis_url, rpm=10)
    first = lim._admit_blocking(0, None, 0.0)
    assert other.try_acquire() and other.try_acquire()
    heard(first, 7)
    time.sleep(0.3)
    assert lim.stats()["rate_factor"] == 1.0


def test_a_server_that_allows_less_is_followed_with_what_went_just_after_counted(redis_url: str) -> None:
    lim, other = shared(redis_url, rpm=10), shared(redis_url, rpm=10)
    first = lim._admit_blocking(0, None, 0.0)
    assert other.try_acquire() and other.try_acquire()
    heard(first, 5)  # 3 counted where the server counted the first, 5 left: it allows 8 a minute
    assert rate_factor_after_the_logs_are_read(lim, 0.8) == 0.8
    assert sum(lim.try_acquire() for _ in range(10)) == 5, "8 in force, 3 counted by the fleet"


def test_what_went_later_than_the_guard_after_a_request_is_not_counted_with_it(redis_url: str) -> None:
    lim, other = shared(redis_url, rpm=10), shared(redis_url, rpm=10)
    first = lim._admit_blocking(0, None, 0.0)
    time.sleep(0.1)  # past rpm's guard (50 ms): the server counted these after the first
    assert other.try_acquire() and other.try_acquire()
    heard(first, 7)  # 1 counted where the server counted the first, 7 left: it allows 8 a minute
    assert rate_factor_after_the_logs_are_read(lim, 0.8) == 0.8


def test_what_the_server_says_is_left_is_held_against_the_fleets_count(redis_url: str) -> None:
    lim, other = shared(redis_url, rpm=10), shared(redis_url, rpm=10)
    assert all(other.try_acquire() for _ in range(3))
    first = lim._admit_blocking(0, None, 0.0)
    heard(first, 2)  # the fleet counted 4 in the window; 2 left: the server allows 6 a minute, not 10
    assert rate_factor_after_the_logs_are_read(lim, 0.6) == 0.6
    assert sum(lim.try_acquire() for _ in range(10)) == 2, "6 in force, 4 counted by the fleet"
    assert sum(other.try_acquire() for _ in range(10)) == 4, "a process that heard nothing keeps the configured 10"


def test_requests_admitted_within_the_guard_count_whether_or_not_they_share_a_log_entry(redis_url: str) -> None:
    # A 1 s window: admissions over 1.2 ms apart (1/1024 of the window and its guard) get entries of
    # their own; those within the 200 ms guard after the first still count with it.
    limit = hs.Limit(10, per=1.0, guard=0.2)
    lim, other = shared(redis_url, limits=[limit]), shared(redis_url, limits=[limit])
    first = lim._admit_blocking(0, None, 0.0)
    for _ in range(2):
        time.sleep(0.02)
        assert other.try_acquire()
    raw = [(b"x-ratelimit-remaining-requests", b"7"), (b"x-ratelimit-reset-requests", b"1s")]
    first.observe(200, SimpleNamespace(raw=raw))
    time.sleep(0.3)
    assert lim.stats()["rate_factor"] == 1.0
