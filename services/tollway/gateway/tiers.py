"""A request that asks for a routing tier instead of naming a model."""

from __future__ import annotations

from collections.abc import Mapping

from tollway.mesh.errors import InvalidArgument

TIER_NAMES = ("small", "medium", "large")


def model_for_tier(model: str, tier: str, tiers: Mapping[str, str]) -> str:
    """The model a request runs on: ``model`` as given without a tier, else the tier's model.

    Args:
        model: The request's model ("" or "auto" when it asks for a tier).
        tier: The requested tier, "" for none.
        tiers: The catalog's model for each tier (models.yaml ``routing.tiers``).

    Raises:
        InvalidArgument: A tier with a named model, an unknown tier, or one the catalog does
            not route; nothing was spent.
    """
    tier = tier.strip().lower()
    if not tier:
        return model
    if model.strip() and model.strip() != "auto":
        raise InvalidArgument(
            f"model {model!r} and tier {tier!r} were both given; give one: a tier picks its model",
            [("tier", "leave model empty or 'auto' with a tier")],
        )
    if tier not in TIER_NAMES:
        raise InvalidArgument(
            f"tier {tier!r} is not a tier; use {', '.join(TIER_NAMES)}", [("tier", "small, medium or large")]
        )
    target = tiers.get(tier)
    if not target:
        routed = ", ".join(sorted(tiers)) or "none"
        raise InvalidArgument(
            f"this catalog routes no model for tier {tier!r} (routed tiers: {routed}); name a model instead",
            [("tier", "not routed by this catalog")],
        )
    return target
