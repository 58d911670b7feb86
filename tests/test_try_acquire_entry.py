"""`HolySheepRateLimiter.try_acquire` is entered by CPython directly (src/py/fastcall.rs), not through
pyo3's wrapper: every way of calling it behaves as a pyo3 method would, on the class and on subclasses
(each of which gets a descriptor of its own, so that CPython specializes the call)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import holysheep as hs


def free() -> hs.HolySheepRateLimiter:
    return hs.HolySheepRateLimiter(max_qps=1_000)


def test_try_acquire_takes_tokens_by_position_by_name_or_not_at_all() -> None:
    lim = hs.HolySheepRateLimiter(tpm=1_000)
    assert lim.try_acquire()
    assert lim.try_acquire(400)
    assert lim.try_acquire(tokens=500)
    assert lim.try_acquire(None) and lim.try_acquire(tokens=None)
    assert not lim.try_acquire(tokens=200), "only 100 of the minute's 1,000 tokens are left"
    assert lim.stats()["admitted"] == 5 and lim.stats()["rejected"] == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1, 2), {}, "HolySheepRateLimiter.try_acquire() takes from 0 to 1 positional arguments but 2 were given"),
        ((), {"tok": 1}, "HolySheepRateLimiter.try_acquire() got an unexpected keyword argument 'tok'"),
        ((1,), {"tokens": 2}, "HolySheepRateLimiter.try_acquire() got multiple values for argument 'tokens'"),
        ((), {"tokens": 1, "timeout": 2}, "HolySheepRateLimiter.try_acquire() got an unexpected keyword argument 'timeout'"),
    ],
    ids=["two-positional", "unknown-keyword", "tokens-twice", "tokens-and-unknown"],
)
def test_a_call_that_matches_no_signature_raises_the_type_error_pyo3_gives(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    lim = free()
    with pytest.raises(TypeError) as info:
        lim.try_acquire(*args, **kwargs)
    assert str(info.value) == message
    assert lim.stats()["admitted"] == 0, "nothing was decided"


@pytest.mark.parametrize("tokens", ["5", 5.0, True, -1, 2**64, []], ids=repr)
def test_bad_tokens_by_position_raise_config_error_naming_tokens(tokens: Any) -> None:
    with pytest.raises(hs.ConfigError) as info:
        free().try_acquire(tokens)
    assert info.value.field == "tokens" and str(info.value).startswith("tokens: must be an int from 0 to")


def test_a_cost_that_can_never_pass_raises_from_either_path() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(10, per=60, unit="tokens")])
    with pytest.raises(hs.RateLimitExceeded):
        lim.try_acquire(11)
    assert lim.try_acquire(), "a request of no tokens passes the tokens limit"


def test_the_signature_and_doc_are_a_methods_of_the_class() -> None:
    method = hs.HolySheepRateLimiter.try_acquire
    assert str(inspect.signature(method)) == "(self, tokens=0)"
    assert method.__doc__ is not None and method.__doc__.startswith("Takes one request")
    assert method.__qualname__ == "HolySheepRateLimiter.try_acquire"


def test_an_object_of_another_type_is_refused_before_the_call() -> None:
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        hs.HolySheepRateLimiter.try_acquire(5)  # type: ignore[arg-type]


def test_each_subclass_gets_its_own_descriptor_and_decides_the_same() -> None:
    class Deeper(hs.TokenBucket):
        __slots__ = ()

    for cls in (hs.TokenBucket, hs.SlidingWindow, Deeper):
        assert vars(cls)["try_acquire"].__objclass__ is cls
    bucket = Deeper(rate=1, capacity=2)
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    assert bucket.stats()["admitted"] == 2 and bucket.stats()["rejected"] == 1


def test_a_subclass_that_overrides_try_acquire_keeps_its_own_and_reaches_ours_through_super() -> None:
    class Counting(hs.HolySheepRateLimiter):
        calls = 0

        def try_acquire(self, tokens: int = 0) -> bool:
            type(self).calls += 1
            return super().try_acquire(tokens)

    class Below(Counting):
        pass

    lim = Below(max_qps=1)
    assert [lim.try_acquire(), lim.try_acquire()] == [True, False]
    assert Below.calls == 2 and "try_acquire" not in vars(Below)


def test_class_keywords_reach_object_init_subclass_as_before() -> None:
    with pytest.raises(TypeError, match="takes no keyword arguments"):

        class Keyed(hs.HolySheepRateLimiter, flavour="x"):  # type: ignore[call-arg]
            pass
