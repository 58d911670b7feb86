"""A limiter decided in Redis behaves like the local one: try_acquire, acquire/release, async with,
with from threads, slot + settle, stats; bad URLs and credentials fail clearly, password hidden."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import Err, max_in_any_window
from redis_server import RedisServer, cluster_url, redis_server, redis_url, tls_redis  # noqa: F401  (fixtures)

import holysheep as hs
from holysheep._holysheep import _LoopChannel


def shared(url: str, key: str = "team-a", **limits: object) -> hs.HolySheepRateLimiter:
    lim = hs.HolySheepRateLimiter(backend=hs.RedisBackend(url), key=key, **limits)  # type: ignore[arg-type]
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is not None
    return lim


def admitted_at_us(lim: hs.HolySheepRateLimiter, tokens: int = 0) -> int | None:
    """Redis's time of an admission decided now, or None when refused; in whole microseconds: in float
    seconds an admission exactly one window after another could round into that window."""
    try:
        return lim._admit_blocking(tokens, 0.0, 0.0).at_us
    except hs.RateLimitExceeded:
        return None


def test_backend_is_chosen_by_passing_one(redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url, prefix="app", on_error="local", lease_ttl=3.0)
    lim = hs.HolySheepRateLimiter(rpm=60, backend=backend, key="team-a")
    assert type(lim) is hs.HolySheepRateLimiter and lim.backend is backend and lim.key == "team-a"
    assert (backend.prefix, backend.on_error, backend.lease_ttl) == ("app", "local", 3.0)
    assert repr(backend) == f"RedisBackend('{redis_url}', prefix='app', on_error='local')"
    alone = hs.HolySheepRateLimiter(rpm=60)
    assert type(alone) is hs.HolySheepRateLimiter and alone.backend is None and alone.key is None


@pytest.mark.parametrize("spin_wait", [0.0, 0.0001, 0.001])
def test_a_thread_decides_the_same_whether_it_waits_for_redis_awake_or_asleep(redis_url: str, spin_wait: float) -> None:
    backend = hs.RedisBackend(redis_url, spin_wait=spin_wait)
    assert backend.spin_wait == spin_wait
    lim = hs.HolySheepRateLimiter(max_qps=3, backend=backend, key=f"spin-{spin_wait}")
    assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert hs.RedisBackend(redis_url).spin_wait == 0.0001, "100 µs unless told otherwise"


def test_limiters_sharing_a_key_share_the_limit(redis_url: str) -> None:
    one, other = shared(redis_url, max_qps=3), shared(redis_url, max_qps=3)
    assert [one.try_acquire(), other.try_acquire(), one.try_acquire()] == [True, True, True]
    assert not other.try_acquire() and not one.try_acquire()
    assert shared(redis_url, key="team-b", max_qps=3).try_acquire(), "another key is another limit"
    assert one.stats()["rejected"] == 1


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://:hunter2@127.0.0.1:6379", Err(hs.ConfigError, "***")),
        ("redis://:hunter2@127.0.0.1:6379/notadb", Err(hs.ConfigError, "***")),
    ],
)
def test_bad_urls_are_config_errors_without_the_password(url: str, error: Err) -> None:
    with pytest.raises(error.type, match=error.match.replace("*", r"\*")) as raised:
        hs.RedisBackend(url)
    assert "hunter2" not in str(raised.value) and raised.value.field == "url"  # type: ignore[attr-defined]


def test_refused_credentials_are_a_config_error_at_first_use(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.cli("ACL", "SETUSER", "app", "on", ">right-password", "~*", "+@all")
    try:
        url = f"redis://app:hunter2@127.0.0.1:{redis_server.port}/0"
        lim = hs.HolySheepRateLimiter(max_qps=5, backend=hs.RedisBackend(url, on_error="fail_open"), key="k")
        with pytest.raises(hs.ConfigError) as raised:
            lim.try_acquire()
        assert "hunter2" not in str(raised.value) and "***" in str(raised.value)
        assert "hunter2" not in repr(lim) and "hunter2" not in repr(lim.backend)
        good = f"redis://app:right-password@127.0.0.1:{redis_server.port}/0"
        assert hs.HolySheepRateLimiter(max_qps=5, backend=hs.RedisBackend(good), key="k").try_acquire()
    finally:
        redis_server.cli("ACL", "DELUSER", "app")


def test_unreachable_redis_fails_closed_by_default() -> None:
    backend = hs.RedisBackend("redis://127.0.0.1:1/0", connect_timeout=0.2)
    lim = hs.HolySheepRateLimiter(max_qps=5, backend=backend, key="k")
    with pytest.raises(hs.BackendUnavailable, match="127.0.0.1:1"):
        lim.try_acquire()


def test_a_key_and_a_known_policy_are_required(redis_url: str) -> None:
    with pytest.raises(hs.ConfigError, match="key"):
        hs.HolySheepRateLimiter(max_qps=5, backend=hs.RedisBackend(redis_url))
    with pytest.raises(hs.ConfigError, match="backend"):
        hs.HolySheepRateLimiter(max_qps=5, key="team-a")
    with pytest.raises(hs.ConfigError, match="on_error: must be one of 'fail_closed', 'fail_open', 'local'"):
        hs.RedisBackend(redis_url, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(hs.ConfigError, match="lease_ttl"):
        hs.RedisBackend(redis_url, lease_ttl=0.0001)


def test_a_cost_no_limit_can_pass_raises_at_once(redis_url: str) -> None:
    lim = shared(redis_url, tpm=1_000)
    with pytest.raises(hs.RateLimitExceeded, match="never passes") as raised:
        lim.try_acquire(tokens=1_200)
    assert raised.value.retry_after is None


async def test_acquire_waits_for_the_instant_redis_reserved(redis_url: str) -> None:
    lim = shared(redis_url, limits=[hs.Limit(2, per=0.3)])
    started = time.monotonic()

    async def one() -> float:
        async with lim:
            return time.monotonic() - started

    waits = sorted(await asyncio.gather(*(one() for _ in range(4))))
    assert waits[1] < 0.1 and 0.28 < waits[2] < 0.6, waits
    assert lim.stats()["admitted"] == 4 and lim.stats()["in_flight"] == 0


async def test_acquire_raises_at_once_when_the_wait_exceeds_the_timeout(redis_url: str) -> None:
    lim = shared(redis_url, limits=[hs.Limit(1, per=10.0)])
    await lim.acquire()
    started = time.monotonic()
    with pytest.raises(hs.RateLimitExceeded) as raised:
        await lim.acquire(timeout=0.5)
    assert time.monotonic() - started < 0.2 and raised.value.retry_after is not None
    assert raised.value.retry_after > 9.0


async def test_cancelled_waiter_gives_its_reservation_back(redis_url: str) -> None:
    lim = shared(redis_url, limits=[hs.Limit(1, per=1.0)])
    assert lim.try_acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.05)  # the give-back goes out in the background
    assert 0.7 < lim.time_until_ready() <= 0.9, "the next one waits only for the first admission"


async def test_a_waiter_cancelled_while_redis_decides_gives_back_what_redis_granted(redis_url: str) -> None:
    lim, peer = shared(redis_url, key="gate", max_concurrency=1), shared(redis_url, key="gate", max_concurrency=1)
    for _ in range(20):
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)  # its decision is on its way to Redis
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    deadline = time.monotonic() + 1.0
    # Given back in the background: the leases granted, and the places in the fleet's line taken.
    while not peer.try_acquire():
        assert time.monotonic() < deadline, "a lease or a place in line of a cancelled waiter was not given back"
        await asyncio.sleep(0.01)
    assert lim.stats()["in_flight"] == 0 and lim.stats()["waiting"] == 0


async def test_every_shared_release_path_returns_its_lease_with_the_collector_off(redis_url: str) -> None:
    """Done, failed, cancelled while deciding or while waiting, a permit, the transport's admission:
    each gives its lease back by itself, never by Python's cyclic garbage collector."""
    lim, peer = shared(redis_url, key="no-gc", max_concurrency=2), shared(redis_url, key="no-gc", max_concurrency=2)

    async def hold(fail: bool) -> None:
        async with lim:
            await asyncio.sleep(0.002)
            if fail:
                raise ValueError("the request failed")

    gc.disable()
    try:
        outcomes = await asyncio.gather(*(hold(fail=i % 3 == 0) for i in range(30)), return_exceptions=True)
        assert sum(isinstance(outcome, ValueError) for outcome in outcomes) == 10
        async with lim.slot(tokens=10) as permit:
            permit.settle(5)
        admission = await lim._admit(0, None, 0.0)
        admission.release()
        waiters = [asyncio.ensure_future(lim.acquire()) for _ in range(6)]
        await asyncio.sleep(0)  # their decisions are on their way
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for _ in range(lim.stats()["in_flight"]):
            lim.release()  # those admitted before the cancel came
        deadline = time.monotonic() + 2.0
        while peer.stats()["fleet_in_flight"]:
            assert time.monotonic() < deadline, "a lease was not given back"
            await asyncio.sleep(0.01)
        assert lim.stats()["in_flight"] == 0 and lim.stats()["waiting"] == 0
    finally:
        gc.enable()


