"""What a failure means: retried or not, what it says to a circuit breaker, and whether another model
should be asked.

The decisions are one table in the Rust core (``src/core/classify.rs``). A failure is classified once,
when it happens, and carries its `Verdict` (kept on the exception): the retry policy, the breaker and the
transport's fallback models all read that verdict, none decides again. This module only reads an
exception into the table's terms, without importing any HTTP library: ``openai``, ``httpx`` and
``httpx2`` exceptions are recognised when their module has been imported (an exception of theirs cannot
exist otherwise), and any exception carrying ``status_code`` or ``response.status_code`` is read as an
HTTP failure.

=========================================================  =========  ===================  ===========
failure                                                    retried    counts for breaker   fallback
=========================================================  =========  ===================  ===========
HTTP 408, 5xx                                              yes        yes                  yes
HTTP 409, 429                                              yes        no (it answered)     yes
HTTP 429 with code ``insufficient_quota``                  no         no                   no
other HTTP statuses (400, 401, 403, 404, 422, ...)         no         no                   no
``x-should-retry: true`` / ``false`` header                overrides  unchanged            if retried
                                                                                           or counted
timeouts, connection errors and resets                     yes        yes                  yes
the caller's bugs (``TypeError``, ``ValueError``, ...)     no         neutral              no
holysheep's own refusals (``CircuitOpenError``, ...)       no         neutral              no
cancellation, ``KeyboardInterrupt``                        never      neutral              no
anything else                                              no         yes                  no
=========================================================  =========  ===================  ===========
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

from holysheep._holysheep import classify_failure, retry_after
from holysheep.errors import HolySheepError

__all__ = [
    "Verdict",
    "breaker_outcome",
    "classify_status",
    "is_retryable",
    "parse_retry_after",
    "server_retry_after",
    "verdict",
]


class Verdict(NamedTuple):
    """The table's answer for one failure."""

    #: Another attempt at the same request may pass.
    retry: bool
    #: ``"failure"`` (the service is unwell), ``"success"`` (it answered) or ``"neutral"`` (says nothing).
    breaker: str
    #: Another model may answer where this one failed (the model's service, not the request, was at fault).
    fallback: bool


#: Where an exception carries its verdict once classified.
_CARRIED = "_holysheep_verdict"

# Bugs in the calling code: retrying cannot fix them and they say nothing about the service.
_CALLER_ERRORS = (
    TypeError,
    ValueError,
    AttributeError,
    NameError,
    LookupError,
    AssertionError,
    NotImplementedError,
    ImportError,
    SyntaxError,
    ArithmeticError,
    HolySheepError,
)


def verdict(exc: BaseException) -> Verdict:
    """What ``exc`` means, by the table: classified the first time it is asked, then carried by ``exc``
    so the retry policy, the breaker and the fallback all read the same verdict."""
    carried = exc.__dict__.get(_CARRIED) if hasattr(exc, "__dict__") else None
    if carried is not None:
        return carried  # type: ignore[no-any-return]
    found = _classify(exc)
    try:
        setattr(exc, _CARRIED, found)
    except AttributeError:  # an exception refusing attributes: classified again if asked again
        pass
    return found


def is_retryable(exc: BaseException) -> bool:
    """Whether the default table retries ``exc``; cancellation and interrupts never are.

    Use it to extend the table: ``RetryPolicy(retry_on=lambda e: isinstance(e, MyError) or is_retryable(e))``.
    """
    return verdict(exc).retry


def breaker_outcome(exc: BaseException) -> str:
    """What ``exc`` means to a circuit breaker: ``"failure"``, ``"success"`` (the service answered) or
    ``"neutral"`` (it says nothing about the service)."""
    return verdict(exc).breaker


def classify_status(status: int, headers: Any = None, error_code: str | None = None) -> tuple[bool, str]:
    """``(retried, breaker_outcome)`` for an HTTP response, for code that sees responses, not exceptions.

    :param status: the HTTP status code.
    :param headers: the response headers (anything with ``items()``), for ``x-should-retry``.
    :param error_code: the body's error code, e.g. ``"insufficient_quota"``.
    """
    retry, breaker, _ = _status_verdict(status, headers, error_code)
    return retry, breaker


def _status_verdict(status: int, headers: Any, error_code: str | None) -> Verdict:
    should_retry = _header(headers, "x-should-retry") if headers is not None else None
    return Verdict(*classify_failure("status", status, should_retry, error_code))


def parse_retry_after(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds that response headers ask to wait, or ``None``.

    Reads ``retry-after-ms``, ``retry-after`` (seconds or an HTTP-date) and, for a spent quota,
    ``x-ratelimit-reset-requests`` / ``-tokens`` (``6m0s``, ``1h2m3.5s``). Garbage gives ``None``.

    :param headers: a mapping or anything with ``items()`` (``httpx.Headers``), names in any case.
    """
    return retry_after([(str(name), str(value)) for name, value in headers.items()])


def server_retry_after(exc: BaseException) -> float | None:
    """Seconds the failure asks to wait: its ``retry_after`` attribute, else its response's headers."""
    own = getattr(exc, "retry_after", None)
    if isinstance(own, (int, float)) and not isinstance(own, bool):
        return float(own)
    headers = _headers_of(exc)
    return parse_retry_after(headers) if headers is not None else None


def _classify(exc: BaseException) -> Verdict:
    if not isinstance(exc, Exception):
        return Verdict(*classify_failure("cancelled"))
    status = _status_of(exc)
    if status is not None:
        return _status_verdict(status, _headers_of(exc), _error_code(exc) if status == 429 else None)
    return Verdict(*classify_failure(_kind_of(exc)))


def _kind_of(exc: Exception) -> str:
    timeouts, connections = _library_errors()
    if isinstance(exc, (TimeoutError, *timeouts)):
        return "timeout"
    if isinstance(exc, (ConnectionError, *connections)):
        return "connection"
    if isinstance(exc, _CALLER_ERRORS):
        return "caller"
    return "unknown"


def _library_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Timeout and connection error classes of the HTTP libraries already imported."""
    timeouts: list[type[BaseException]] = []
    connections: list[type[BaseException]] = []
    openai = sys.modules.get("openai")
    if openai is not None:
        timeouts.append(openai.APITimeoutError)  # a subclass of APIConnectionError: checked first
        connections.append(openai.APIConnectionError)
    for name in ("httpx", "httpx2"):
        httpx = sys.modules.get(name)
        if httpx is not None:
            timeouts.append(httpx.TimeoutException)
            connections.extend((httpx.NetworkError, httpx.RemoteProtocolError))
    return tuple(timeouts), tuple(connections)


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(exc, "response", None), "status_code", None)
    is_http_status = isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599
    return status if is_http_status else None


def _headers_of(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(exc, "headers", None)
    return headers if hasattr(headers, "items") else None


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers.items():
        if str(key).lower() == name:
            return str(value)
    return None


def _error_code(exc: BaseException) -> str | None:
    """The error code of a 429's body: ``insufficient_quota`` means out of credit."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    body = getattr(exc, "body", None)
    if body is None:
        try:
            body = exc.response.json()  # type: ignore[attr-defined]
        except Exception:  # no response, not read yet, or not JSON: no code then
            return None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            return code if isinstance(code, str) else None
    return None
