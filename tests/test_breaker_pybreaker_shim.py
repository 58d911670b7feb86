"""pybreaker's semantics where they agree with ours (issue 19), through a small shim that speaks
pybreaker's API over `hs.CircuitBreaker`. These tests are written here, in the spirit of pybreaker's core
tests; they are not copied from it.

Where the two differ, on purpose:
- pybreaker raises ``CircuitBreakerError`` from the call that trips the breaker; ours raises that call's
  own error (the caller learns what went wrong) and fails fast from the next call on.
- pybreaker's ``open()`` opens for ``reset_timeout``; ours is ``isolate()``: open until ``reset()``.
- pybreaker counts every exception not excluded; our default counts only what the classification table
  says is the service's fault (so a caller's ``TypeError`` is neutral). The shim passes ``failure_on``,
  which makes ours count as pybreaker does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import holysheep as hs

RESET = 0.05


class ShimBreaker:
    """pybreaker's ``CircuitBreaker(fail_max, reset_timeout, exclude, listeners)`` over holysheep's."""

    def __init__(
        self,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        exclude: list[type[BaseException] | Callable[[BaseException], bool]] | None = None,
        state_changes: list[tuple[str, str]] | None = None,
    ) -> None:
        excluded = exclude or []

        def is_excluded(exc: BaseException) -> bool:
            return any(
                isinstance(exc, rule) if isinstance(rule, type) else rule(exc)  # pybreaker takes both
                for rule in excluded
            )

        def changed(breaker: hs.CircuitBreaker, old: str, new: str) -> None:
            if state_changes is not None:
                state_changes.append((old.replace("_", "-"), new.replace("_", "-")))

        self.breaker = hs.CircuitBreaker(
            failure_threshold=fail_max,
            recovery_timeout=reset_timeout,
            half_open_max_calls=1,  # pybreaker lets one trial through
            failure_on=lambda exc: not is_excluded(exc),
            on_state_change=changed,
        )

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.breaker.call_sync(fn, *args, **kwargs)

    @property
    def current_state(self) -> str:
        return self.breaker.state.replace("_", "-")

    @property
    def fail_counter(self) -> int:
        return int(self.breaker.stats()["consecutive_failures"])

    def close(self) -> None:
        self.breaker.reset()


def ok() -> bool:
    return True


def broken() -> None:
    raise NotImplementedError("down")


def trip(shim: ShimBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(NotImplementedError):
            shim.call(broken)


def test_a_successful_call_returns_its_value_and_keeps_the_counter_at_zero() -> None:
    shim = ShimBreaker()
    assert shim.call(ok) is True
    assert (shim.fail_counter, shim.current_state) == (0, "closed")


def test_a_failed_call_raises_its_own_error_and_counts_one() -> None:
    shim = ShimBreaker()
    trip(shim, 1)
    assert (shim.fail_counter, shim.current_state) == (1, "closed")


def test_a_success_after_failures_sets_the_counter_back_to_zero() -> None:
    shim = ShimBreaker()
    trip(shim, 2)
    shim.call(ok)
    assert shim.fail_counter == 0


def test_fail_max_failures_in_a_row_open_it_and_then_calls_fail_fast() -> None:
    shim = ShimBreaker(fail_max=3)
    trip(shim, 3)
    assert shim.current_state == "open"
    calls: list[int] = []
    with pytest.raises(hs.CircuitOpenError):
        shim.call(lambda: calls.append(1))
    assert calls == []


def test_after_reset_timeout_one_successful_trial_closes_it() -> None:
    shim = ShimBreaker(fail_max=1, reset_timeout=RESET)
    trip(shim, 1)
    time.sleep(RESET * 2)
    assert shim.current_state == "half-open"
    assert shim.call(ok) is True
    assert (shim.current_state, shim.fail_counter) == ("closed", 0)


def test_a_failed_trial_opens_it_again() -> None:
    shim = ShimBreaker(fail_max=1, reset_timeout=RESET)
    trip(shim, 1)
    time.sleep(RESET * 2)
    trip(shim, 1)
    assert shim.current_state == "open"


def test_only_one_trial_runs_while_half_open() -> None:
    shim = ShimBreaker(fail_max=1, reset_timeout=RESET)
    trip(shim, 1)
    time.sleep(RESET * 2)

    def nested_call() -> None:
        shim.call(ok)  # a second call while the trial runs

    with pytest.raises(hs.CircuitOpenError):
        shim.call(nested_call)


def test_excluded_exceptions_do_not_count_and_end_a_streak() -> None:
    shim = ShimBreaker(fail_max=2, exclude=[LookupError])
    trip(shim, 1)
    with pytest.raises(KeyError):
        shim.call(lambda: {}["missing"])
    assert shim.fail_counter == 0, "pybreaker treats an excluded error as a success"
    trip(shim, 1)
    assert shim.current_state == "closed"


def test_an_exclusion_may_be_a_predicate() -> None:
    shim = ShimBreaker(fail_max=1, exclude=[lambda exc: "harmless" in str(exc)])

    def harmless() -> None:
        raise RuntimeError("harmless hiccup")

    with pytest.raises(RuntimeError):
        shim.call(harmless)
    assert shim.current_state == "closed"


def test_close_by_hand_closes_an_open_breaker() -> None:
    shim = ShimBreaker(fail_max=1)
    trip(shim, 1)
    shim.close()
    assert (shim.current_state, shim.fail_counter) == ("closed", 0)
    assert shim.call(ok) is True


def test_listeners_hear_every_change_in_order() -> None:
    changes: list[tuple[str, str]] = []
    shim = ShimBreaker(fail_max=1, reset_timeout=RESET, state_changes=changes)
    trip(shim, 1)
    time.sleep(RESET * 2)
    shim.call(ok)
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