def test_a_shared_limit_without_a_concurrency_cap_holds_nothing_after_admitting(redis_url: str) -> None:
    lim = shared(redis_url, max_qps=1_000)
    assert all(lim.try_acquire() for _ in range(50))
    lim.acquire_blocking()
    lim.release()  # nothing to release: it does nothing, as for a local limiter
    assert lim._held == [] and lim.stats()["in_flight"] == 0


def test_release_without_an_acquire_is_the_same_config_error_as_a_local_limiters(redis_url: str) -> None:
    errors = []
    for lim in (shared(redis_url, max_concurrency=2), hs.HolySheepRateLimiter(max_concurrency=2)):
        with pytest.raises(hs.ConfigError) as raised:
            lim.release()
        errors.append((raised.value.field, str(raised.value)))
    assert errors[0] == errors[1] == ("release", "release: release() called more often than acquire()")


async def test_concurrency_leases_are_shared_and_waiters_get_them_on_release(redis_url: str) -> None:
    one, other = shared(redis_url, max_concurrency=2), shared(redis_url, max_concurrency=2)
    await one.acquire()
    await other.acquire()
    assert not one.try_acquire()
    waiter = asyncio.ensure_future(one.acquire(timeout=2.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    other.release()
    await asyncio.wait_for(waiter, 1.0)
    assert one.stats()["fleet_in_flight"] == 2 and one.stats()["in_flight"] == 2
    with pytest.raises(hs.RateLimitExceeded, match="concurrency slot"):
        await other.acquire(timeout=0.1)


def test_threads_wait_with_the_gil_released(redis_url: str) -> None:
    lim = shared(redis_url, limits=[hs.Limit(4, per=0.4)], max_concurrency=3)
    finished: list[float] = []
    started = time.monotonic()

    def work() -> None:
        with lim:
            time.sleep(0.01)
            finished.append(time.monotonic() - started)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(finished) == 8 and sorted(finished)[-1] > 0.4
    assert lim.stats()["fleet_in_flight"] == 0


async def test_slot_settles_from_asyncio_without_blocking_the_loop(redis_url: str) -> None:
    lim = shared(redis_url, tpm=1_000)
    async with lim.slot(tokens=900) as permit:
        permit.settle(100)
    await asyncio.sleep(0.05)  # the correction goes out in the background
    assert lim.stats()["remaining"] == {"1000 tokens per minute": 900}


def test_slot_settles_the_shared_token_count(redis_url: str) -> None:
    lim, peer = shared(redis_url, tpm=1_000), shared(redis_url, tpm=1_000)
    with lim.slot(tokens=900) as permit:
        assert not peer.try_acquire(tokens=200)
        permit.settle(300)
        assert permit.tokens == 300
    assert peer.stats()["remaining"] == {"1000 tokens per minute": 700}
    assert peer.try_acquire(tokens=600)


def test_admissions_in_any_window_stay_within_the_limit(redis_url: str) -> None:
    lim = shared(redis_url, limits=[hs.Limit(10, per=0.2)])
    deadline = time.monotonic() + 0.7
    times = []
    while time.monotonic() < deadline:
        at_us = admitted_at_us(lim)
        if at_us is not None:
            times.append(at_us)
    assert max_in_any_window(times, 200_000) == 10 and len(times) >= 30


def test_stats_show_this_process_and_the_fleet(redis_url: str) -> None:
    lim, peer = shared(redis_url, rpm=10, max_concurrency=5), shared(redis_url, rpm=10, max_concurrency=5)
    assert lim.try_acquire() and peer.try_acquire()
    stats = lim.stats()
    assert (stats["admitted"], stats["in_flight"], stats["fleet_in_flight"]) == (1, 1, 2)
    assert stats["remaining"] == {"10 requests per minute": 8} and stats["fleet_members"] == 2
    assert "team-a" in repr(lim)


async def test_keyed_limiter_makes_a_shared_limit_per_key(redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url)
    per_team = hs.KeyedLimiter(lambda team: hs.HolySheepRateLimiter(max_qps=2, backend=backend, key=f"team-{team}"))
    other_process = hs.KeyedLimiter(lambda team: hs.HolySheepRateLimiter(max_qps=2, backend=backend, key=f"team-{team}"))
    assert per_team.try_acquire("a") and other_process.try_acquire("a")
    assert not per_team.try_acquire("a"), "both instances share team a's limit"
    async with per_team["b"]:
        pass
    assert other_process.try_acquire("b")


def test_presets_take_a_backend_and_stay_what_they_are(redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url)
    bucket = hs.TokenBucket(rate=5, capacity=2, backend=backend, key="bucket")
    window = hs.SlidingWindow(limit=2, window_s=10, backend=backend, key="window")
    gate = hs.ConcurrencyLimiter(1, backend=backend, key="gate")
    assert type(bucket) is hs.TokenBucket and type(window) is hs.SlidingWindow and type(gate) is hs.ConcurrencyLimiter
    assert all(lim.backend is backend for lim in (bucket, window, gate))
    twin = hs.SlidingWindow(limit=2, window_s=10, backend=backend, key="window")
    assert window.try_acquire() and twin.try_acquire() and not window.try_acquire()
    assert gate.try_acquire() and not hs.ConcurrencyLimiter(1, backend=backend, key="gate").try_acquire()
    assert bucket.try_acquire() and bucket.try_acquire() and not bucket.try_acquire()


async def test_asyncio_over_a_unix_socket_goes_through_the_runtime(redis_server: RedisServer, redis_url: str) -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.3)], backend=hs.RedisBackend(redis_server.unix_url), key="unix")
    peer = shared(redis_url, key="unix", limits=[hs.Limit(2, per=0.3)])
    assert peer.try_acquire(), "the same server over TCP"
    started = time.monotonic()
    async with lim:
        pass
    async with lim:
        pass
    assert time.monotonic() - started > 0.25, "the third admission waited for the first to leave"
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_rediss_with_a_private_ca(tls_redis: tuple[str, Path]) -> None:
    url, ca = tls_redis
    lim = hs.HolySheepRateLimiter(max_qps=3, max_concurrency=5, backend=hs.RedisBackend(url, tls_ca_cert=ca), key="tls")
    assert lim.try_acquire()  # this thread's own TLS connection
    async with lim:  # asyncio through the runtime's TLS connection
        pass
    await asyncio.sleep(0.05)  # the release goes out in the background
    assert lim.stats()["fleet_in_flight"] == 1
    untrusted = hs.HolySheepRateLimiter(max_qps=3, backend=hs.RedisBackend(url, connect_timeout=0.5), key="tls")
    with pytest.raises(hs.BackendUnavailable):
        untrusted.try_acquire()  # the system does not trust the test CA


