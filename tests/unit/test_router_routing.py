"""Routing decisions: named models, aliases, auto tiers, capability checks, the cascade."""

from __future__ import annotations

from typing import Any

import pytest

from tollway.common.catalog import parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, Tool
from tollway.mesh import errors
from tollway.router.classifier import Classification
from tollway.router.routing import decide

CATALOG = parse_catalog(
    {
        "providers": {"p": {"base_url": "http://p/v1"}},
        "models": {
            "s": {"provider": "p", "tier": "small", "context_window": 2000},
            "m": {"provider": "p", "tier": "medium", "capabilities": ["json"]},
            "l": {"provider": "p", "tier": "large", "capabilities": ["tools", "json"], "context_window": 100000},
        },
        "aliases": {"default": "m"},
        "routing": {"tiers": {"small": "s", "medium": "m", "large": "l"}, "cascade": False},
    },
    env={},
)


class Fixed:
    name = "fixed"

    def __init__(self, tier: str) -> None:
        self.tier = tier

    def classify(self, request: ChatRequest) -> Classification:
        return Classification(self.tier, 1.0, f"{self.tier} (test)")


def req(model: str = "auto", **kw: Any) -> ChatRequest:
    return ChatRequest(model, (ChatMessage("user", kw.pop("text", "hi")),), **kw)


def test_a_named_model_is_used_as_named() -> None:
    d = decide(req("l"), CATALOG, Fixed("small"))
    assert (d.model, d.tier, d.how, d.reason) == ("l", "large", "named", "requested by name")


def test_an_alias_says_so() -> None:
    d = decide(req("default"), CATALOG, Fixed("small"))
    assert d.model == "m" and "alias of m" in d.reason


def test_an_unknown_model_is_not_found_listing_the_known() -> None:
    with pytest.raises(errors.NotFound, match="known models: auto, default, l, m, s"):
        decide(req("zz"), CATALOG, Fixed("small"))


def test_a_named_model_without_a_needed_capability_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="model m does not support tools") as info:
        decide(req("m", tools=(Tool("t"),)), CATALOG, Fixed("small"))
    assert info.value.reason == "CAPABILITY_UNSUPPORTED"
    assert info.value.metadata == {"model": "m", "capability": "tools"}
    assert info.value.violations == [("tools", "model m does not support tools")]


def test_auto_uses_the_classified_tier_and_says_why() -> None:
    d = decide(req(), CATALOG, Fixed("medium"))
    assert (d.model, d.tier, d.how, d.classifier) == ("m", "medium", "auto", "fixed")
    assert d.reason == "medium (test)"


def test_auto_moves_up_when_the_tier_lacks_a_capability() -> None:
    d = decide(req(tools=(Tool("t"),)), CATALOG, Fixed("small"))
    assert d.model == "l" and "skipped small: s lacks tools" in d.reason and "using large" in d.reason


def test_auto_moves_up_when_the_prompt_does_not_fit() -> None:
    d = decide(req(text="word " * 3000), CATALOG, Fixed("small"))
    assert d.model == "m" and "context window" in d.reason


def test_cascade_tries_the_small_tier_first() -> None:
    d = decide(req(cascade=True), CATALOG, Fixed("large"))
    assert (d.model, d.how, d.cascade_from) == ("l", "cascade", "s")
    assert "cascade: trying s first" in d.reason


def test_no_cascade_when_small_cannot_serve_or_is_the_pick() -> None:
    assert (
        decide(req(cascade=True, response_format=ResponseFormat("json_object")), CATALOG, Fixed("large")).cascade_from
        == ""
    )
    assert decide(req(cascade=True), CATALOG, Fixed("small")).cascade_from == ""
    assert decide(req(cascade=False), CATALOG, Fixed("large")).cascade_from == ""


def test_auto_is_a_plain_alias_without_tiers() -> None:
    catalog = parse_catalog(
        {"providers": {"p": {}}, "models": {"x": {"provider": "p"}}, "aliases": {"auto": "x"}}, env={}
    )
    assert decide(req(), catalog, Fixed("large")).model == "x"
