from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import holysheep as hs
from conftest import Err


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"amount": 10, "per": "minute"}, "10 requests per minute"),
        ({"amount": 10, "per": "minutes"}, "10 requests per minute"),
        ({"amount": 5, "per": 10.0, "unit": "tokens"}, "5 tokens per 10s"),
        ({"amount": 1_000, "per": "day"}, "1000 requests per day"),
        ({"amount": 3, "per": 1, "algorithm": "gcra", "burst": 2}, "3 requests per second"),
        ({"amount": 0, "per": "second"}, Err(hs.ConfigError, "amount")),
        ({"amount": -1, "per": "second"}, Err(hs.ConfigError, "amount")),
        ({"amount": float("nan"), "per": "second"}, Err(hs.ConfigError, "amount")),
        ({"amount": 10, "per": "fortnight"}, Err(hs.ConfigError, "per")),
        ({"amount": 10, "per": -5.0}, Err(hs.ConfigError, "per")),
        ({"amount": 10, "per": "minute", "unit": "dollars"}, Err(hs.ConfigError, "unit")),
        ({"amount": 10, "per": "minute", "algorithm": "leaky"}, Err(hs.ConfigError, "algorithm")),
        ({"amount": 10, "per": "minute", "algorithm": "gcra", "burst": 0.5}, Err(hs.ConfigError, "burst")),
        ({"amount": 10, "per": "minute", "burst": 5}, Err(hs.ConfigError, "burst")),
    ],
)
def test_limit_construction(kwargs: dict[str, Any], expected: str | Err) -> None:
    if isinstance(expected, Err):
        with pytest.raises(expected.type, match=expected.match) as info:
            hs.Limit(**kwargs)
        assert getattr(info.value, "field", None) == expected.match
    else:
        assert str(hs.Limit(**kwargs)) == expected


def test_limit_exposes_its_parts() -> None:
    limit = hs.Limit(10_000, per="minute", unit="tokens")
    assert (limit.amount, limit.per, limit.unit, limit.algorithm, limit.burst) == (10_000, 60.0, "tokens", "exact", None)
    assert hs.Limit(5, per=1, algorithm="gcra", burst=3).burst == 3
    assert hs.Limit(10, per="minute") == hs.Limit(10, per=60)
    assert "per=60" in repr(limit)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        hs.Limit(0)


def test_a_guard_keeps_admissions_counted_past_the_period() -> None:
    assert hs.Limit(10, per="second").guard == 0.01
    assert hs.Limit(10, per="minute").guard == 0.05
    assert hs.Limit(10, per="minute", guard=0.0).guard == 0.0
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=1.0, guard=0.5)])
    assert lim.try_acquire()
    assert 1.4 < lim.time_until_ready() <= 1.5
    with pytest.raises(hs.ConfigError) as info:
        hs.Limit(10, per="minute", guard=-1.0)
    assert info.value.field == "guard"


def test_limit_takes_any_real_number_but_a_bool() -> None:
    assert hs.Limit(Fraction(5, 2), per=Decimal("1.5")) == hs.Limit(2.5, per=1.5)
    with pytest.raises(hs.ConfigError, match=r"amount: must be a finite number greater than 0, got True \(bool\)"):
        hs.Limit(True)
