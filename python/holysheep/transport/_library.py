"""`Transport` classes made for an HTTP library (httpx or httpx2): the pipeline, with the library's own
byte streams under the held bodies."""

from __future__ import annotations

import importlib
from typing import Any

from holysheep.transport._pipeline import _Pipeline
from holysheep.transport._streams import _HeldAsyncStream, _HeldSyncStream, _StampedWhenSent, reclaimed_error

__all__ = ["http_library", "transport_class"]

TRANSPORT_DOC = """The transport under an HTTP client: every request passes limiter → breaker → send → classify → retry.

`Transport` sits where httpx (and httpx2, which the openai SDK 3.x is built on) expects a transport, so
everything the SDK sends — any endpoint, streaming, ``with_raw_response``, ``with_options`` — is limited,
guarded and retried in this one place:

- the limiter admits the request: one request, its estimated LLM tokens and one concurrency slot;
- the breaker lets it through (or ``CircuitOpenError`` is raised at once);
- the inner transport sends it;
- the answer is classified by the one table in ``holysheep.classify``: retried answers (429, 5xx, ...)
  and connection errors go round again after the retry policy's delay (``Retry-After`` obeyed);
- the response's stream keeps the slot until it is read to the end or closed, then settles the token
  estimate with the ``usage`` the server reported;
- a stream of server-sent events is checked as it passes: an event that is not JSON ends it with an
  ``error`` event (``code: invalid_json``), which the openai SDK raises as ``openai.APIError``.

Errors of the inner transport pass through unchanged (the SDK maps them); a final failing answer is
returned as it is, so the SDK raises its own typed error for it.
"""


def transport_class(lib: Any) -> type:
    """The `Transport` class for an HTTP library module (``httpx`` or ``httpx2``)."""
    reclaimed = {"reclaimed": reclaimed_error(lib)}
    namespace = {
        "lib": lib,
        "times_read_answers": lib.__name__ == "httpx",
        "async_stream": type("HeldAsyncStream", (_HeldAsyncStream, lib.AsyncByteStream), reclaimed),
        "sync_stream": type("HeldSyncStream", (_HeldSyncStream, lib.SyncByteStream), reclaimed),
        "stamped_body": type("StampedWhenSent", (_StampedWhenSent, lib.SyncByteStream, lib.AsyncByteStream), {}),
        "__module__": "holysheep.transport",
        "__doc__": TRANSPORT_DOC,
    }
    return type("Transport", (_Pipeline, lib.AsyncBaseTransport, lib.BaseTransport), namespace)


def _default_library() -> Any:
    """httpx2, which the openai SDK 3.x is built on, else httpx (openai 1.x and 2.x)."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


#: The HTTP library `Transport` is made for: httpx2 where it is installed, else httpx.
http_library = _default_library()
