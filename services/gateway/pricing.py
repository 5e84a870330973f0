"""What a call cost, from the catalog's prices per million tokens."""

from __future__ import annotations

from tollway.router.catalog import Catalog
from tollway.router.types import Usage


def cost_usd_micros(catalog: Catalog, model: str, usage: Usage) -> int:
    """The cost in millionths of a dollar; 0 for a model without a price.

    A price per million tokens in dollars is the price per token in micro-dollars, so the
    sum needs no scaling. Cached input tokens are billed at the cached price.
    """
    entry = catalog.resolve(model)
    if entry is None:
        return 0
    price = entry.price
    fresh_input = max(0, usage.input_tokens - usage.cached_input_tokens)
    return round(
        fresh_input * price.input_usd
        + usage.cached_input_tokens * price.cached_input_usd
        + usage.output_tokens * price.output_usd
    )
