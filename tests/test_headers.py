"""Retry-After in every form, read from Python (the parsers themselves are property-tested in Rust)."""

from __future__ import annotations

import email.utils
import time

import pytest

from holysheep.classify import classify_status, parse_retry_after, server_retry_after
from fakes import FakeStatusError


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "60"}, 60.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "60"}, 0.25),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "1m"}, None),
        ({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "NaN"}, None),
        ({"retry-after": "inf"}, None),
        ({"content-type": "application/json"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after_reads_every_form(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers) == seconds


def test_http_date_in_the_future_is_the_time_until_it() -> None:
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    waited = parse_retry_after({"Retry-After": later})
    assert waited is not None and 115 <= waited <= 121


def test_headers_may_be_any_object_with_items() -> None:
    class Headers:
        def items(self) -> list[tuple[str, str]]:
            return [("RETRY-AFTER-MS", "1500")]

    assert parse_retry_after(Headers()) == 1.5


def test_server_retry_after_reads_the_response_headers_of_an_error() -> None:
    assert server_retry_after(FakeStatusError(429, {"retry-after": "7"})) == 7.0
    assert server_retry_after(FakeStatusError(503)) is None


def test_server_retry_after_prefers_an_errors_own_retry_after() -> None:
    class Throttled(Exception):
        retry_after = 2.5

    assert server_retry_after(Throttled()) == 2.5
    assert server_retry_after(ValueError("no delay here")) is None


def test_classify_status_reads_a_response_without_an_exception() -> None:
    assert classify_status(503) == (True, "failure")
    assert classify_status(503, {"X-Should-Retry": "false"}) == (False, "failure")
    assert classify_status(429, {}, "insufficient_quota") == (False, "success")
    assert classify_status(404) == (False, "success")