async def test_a_cluster_holds_each_limit_in_one_slot(cluster_url: str) -> None:
    backend = hs.RedisBackend(cluster_url, cluster=True)
    teams = {team: hs.HolySheepRateLimiter(max_qps=2, max_concurrency=5, backend=backend, key=team) for team in "abcdef"}
    peers = {team: hs.HolySheepRateLimiter(max_qps=2, max_concurrency=5, backend=backend, key=team) for team in "abcdef"}
    for team, lim in teams.items():  # keys spread over the three nodes
        assert lim.try_acquire() and peers[team].try_acquire()
        assert not lim.try_acquire(), f"team {team}: the limit is shared"
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(100, per=1.0)], max_concurrency=5, backend=backend, key="aio")
    async with lim:  # asyncio through the runtime's cluster connection
        assert lim.stats()["fleet_in_flight"] == 1


def test_event_loops_in_several_threads_share_one_limiter(redis_url: str) -> None:
    lim = shared(redis_url, limits=[hs.Limit(10_000, per=1.0)], max_concurrency=8)
    failures: list[BaseException] = []

    async def work() -> None:
        for _ in range(100):
            async with lim:
                await asyncio.sleep(0)

    def run() -> None:
        try:
            asyncio.run(work())
        except BaseException as err:  # reported by the assertion below
            failures.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert failures == [] and lim.stats()["admitted"] == 300


