from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Err:
    """An expected error in a parametrize table: the exception type and a fragment of its message."""

    type: type[BaseException]
    match: str = ""


def max_in_any_window(times: Sequence[float], window: float) -> int:
    """The most events in any half-open interval of `window` seconds."""
    ordered = sorted(times)
    worst, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] + window <= at:
            start += 1
        worst = max(worst, end - start + 1)
    return worst
