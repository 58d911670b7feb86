"""Dollars per million tokens by model, for budgets: ``Limit(5.0, per="hour", unit="usd")``.

A request is priced at its estimated tokens before it is sent (so a budget stops a runaway loop before
the money is spent) and settled at the tokens the server reports. Prompt and completion tokens are
priced alike. Override or add models per client: ``AsyncHolySheep(prices={"my-model": 1.2})``. A model
missing from the table costs nothing against a budget. A price that is negative, NaN, infinite or not a
number is refused when the client is made: a budget must never be let through by a bad price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from holysheep.errors import ConfigError

__all__ = ["PRICES", "checked_prices"]

PRICES: dict[str, float] = {
    "gpt-4.1": 8.0,
    "claude-sonnet-4.5": 15.0,
    "gemini-2.5-flash": 2.50,
    "deepseek-v3.2": 0.42,
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
}


def checked_prices(prices: Mapping[str, float] | None) -> dict[str, float]:
    """`PRICES` with ``prices`` over them, every one checked.

        checked_prices({"my-model": 1.2})["my-model"]      # 1.2

    :param prices: dollars per million tokens by model name, or None for `PRICES` alone.
    :raises ConfigError: (``.field == "prices"``) not a mapping of model names to finite numbers of 0 or
        more; the message names the model.
    """
    if prices is None:
        return dict(PRICES)
    if not isinstance(prices, Mapping):
        expected = "a mapping of model name to dollars per million tokens"
        raise ConfigError(f"prices: must be {expected}, got {prices!r}", "prices")
    checked = dict(PRICES)
    for model, price in prices.items():
        if not isinstance(model, str):
            raise ConfigError(f"prices: model names must be str, got {model!r}", "prices")
        number = isinstance(price, (int, float)) and not isinstance(price, bool)
        if not (number and math.isfinite(price) and price >= 0):
            raise ConfigError(
                f"prices: the price of {model!r} must be a finite number of dollars per million tokens, 0 or more, "
                f"got {price!r}",
                "prices",
            )
        checked[model] = float(price)
    return checked