async def test_the_loop_opens_its_own_connection_off_the_loop_then_uses_it(redis_url: str) -> None:
    lim = shared(redis_url, max_qps=1_000)
    loop = asyncio.get_running_loop()
    await lim.acquire()  # through the runtime while the loop's connection opens
    lim.release()
    for _ in range(50):
        if isinstance(lim._loop_channel(loop), _LoopChannel):
            break
        await asyncio.sleep(0.01)
    await lim.acquire()
    lim.release()
    channel = lim._loop_channel(loop)
    assert isinstance(channel, _LoopChannel) and channel.is_open


def test_a_429_cuts_the_rate_this_process_enforces_in_redis(redis_url: str) -> None:
    lim, other = shared(redis_url, key="cut", rpm=10), shared(redis_url, key="cut", rpm=10)
    heard = lim._admit_blocking(0, None, 0.0)
    heard.observe(429, SimpleNamespace(raw=[]))
    heard.give_back()
    assert lim.stats()["rate_factor"] == 0.7
    assert sum(lim.try_acquire() for _ in range(10)) == 7, "10 configured, 7 in force"
    assert sum(other.try_acquire() for _ in range(10)) == 3, "a process that heard no 429 keeps the configured 10"


async def test_a_limit_shared_in_redis_set_above_the_gateways_follows_it(redis_url: str) -> None:
    from holysheep.testing import MockGateway

    # The hourly limit never binds; it makes a cut hold (a quarter of the longest period) past the run.
    limits = [hs.Limit(80, per=0.5, guard=0.02), hs.Limit(100_000, per="hour")]
    lim = shared(redis_url, key="above", limits=limits, max_concurrency=4)
    retry = hs.RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.5)
    messages = [{"role": "user", "content": "hi"}]
    with MockGateway(rpm=40, window_s=0.5, latency=0.005) as gw:
        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=lim, retry=retry) as client:
            results = await asyncio.gather(*(client.chat.completions.create(model="m", messages=messages) for _ in range(120)))
        assert gw.peak_admitted() <= 40
    stats = lim.stats()
    assert len(results) == 120 and stats["fleet_in_flight"] == 0
    # Its x-ratelimit-remaining (held against the fleet's count) may cut the rate before any 429 does.
    assert stats["rate_factor"] < 1.0, "the gateway's answers cut what this process asks Redis for"


