"""A small program that uses the public API as a typed consumer; `make test` runs `mypy --strict` on it."""

from __future__ import annotations

import holysheep as hs


def describe(err: hs.RateLimitExceeded) -> str:
    return f"{err.limit}: retry after {err.retry_after}"
