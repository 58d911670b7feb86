"""Use-case profiles (DESIGN.md §4): the limiter, retry policy, breaker and batch size HolySheep's guides
recommend for an MVP, a RAG pipeline, a high-traffic agent and an enterprise deployment.

    client = hs.AsyncHolySheep(profile="rag")                        # 20 QPS, 40 in flight, ...
    client = hs.AsyncHolySheep(profile="rag", retry=hs.RetryPolicy(max_attempts=2))   # one field replaced
    client = hs.AsyncHolySheep(profile=hs.Profile.named("rag").replace(max_qps=25))

The table is here, in one place, rather than beside the tiers in ``src/core/tiers.rs``: a profile is
made of Python objects (a `RetryPolicy`, a breaker, the batch helpers' batch size), and a tier's limits
are the server's, which the core enforces. A profile given with ``tier=`` keeps the plan's limits and
adds its own rate and concurrency cap within them (the lower cap wins), so it never asks more than the
plan allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from holysheep._holysheep import _check_count, _check_positive
from holysheep._limiter import HolySheepRateLimiter
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.errors import ConfigError
from holysheep.retry import RetryPolicy

__all__ = ["PROFILES", "Profile"]

#: What a profile's breaker is: none, one for the client, or one per model.
BreakerKind = Literal["none", "one", "per_model"]
_BREAKER_KINDS = ("none", "one", "per_model")


@dataclass(frozen=True)
class Profile:
    """A starting point for a client's limiter, retries, breaker and batch size; override any field.

        rag = hs.Profile.named("rag")                 # or hs.PROFILES["rag"]
        client = hs.AsyncHolySheep(profile=rag.replace(max_concurrency=60))

    :param name: what it is called.
    :param max_qps: requests per second.
    :param max_concurrency: requests in flight at once.
    :param batch_size: documents per request for `batch_embed` when it is not given.
    :param retry: the `RetryPolicy` arguments, e.g. ``{"max_attempts": 3}``.
    :param breaker: ``"none"``, ``"one"`` (a `CircuitBreaker` for the client) or ``"per_model"`` (a
        `KeyedBreaker`: one failing model does not stop the others).
    :raises ConfigError: a value out of range, naming the field.
    """

    name: str
    max_qps: float
    max_concurrency: int
    batch_size: int
    retry: Mapping[str, Any] = field(default_factory=dict)
    breaker: BreakerKind = "one"

    def __post_init__(self) -> None:
        _check_positive("max_qps", self.max_qps)
        _check_count("max_concurrency", self.max_concurrency, 1, 2**32 - 1)
        _check_count("batch_size", self.batch_size, 1, 2**32 - 1)
        if self.breaker not in _BREAKER_KINDS:
            raise ConfigError(f"breaker: must be one of {', '.join(_BREAKER_KINDS)}, got {self.breaker!r}", "breaker")
        if not isinstance(self.retry, Mapping):
            raise ConfigError(f"retry: must be a dict of RetryPolicy arguments, got {self.retry!r}", "retry")
        try:
            self.retry_policy()
        except TypeError as unknown:
            raise ConfigError(f"retry: not RetryPolicy arguments ({unknown})", "retry") from None
        object.__setattr__(self, "retry", dict(self.retry))  # a dict the caller changes later does not change it

    @classmethod
    def named(cls, name: str) -> Profile:
        """The profile called ``name``: ``"mvp"``, ``"rag"``, ``"agent"`` or ``"enterprise"``.

        :raises ConfigError: another name (the message lists the known ones; ``field == "profile"``).
        """
        profile = PROFILES.get(name.strip().lower()) if isinstance(name, str) else None
        if profile is None:
            raise ConfigError(f"profile: unknown profile {name!r}; known profiles: {', '.join(PROFILES)}", "profile")
        return profile

    def replace(self, **changes: Any) -> Profile:
        """A copy with ``changes``, checked like a new one."""
        return dataclasses.replace(self, **changes)

    def limiter(self, tier: str | None = None) -> HolySheepRateLimiter:
        """A new limiter of ``max_qps`` and ``max_concurrency``; within a plan's limits when ``tier`` is
        given (its rpm, tpm and cooldown kept, the lower concurrency cap)."""
        if tier is None:
            return HolySheepRateLimiter(max_qps=self.max_qps, max_concurrency=self.max_concurrency)
        plan_cap = HolySheepRateLimiter.from_tier(tier).max_concurrency
        cap = self.max_concurrency if plan_cap is None else min(plan_cap, self.max_concurrency)
        return HolySheepRateLimiter(tier=tier, max_qps=self.max_qps, max_concurrency=cap)

    def retry_policy(self) -> RetryPolicy:
        """A new `RetryPolicy` of ``retry``."""
        return RetryPolicy(**self.retry)

    def circuit_breaker(self) -> CircuitBreaker | KeyedBreaker | None:
        """A new breaker of the ``breaker`` kind, None for ``"none"``."""
        if self.breaker == "none":
            return None
        return CircuitBreaker(name=self.name) if self.breaker == "one" else KeyedBreaker(name=self.name)


#: DESIGN.md §4's use-case profiles, each figure within the guides' range (given beside it).
PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        # startup, < 1,000 users: 5-10 QPS, 10-15 in flight, batches of 20-50; linear backoff (three
        # attempts, 1 s then 2 s apart: doubling from 1 s and adding 1 s agree for two retries); no breaker.
        Profile("mvp", max_qps=8, max_concurrency=12, batch_size=32,
                retry={"max_attempts": 3, "base_delay": 1.0, "jitter": "none"}, breaker="none"),
        # mid-size RAG pipeline: 15-30 QPS, 30-50 in flight, batches of 50-100; exponential backoff with
        # full jitter; one breaker with the default settings.
        Profile("rag", max_qps=20, max_concurrency=40, batch_size=100, retry={}, breaker="one"),
        # e-commerce agent, high traffic: 50-100 QPS, 100-200 in flight, batches of 100-200; exponential
        # with full jitter, quicker; a breaker per model.
        Profile("agent", max_qps=80, max_concurrency=150, batch_size=128,
                retry={"max_attempts": 4, "base_delay": 0.5, "max_delay": 30.0}, breaker="per_model"),
        # 10k+ users: 200+ QPS, 500+ in flight, custom batches; adaptive retries (decorrelated jitter,
        # at most 10% extra calls from retries) with fallback models (give fallback_models=); a breaker
        # per model, so the fallback takes over from an open one.
        Profile("enterprise", max_qps=200, max_concurrency=500, batch_size=256,
                retry={"max_attempts": 5, "base_delay": 0.5, "max_delay": 30.0, "jitter": "decorrelated",
                       "retry_budget": 0.1}, breaker="per_model"),
    )
}  # fmt: skip


def profile_of(profile: object) -> Profile | None:
    """``profile`` (a name or a `Profile`) as a `Profile`; None for none.

    :raises ConfigError: anything else (``field == "profile"``).
    """
    if profile is None or isinstance(profile, Profile):
        return profile
    if isinstance(profile, str):
        return Profile.named(profile)
    raise ConfigError(f"profile: must be a profile's name ({', '.join(PROFILES)}) or a hs.Profile, got {profile!r}", "profile")
