"""What a model's tokens cost, from the operator's configuration (prices change; nothing is built in).

Configured as JSON, per model, in US dollars per million tokens::

    {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075}}

A model without a price has an unknown cost (``None``), never a guessed one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from runtime.llm.protocol import Usage


@dataclass(frozen=True)
class Price:
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens
    cached_input: float | None = None  # USD per million cached input tokens; None: billed as input

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        dollars = (usage.input_tokens - cached) * self.input + cached * cached_rate + usage.output_tokens * self.output
        return dollars / 1_000_000


class Prices:
    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self.prices = dict(prices or {})

    def cost(self, model: str, usage: Usage) -> float | None:
        price = self.prices.get(model)
        return None if price is None else price.cost(usage)

    @classmethod
    def parse(cls, text: str) -> Prices:
        """Prices from their JSON text; a ValueError says what is wrong."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"LLM prices are not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError('LLM prices must be a JSON object: {"model": {"input": ..., "output": ...}}')
        prices: dict[str, Price] = {}
        for model, entry in raw.items():
            if not isinstance(entry, dict) or not {"input", "output"} <= entry.keys():
                raise ValueError(f"price of {model!r} needs 'input' and 'output' (USD per million tokens)")
            unknown = set(entry) - {"input", "output", "cached_input"}
            if unknown:
                raise ValueError(f"price of {model!r} has unknown fields: {', '.join(sorted(unknown))}")
            values: dict[str, Any] = {k: entry[k] for k in ("input", "output", "cached_input") if k in entry}
            for key, value in values.items():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value < 0
                ):
                    raise ValueError(f"price {key} of {model!r} must be a non-negative number")
            prices[model] = Price(**values)
        return cls(prices)
