"""The transport under an HTTP client, split as httpx splits its own transports:

- `_pipeline`: every request passes limiter → breaker → send → classify → retry, and fallback models;
- `_steps`: what an exchange waits on, for asyncio clients and for blocking ones;
- `_streams`: the bodies of answers, which hold their admission (the concurrency slot) until read,
  closed or abandoned, and settle the token estimate; the request body that stamps its admission;
- `_events`: a streamed answer's server-sent events, checked as they pass, so that one the SDK could not
  parse ends the stream with an error event it raises as its own ``APIError``;
- `_library`: the `Transport` class made for httpx or httpx2.
"""

from __future__ import annotations

from holysheep.transport._library import http_library as http_library
from holysheep.transport._library import transport_class as transport_class
from holysheep.transport._pipeline import _Pipeline as _Pipeline
from holysheep.transport._steps import _run_blocking as _run_blocking

__all__ = ["Transport", "transport_class"]

#: The `Transport` for the HTTP library in use: httpx2 where it is installed, else httpx.
Transport = transport_class(http_library)
