"""A small program that uses the public API as a typed consumer; `make test` runs `mypy --strict` on it."""

from __future__ import annotations

import holysheep as hs


def describe(err: hs.RateLimitExceeded) -> str:
    return f"{err.limit}: retry after {err.retry_after}"


# --- the mock gateway ---
from holysheep.testing import AdmissionRecord, Faults, MockGateway  # noqa: E402


def refusals(gateway: MockGateway) -> list[AdmissionRecord]:
    with MockGateway(rpm=60, latency=(0.1, 0.2), faults=Faults(timeout=0.01), window_s=1.0) as other:
        assert other.peak_admitted("tokens", key="hs_a") >= 0
    return [record for record in gateway.admission_log() if record.status == 429]