@pytest.mark.parametrize("flavour", ["async", "blocking"])
async def test_the_openai_clients_keep_to_a_limit_shared_in_redis(redis_url: str, flavour: str) -> None:  # noqa: F811
    from holysheep.testing import MockGateway

    # Redis counts an admission when it decides it, which the gateway sees a little later (unlike a
    # local limiter's, it is not moved to the send): the guard covers that.
    lim = shared(redis_url, key=f"client-{flavour}", limits=[hs.Limit(4, per=0.5, guard=0.1)], max_concurrency=2)
    messages = [{"role": "user", "content": "hi"}]
    with MockGateway(latency=0.01) as gw:
        if flavour == "async":
            async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=lim) as client:
                await asyncio.gather(*(client.chat.completions.create(model="m", messages=messages) for _ in range(10)))
        else:
            with hs.HolySheep(base_url=gw.base_url, api_key="hs_test", limiter=lim) as blocking:
                for _ in range(10):
                    blocking.chat.completions.create(model="m", messages=messages)
        arrivals = sorted(record.at for record in gw.admission_log())
    assert len(arrivals) == 10 and max_in_any_window(arrivals, 0.5) <= 4
    assert lim.stats()["admitted"] == 10 and lim.stats()["fleet_in_flight"] == 0


# Issue 15: a usd budget on a limiter shared in Redis was ignored (30 of 30 gpt-4.1 requests sent).
async def test_a_usd_budget_shared_in_redis_stops_a_runaway_loop_before_the_request_is_sent(redis_url: str) -> None:
    from holysheep.testing import MockGateway

    messages = [{"role": "user", "content": "hello there"}]
    with MockGateway(latency=0.001) as gw:
        # As for the local limiter: each call is estimated at about 1,000 tokens of gpt-4.1 at $8 per
        # million ($0.008) before it is sent, then settled at the 22 tokens the gateway reports.
        budget = shared(redis_url, key="budget", limits=[hs.Limit(0.01, per="hour", unit="usd")])

        async def settled(calls: int) -> dict[str, float]:
            """What the budget has left, in dollars, once the settles of ``calls`` calls (sent in the
            background) landed."""
            for _ in range(200):
                remaining: dict[str, float] = budget.stats()["remaining"]
                if remaining == {"0.01 usd per hour": (10_000 - calls * 176) / 1e6}:
                    break
                await asyncio.sleep(0.01)
            return remaining

        async with hs.AsyncHolySheep(base_url=gw.base_url, api_key="hs_test", limiter=budget) as client:
            sent = 0
            with pytest.raises(hs.BudgetExceeded, match="would cross the budget"):
                for _ in range(100):
                    await client.chat.completions.create(model="gpt-4.1", messages=messages, max_tokens=1_000)
                    sent += 1
                    await settled(sent)
        assert sent == 11 and len(gw.admission_log()) == sent
    assert await settled(11) == {"0.01 usd per hour": (10_000 - 11 * 176) / 1e6}, "settled at $0.000176 each"
    assert budget.stats()["fleet_in_flight"] == 0


