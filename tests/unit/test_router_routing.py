"""Routing decisions: named models, aliases, auto tiers, capability checks, the cascade."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tollway.common.catalog import parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, Tool
from tollway.mesh import errors
from tollway.router.classifier import Classification
from tollway.router.engine import may_change_model
from tollway.router.routing import decide, missing_capabilities, parse_allow_fallback

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


def test_a_count_the_caller_sends_is_the_one_the_decision_uses() -> None:
    # "hi" fits every window as counted; told it is 2,500 tokens, the small tier (2,000) cannot take it.
    assert decide(req(), CATALOG, Fixed("small")).model == "s"
    d = decide(req(), CATALOG, Fixed("small"), prompt_tokens=2500)
    assert d.model != "s" and "s's context window (2000 tokens)" in d.reason


def test_the_router_counts_tool_schemas_as_prompt() -> None:
    # Under the window as text alone, over it with the tool's schema: providers bill both.
    small = parse_catalog(
        {
            "providers": {"p": {"base_url": "http://p/v1"}},
            "models": {"t": {"provider": "p", "capabilities": ["tools"], "context_window": 300}},
        },
        env={},
    )
    assert decide(req("t", tools=(Tool("t", "short"),)), small, Fixed("small")).model == "t"
    with pytest.raises(errors.InvalidArgument, match="context window"):
        decide(req("t", tools=(Tool("t", "word " * 400),)), small, Fixed("small"))


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


# --- the fallback policy and per-deployment capabilities ---------------------------------


def test_the_allow_fallback_header_is_a_strict_boolean() -> None:
    assert parse_allow_fallback(None) is None
    assert parse_allow_fallback(" True ") is True and parse_allow_fallback("0") is False
    with pytest.raises(errors.InvalidArgument, match="x-tollway-allow-fallback is 'maybe'") as info:
        parse_allow_fallback("maybe")
    assert info.value.violations == [("x-tollway-allow-fallback", "true or false")]


def test_another_model_answers_only_when_the_request_or_catalog_allows() -> None:
    named = decide(req("m"), CATALOG, Fixed("small"))
    auto = decide(req(), CATALOG, Fixed("small"))
    assert not may_change_model(req("m"), named, CATALOG)
    assert may_change_model(req("m", allow_model_fallback=True), named, CATALOG)
    assert may_change_model(req(), auto, CATALOG)  # auto names no model: its chain is the point
    permissive = dataclasses.replace(CATALOG, routing=dataclasses.replace(CATALOG.routing, model_fallback=True))
    assert may_change_model(req("m"), named, permissive)
    assert not may_change_model(req("m", allow_model_fallback=False), named, permissive)


def test_a_model_can_do_what_any_of_its_deployments_can() -> None:
    catalog = parse_catalog(
        {
            "providers": {"p": {"base_url": "http://p"}},
            "models": {
                "mixed": {
                    "provider": "p",
                    "capabilities": ["tools"],
                    "deployments": [{"name": "hosted"}, {"name": "selfhosted", "capabilities": []}],
                },
                "plain": {"provider": "p", "deployments": [{"name": "a", "capabilities": []}]},
            },
        },
        env={},
    )
    mixed = catalog.models["mixed"]
    hosted, selfhosted = mixed.deployments
    assert mixed.capabilities == {"tools"}
    assert mixed.deployment_capabilities(hosted) == {"tools"} and mixed.deployment_capabilities(selfhosted) == set()
    assert missing_capabilities(mixed, req("mixed", tools=(Tool("t"),))) == []
    assert missing_capabilities(catalog.models["plain"], req("plain", tools=(Tool("t"),))) == ["tools"]
