from __future__ import annotations

import pytest

import holysheep as hs


@pytest.mark.parametrize(
    "error", [hs.RateLimitExceeded, hs.CircuitOpenError, hs.BudgetExceeded, hs.ConfigError]
)
def test_every_error_is_a_holysheep_error(error: type[Exception]) -> None:
    assert issubclass(error, hs.HolySheepError)


def test_rate_limit_exceeded_carries_when_what_and_how_much() -> None:
    lim = hs.HolySheepRateLimiter(max_qps=1)
    assert lim.try_acquire()
    with pytest.raises(hs.RateLimitExceeded) as info:
        lim.acquire_blocking(timeout=0.01)
    err = info.value
    assert err.limit == "1 requests per second"
    assert err.retry_after is not None and 0.9 < err.retry_after <= 1.01  # the period plus its guard
    assert err.remaining == 0


def test_config_error_names_the_field() -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.HolySheepRateLimiter(rpm=-1)
    assert info.value.field == "rpm"
    assert isinstance(info.value, ValueError)