def test_a_shared_budget_refuses_at_once_instead_of_waiting_and_settles_in_dollars(redis_url: str) -> None:
    one = shared(redis_url, key="dollars", limits=[hs.Limit(100, per=1.0), hs.Limit(1.0, per="hour", unit="usd")])
    other = shared(redis_url, key="dollars", limits=[hs.Limit(100, per=1.0), hs.Limit(1.0, per="hour", unit="usd")])
    admitted = one._admit_blocking(100_000, None, 8.0)  # $0.80 of the fleet's $1.00
    started = time.monotonic()
    with pytest.raises(hs.BudgetExceeded, match=r"\$0\.800000 would cross the budget"):
        other._admit_blocking(100_000, None, 8.0)
    assert time.monotonic() - started < 0.5, "a budget refuses, it never makes a request wait"
    admitted.settle(50_000)  # the request really took half: $0.40
    assert other.stats()["remaining"] == {"100 requests per second": 99, "1 usd per hour": 0.6}
    other._admit_blocking(50_000, None, 8.0)
    assert other.stats()["remaining"]["1 usd per hour"] == 0.2


def test_a_sentinel_url_is_read_at_construction_its_password_hidden_and_without_a_service_refused() -> None:
    backend = hs.RedisBackend("redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:26380/mymaster/0")
    assert backend.url == "redis+sentinel://:***@10.0.0.1,10.0.0.2:26380/mymaster/0" and "s3cret" not in repr(backend)
    with pytest.raises(hs.ConfigError) as refused:
        hs.RedisBackend("redis+sentinel://10.0.0.1:26379")
    assert refused.value.field == "url" and "must name the service" in str(refused.value)
