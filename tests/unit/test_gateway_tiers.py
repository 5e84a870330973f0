"""A request for a routing tier: which model answers, and each refusal naming what to fix."""

from __future__ import annotations

import pytest

from tollway.gateway.tiers import model_for_tier
from tollway.mesh.errors import InvalidArgument

TIERS = {"small": "smollm2", "large": "claude-sonnet-4"}


@pytest.mark.parametrize("model", ["", "auto", " auto "])
def test_a_tier_picks_the_catalogs_model_for_it(model: str) -> None:
    assert model_for_tier(model, "small", TIERS) == "smollm2"
    assert model_for_tier(model, " LARGE ", TIERS) == "claude-sonnet-4"


def test_no_tier_keeps_the_model_as_given() -> None:
    assert model_for_tier("gpt-4o-mini", "", TIERS) == "gpt-4o-mini"
    assert model_for_tier("", "", TIERS) == ""  # the model check names the missing model


@pytest.mark.parametrize(
    ("model", "tier", "says"),
    [
        ("gpt-4o-mini", "small", "both given"),
        ("auto", "huge", "is not a tier"),
        ("auto", "medium", "routes no model for tier 'medium' (routed tiers: large, small)"),
    ],
)
def test_each_refusal_names_the_tier(model: str, tier: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        model_for_tier(model, tier, TIERS)
    assert says in str(exc.value) and exc.value.violations[0][0] == "tier"


def test_a_catalog_without_tiers_says_so() -> None:
    with pytest.raises(InvalidArgument, match=r"routed tiers: none"):
        model_for_tier("", "small", {})
