"""Reading answers: the failure an error status stands for, a JSON answer that is not JSON, an answer
streamed as server-sent events, and the ``usage`` an answer reports.

A 200 whose body claims to be JSON but is not would make the SDK raise ``json.JSONDecodeError``, an
untyped error a pipeline cannot count on. Such an answer is read here as a 502 (the gateway passed on an
answer it should not have): classified by the table like one (retried, counted by the breaker), and, once
the retries run out, handed to the SDK as a 502 whose error body says what came, so the SDK raises its
own ``InternalServerError``. Only the body's first and last non-blank bytes are looked at (a JSON
document is an object or an array: ``{...}`` or ``[...]``): that catches what breaks in practice (an
empty or cut-off body, an HTML or plain-text page) without parsing every body twice; the SDK's own parse
remains the full check. (A streamed answer's events are checked in full as they pass:
`holysheep.transport._events`.)
"""

from __future__ import annotations

import json
import re
from typing import Any

from holysheep._holysheep import MOST_TOKENS_PER_ANSWER

__all__ = [
    "StatusFailure",
    "error_code",
    "invalid_json_error",
    "is_event_stream",
    "is_json",
    "is_malformed",
    "not_json",
    "usage_tokens",
]

#: How much of a response's end is kept to find its ``usage`` (it comes last in a body or a stream).
TAIL_BYTES = 2048

#: ``"total_tokens": <a plain integer>``: digits ending where the JSON value ends, so ``1e+308`` or
#: ``7.5`` are not read as 1 or 7. More digits than the bound has cannot be a count.
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d{1,%d})\s*[,}\]]' % len(str(MOST_TOKENS_PER_ANSWER)))

#: The status a JSON answer that is not JSON is passed on with: what the gateway gave was not an answer.
NOT_JSON_STATUS = 502

#: Whitespace JSON allows around a document.
_BLANKS = b" \t\r\n"


class StatusFailure(Exception):
    """A failing HTTP answer, classified like any HTTP error; the verdict it carries is what the retry
    policy, the breaker and the fallback read."""

    def __init__(self, status_code: int, headers: Any, error_code: str | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.code = error_code


def error_code(body: bytes) -> str | None:
    """The ``error.code`` of an OpenAI-shaped error body, if any."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def is_json(headers: Any) -> bool:
    """Whether an answer says its body is JSON, as the openai SDK reads it (the media type ends in
    ``json``: ``application/json``, ``application/problem+json``)."""
    return _media_type(headers).endswith(b"json")


def is_event_stream(headers: Any) -> bool:
    """Whether an answer says its body is a stream of server-sent events (``text/event-stream``)."""
    return _media_type(headers).lower() == b"text/event-stream"


def _media_type(headers: Any) -> bytes:
    """An answer's media type (its ``content-type`` without parameters), ``b""`` when it has none.

    Read from the (raw name, lower-cased name, value) list httpx and httpx2 headers keep, as the limiter
    reads them: half the cost of ``headers.get``, on every answer; ``get`` for headers without it."""
    items = getattr(headers, "_list", None)
    if items is None:
        return str(headers.get("content-type", "")).partition(";")[0].strip().encode("latin-1", "replace")
    for _, name, value in items:
        if name == b"content-type":
            return value.partition(b";")[0].strip()  # type: ignore[no-any-return]
    return b""


def is_malformed(request: Any, status: int, body: bytes) -> bool:
    """Whether a 2xx answer claiming JSON is not shaped as a JSON document (a 204, or an answer to a
    HEAD, has no body to check)."""
    if body[:1] == b"{" and body[-1:] == b"}":  # every good answer, at the cost of two slices
        return False
    has_body = 200 <= status < 300 and status != 204 and request.method != "HEAD"
    return has_body and not _looks_like_json(body)


def _looks_like_json(body: bytes) -> bool:
    """Whether ``body`` is shaped as a JSON document: ``{...}`` or ``[...]`` between blanks."""
    start, end = body[:64].lstrip(_BLANKS)[:1], body[-64:].rstrip(_BLANKS)[-1:]
    if not start or not end:  # blanks only so far: look at the whole (rare, never on the hot path)
        stripped = body.strip(_BLANKS)
        start, end = stripped[:1], stripped[-1:]
    return (start, end) in ((b"{", b"}"), (b"[", b"]"))


def not_json(lib: Any, request: Any, response: Any, body: bytes) -> Any:
    """The 502 passed on in place of a 2xx answer claiming JSON whose body is not: the original headers
    (request id, rate limits), an OpenAI-shaped error body saying what came."""
    shown = body[:80].decode("utf-8", "replace")
    message = (
        f"holysheep: the server answered {response.status_code} with a body that is not a JSON object or array "
        f"({len(body)} bytes: {shown!r}); passed on as {NOT_JSON_STATUS}"
    )
    dropped = {"content-length", "content-type", "content-encoding", "transfer-encoding"}
    headers = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in dropped]
    return lib.Response(NOT_JSON_STATUS, headers=headers, json=invalid_json_error(message), request=request)


def invalid_json_error(message: str) -> dict[str, Any]:
    """The OpenAI-shaped error holysheep passes on in place of an answer (or a streamed event) that is
    not JSON: the SDK raises it as its own typed error, with ``code == "invalid_json"``."""
    return {"error": {"message": message, "type": "invalid_response", "param": None, "code": "invalid_json"}}


def usage_tokens(tail: bytes, most: int) -> int | None:
    """The ``total_tokens`` an answer's end reports, or None when there is none or it cannot be real: not
    a plain integer, or above ``most`` (no answer counts that many; settling it would block every
    token-carrying request for a whole window)."""
    counts = _TOTAL_TOKENS.findall(tail)
    if not counts:
        return None
    tokens = int(counts[-1])
    return tokens if tokens <= most else None
