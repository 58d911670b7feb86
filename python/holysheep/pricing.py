"""Dollars per million tokens by model, for budgets: ``Limit(5.0, per="hour", unit="usd")``.

A request is priced at its estimated tokens before it is sent (so a budget stops a runaway loop before
the money is spent) and settled at the tokens the server reports. Prompt and completion tokens are
priced alike. Override or add models per client: ``AsyncHolySheep(prices={"my-model": 1.2})``. A model
missing from the table costs nothing against a budget.
"""

from __future__ import annotations

__all__ = ["PRICES"]

PRICES: dict[str, float] = {
    "gpt-4.1": 8.0,
    "claude-sonnet-4.5": 15.0,
    "gemini-2.5-flash": 2.50,
    "deepseek-v3.2": 0.42,
}
