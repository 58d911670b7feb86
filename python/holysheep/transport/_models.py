"""Model rules, checked before a request is sent: the models a client may use (``allowed_models=``).

A request asking for a model outside the list raises `ModelNotAllowed` and never reaches the limiter or
the server; one that names no model (``GET /models``) passes. Fallback models must be allowed too, or
the client is refused when made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from holysheep.errors import ConfigError, ModelNotAllowed

__all__ = ["AllowedModels", "allowed_models_of"]


class AllowedModels:
    """The models a client may ask for."""

    __slots__ = ("_names", "names")

    def __init__(self, names: Sequence[str]) -> None:
        #: In the order given, for messages.
        self.names = tuple(dict.fromkeys(names))
        self._names = frozenset(self.names)

    def check(self, model: str | None) -> None:
        """:raises ModelNotAllowed: ``model`` is not one of the names (None, no model, passes)."""
        if model is not None and model not in self._names:
            raise ModelNotAllowed(
                f"model {model!r} is not allowed for this client (allowed_models: {', '.join(self.names)}); not sent",
                model,
                self.names,
            )

    def __contains__(self, model: object) -> bool:
        return model in self._names


def allowed_models_of(allowed_models: object, fallback_models: Mapping[str, Sequence[str]] | None) -> AllowedModels | None:
    """The rule ``allowed_models`` makes, None for every model.

    :raises ConfigError: not a non-empty list of model names (``field == "allowed_models"``), or a
        fallback model that is not allowed (``field == "fallback_models"``).
    """
    if allowed_models is None:
        return None
    names = list(allowed_models) if isinstance(allowed_models, Sequence) and not isinstance(allowed_models, str) else []
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(
            'allowed_models: must be a non-empty list of model names, e.g. ["deepseek-v3.2"], or None, '
            f"got {allowed_models!r}",
            "allowed_models",
        )
    rule = AllowedModels(names)
    for model, fallbacks in (fallback_models or {}).items():
        refused = [name for name in fallbacks if name not in rule]
        if refused:
            raise ConfigError(
                f"fallback_models: {model!r} falls back to {', '.join(map(repr, refused))}, not in allowed_models",
                "fallback_models",
            )
    return rule
