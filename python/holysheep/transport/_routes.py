"""Which limiter admits a request: one for every request, one per route, or one per model.

    Transport(limiter=lim)                                             # every request
    Transport(limiter={"/embeddings": lim_e, "/chat/completions": lim_c, "*": lim_rest})
    Transport(limiter=KeyedLimiter(lambda model: HolySheepRateLimiter(rpm=60)))   # one per model

A route matches when the request's path ends with it (``/v1/embeddings`` matches ``"/embeddings"``); the
longest matching route wins, then ``"*"``; a request no route matches is sent without a limit. A
`KeyedLimiter` (alone or as a route's limiter) keeps one limiter per model, the body's ``model`` being the
key (``""`` for a request without one). It must make a `HolySheepRateLimiter` per key (a factory, or
limits that are not all GCRA): the transport holds each request's admission until its answer ends, which a
GCRA table of keys does not keep, so that one is refused with ConfigError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias, Union

from holysheep._keyed import KeyedLimiter
from holysheep._limiter import HolySheepRateLimiter
from holysheep.errors import ConfigError

__all__ = ["ANY_ROUTE", "LimiterSetting", "Routes", "routes_of"]

#: The route every request matches when no other does.
ANY_ROUTE = "*"

OneLimiter = Union[HolySheepRateLimiter, KeyedLimiter]
LimiterSetting: TypeAlias = Union[OneLimiter, Mapping[str, OneLimiter], None]

_EXPECTED = (
    'a HolySheepRateLimiter, a KeyedLimiter (one limiter per model), a dict from route to either '
    '(e.g. {"/embeddings": lim_e, "/chat/completions": lim_c, "*": lim_rest}) or None'
)


def _checked_one(limiter: object, route: str | None) -> OneLimiter:
    field, where = "limiter", "" if route is None else f" (route {route!r})"
    if isinstance(limiter, HolySheepRateLimiter):
        return limiter
    if isinstance(limiter, KeyedLimiter):
        if limiter._table is not None:
            raise ConfigError(
                f"{field}{where}: a KeyedLimiter over GCRA limits keeps no admission per request, which the transport "
                "holds until the answer ends (to settle its tokens and free its slot); give the KeyedLimiter a "
                "factory, e.g. KeyedLimiter(lambda model: HolySheepRateLimiter(rpm=60)), or exact limits",
                field,
            )
        return limiter
    raise ConfigError(f"{field}{where}: must be {_EXPECTED}, got {limiter!r}", field)


class Routes:
    """The limiter of each request, by the end of its path and its model."""

    __slots__ = ("_fallback", "_routes", "by_model", "known")

    def __init__(self, routes: Mapping[str, OneLimiter]) -> None:
        # Longest first: "/chat/completions" is looked at before "/completions".
        ordered = sorted(((r, lim) for r, lim in routes.items() if r != ANY_ROUTE), key=lambda item: -len(item[0]))
        self._routes: tuple[tuple[str, OneLimiter], ...] = tuple(ordered)
        self._fallback: OneLimiter | None = routes.get(ANY_ROUTE)
        every = [*routes.values()]
        #: Whether choosing needs the request's model (some route keeps a limiter per model).
        self.by_model = any(isinstance(limiter, KeyedLimiter) for limiter in every)
        #: The limiters known now (a KeyedLimiter's come as models are asked for).
        self.known: list[HolySheepRateLimiter] = [lim for lim in every if isinstance(lim, HolySheepRateLimiter)]

    def choose(self, path: str, model: str | None) -> HolySheepRateLimiter | None:
        """The limiter that admits a request to ``path`` asking ``model``; None for no limit.

        :raises RateLimitExceeded: a KeyedLimiter has no room for a new model (see `KeyedLimiter`).
        """
        chosen = self._fallback
        for route, limiter in self._routes:
            if path.endswith(route):
                chosen = limiter
                break
        if isinstance(chosen, KeyedLimiter):
            per_model = chosen[model or ""]
            assert isinstance(per_model, HolySheepRateLimiter), "a GCRA table is refused when made"
            return per_model
        return chosen

    def __repr__(self) -> str:
        shown = {route: limiter for route, limiter in self._routes}
        if self._fallback is not None:
            shown[ANY_ROUTE] = self._fallback
        return f"Routes({shown!r})"


def routes_of(limiter: object) -> Routes | None:
    """How ``limiter`` (a `Transport`'s setting) chooses: None when one limiter (or none) admits every
    request, else the `Routes`.

    :raises ConfigError: anything else, or a route or limiter that cannot work, named ``limiter``.
    """
    if limiter is None or isinstance(limiter, HolySheepRateLimiter):
        return None
    if isinstance(limiter, KeyedLimiter):
        return Routes({ANY_ROUTE: _checked_one(limiter, None)})
    if not isinstance(limiter, Mapping):
        raise ConfigError(f"limiter: must be {_EXPECTED}, got {limiter!r}", "limiter")
    for route in limiter:
        if not isinstance(route, str) or not (route == ANY_ROUTE or route.startswith("/")):
            raise ConfigError(
                f'limiter: each route must be the end of a path, starting with "/" (e.g. "/embeddings"), '
                f'or "{ANY_ROUTE}" for every other route; got {route!r}',
                "limiter",
            )
    return Routes({route: _checked_one(one, route) for route, one in limiter.items()})
