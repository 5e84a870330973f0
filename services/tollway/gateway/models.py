"""The models a gateway client may ask for, as ``GET /v1/models`` lists them."""

from __future__ import annotations

from tollway.common.catalog import Catalog
from tollway.mesh.frozen import frozen


@frozen(slots=True)
class ListedModel:
    """One name a request may use.

    Attributes:
        name: The model or alias name.
        alias_of: The model an alias stands for ("" for a model's own name).
        provider: The provider of the model's first deployment.
        tier: The model's tier.
        context_window: Tokens the model reads at most.
        input_price_usd_micros_per_million: Price of a million prompt tokens, in micro-dollars.
        output_price_usd_micros_per_million: Price of a million answer tokens, in micro-dollars.
    """

    name: str
    alias_of: str
    provider: str
    tier: str
    context_window: int
    input_price_usd_micros_per_million: int
    output_price_usd_micros_per_million: int


def _usd_micros(usd: float) -> int:
    # Rounded, not truncated: catalog prices such as 0.15 are not exact in binary.
    return round(usd * 1e6)


def list_models(catalog: Catalog) -> list[ListedModel]:
    """Every model and alias of ``catalog``, sorted by name, with its prices."""
    out = []
    for name in catalog.names():
        model = catalog.resolve(name)
        assert model is not None, "catalog.names() only lists names it resolves"
        out.append(
            ListedModel(
                name=name,
                alias_of=model.name if model.name != name else "",
                provider=model.deployments[0].provider,
                tier=model.tier,
                context_window=model.context_window,
                input_price_usd_micros_per_million=_usd_micros(model.price.input_usd),
                output_price_usd_micros_per_million=_usd_micros(model.price.output_usd),
            )
        )
    return out
