"""Fakes shared by the tests: HTTP failures shaped like the openai SDK's and httpx's, a table row for errors,
and a breaker's failing and succeeding calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import pytest

import holysheep as hs


@dataclass
class FakeResponse:
    """The part of an ``httpx.Response`` that failure classification reads."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    def json(self) -> Any:
        if self.body is None:
            raise ValueError("no JSON body")
        return self.body


class FakeStatusError(Exception):
    """An HTTP error carrying its response, like ``httpx.HTTPStatusError``."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: Any = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = FakeResponse(status, headers or {}, body)


class Err:
    """An expected error in a parametrize table: the exception class and the field it names."""

    def __init__(self, field: str) -> None:
        self.field = field


def made_or_refused(make: Callable[..., Any], settings: dict[str, Any], expected: Err | None) -> Any:
    """``make(**settings)``; with ``expected``, checks instead that it is refused with a ConfigError
    naming that field, and returns the error."""
    if expected is None:
        return make(**settings)
    with pytest.raises(hs.ConfigError) as info:
        make(**settings)
    assert info.value.field == expected.field
    return info.value


def fail(breaker: hs.CircuitBreaker, error: BaseException | None = None) -> None:
    """One call through ``breaker`` that raises ``error`` (a 503 by default), as the caller sees it."""

    def broken() -> None:
        raise error if error is not None else FakeStatusError(503)

    with pytest.raises(type(error) if error is not None else FakeStatusError):
        breaker.call_sync(broken)


def succeed(breaker: hs.CircuitBreaker) -> str:
    """One call through ``breaker`` that succeeds."""
    return breaker.call_sync(lambda: "ok")
