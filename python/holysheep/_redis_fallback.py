"""What ``fail_open`` admits while Redis is away: admissions that count nothing. (The ``local`` policy
decides natively, at this process's share: see `_RedisLimiter.decide_locally`.)"""

from __future__ import annotations

__all__ = ["OpenAdmission"]


class OpenAdmission:
    """What ``fail_open`` admits while Redis is away: nothing to count, settle or return."""

    __slots__ = ("tokens",)
    wait = 0.0

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def settle(self, actual_tokens: int, wait: bool = True) -> None:
        self.tokens = actual_tokens

    def give_back(self, wait: bool = True) -> None:
        pass

    def release(self, wait: bool = True) -> None:
        pass
