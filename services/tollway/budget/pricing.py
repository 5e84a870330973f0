"""Prices from the model catalog, in integer pico-dollars per token, and what a call costs.

Costs are billionths of a dollar (nanos), rounded up from exact pico-dollar sums: a
gpt-4o-mini input token costs 150 nanos, so micro-dollars would round every small request
and make a budget of twenty requests admit nineteen or twenty-one. Every cost carries the
version of the price table it used; the version changes only when a price does (not when
a timeout in the catalog does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from tollway.common.catalog import Catalog, Model, Price
from tollway.mesh.frozen import frozen

PICOS_PER_NANO = 1000
AUTO = "auto"


@frozen
class Rates:
    """Pico-dollars per token (catalog prices are dollars per million tokens, so
    ``$0.15/1M`` is 150,000 picos a token; six decimals of a catalog price are kept)."""

    input_picos: int = 0
    output_picos: int = 0
    cached_input_picos: int = 0

    @classmethod
    def from_price(cls, price: Price) -> Rates:
        return cls(
            input_picos=round(price.input_usd * 1_000_000),
            output_picos=round(price.output_usd * 1_000_000),
            cached_input_picos=round(price.cached_input_usd * 1_000_000),
        )

    def cost_picos(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
        """The exact cost in pico-dollars; cached input tokens at their own rate."""
        plain = max(0, input_tokens - cached_input_tokens)
        return (
            plain * self.input_picos
            + min(cached_input_tokens, input_tokens) * self.cached_input_picos
            + output_tokens * self.output_picos
        )

    def cost_nanos(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
        """The cost in billionths of a dollar, rounded up (a budget is never undercharged)."""
        return ceil_div(self.cost_picos(input_tokens, output_tokens, cached_input_tokens), PICOS_PER_NANO)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers, exactly."""
    return -(-a // b)


@frozen
class Priced:
    """A model as the budget sees it: its name, rates and size limits."""

    name: str
    rates: Rates
    context_window: int
    max_output_tokens: int


class PriceTable:
    """The catalog's prices with a version that changes only when a price changes."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._rates = {name: Rates.from_price(m.price) for name, m in catalog.models.items()}
        canonical = json.dumps({n: dataclasses.astuple(r) for n, r in sorted(self._rates.items())})
        self.version = "p-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
        self._resolved: dict[str, Priced] = {}

    def resolve(self, name: str) -> Priced | None:
        """The model ``name`` names (aliases followed), or None when the catalog has none.

        ``auto`` is priced as the dearest model ``auto`` may route to (the routing tiers,
        or every model when there are none): the estimate must cover whichever answers.
        Known names are resolved once per table (a catalog reload makes a new table).
        """
        priced = self._resolved.get(name)
        if priced is None:
            priced = self._resolve(name)
            if priced is not None:
                self._resolved[name] = priced
        return priced

    def _resolve(self, name: str) -> Priced | None:
        if name == AUTO:
            names = list(self.catalog.routing.tiers.values()) or list(self.catalog.models)
            if not names:
                return None
            models = [self.catalog.models[n] for n in names]
            dearest = max(models, key=lambda m: (self._rates[m.name].output_picos, self._rates[m.name].input_picos))
            return Priced(
                AUTO,
                self._rates[dearest.name],
                max(m.context_window for m in models),
                max(m.max_output_tokens for m in models),
            )
        model: Model | None = self.catalog.resolve(name)
        if model is None:
            return None
        return Priced(model.name, self._rates[model.name], model.context_window, model.max_output_tokens)
