"""The catalog parses strictly, builds chains, prices calls and reloads safely."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway.common.catalog import CatalogError, CatalogSource, Price, load_catalog, parse_catalog

ROOT = Path(__file__).resolve().parents[2]


def doc(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "providers": {
            "oa": {"wire": "openai_compat", "base_url": "${OA_URL:-http://oa/v1}", "api_key_env": "OA_KEY"},
            "an": {"wire": "anthropic", "base_url": "http://an", "api_key_env": "AN_KEY", "timeout_s": 5},
            "local": {"wire": "openai_compat", "base_url": "http://local/v1"},
        },
        "models": {
            "big": {
                "provider": "oa",
                "tier": "large",
                "capabilities": ["tools", "json"],
                "fallbacks": ["mid", "claude"],
                "deployments": [{"name": "a", "weight": 3}, {"name": "b", "api_key_env": "OA_KEY_2"}],
                "price_per_1m_tokens": {"input": 2.5, "output": 10, "cached_input": 1.25},
                "limits": {"rpm": 100, "tpm": 1000},
            },
            "mid": {"provider": "oa", "tier": "medium", "fallbacks": ["claude"]},
            "claude": {"provider": "an", "upstream_model": "claude-x", "tier": "large"},
            "tiny": {"provider": "local", "tier": "small"},
        },
        "routing": {"tiers": {"small": "tiny", "large": "big"}, "last_resort": "tiny"},
    }
    base.update(extra)
    return base


def test_the_shipped_catalog_parses() -> None:
    catalog = load_catalog(ROOT / "deploy" / "models.yaml", env={})
    assert catalog.routing.tiers and catalog.routing.last_resort in catalog.models
    assert catalog.version and len(catalog.version) == 12


def test_the_gateway_test_fixture_format_still_parses() -> None:
    raw = yaml.safe_load(
        "providers:\n  fakeai: {wire: openai_compat, base_url: 'http://x/v1', timeout_s: 10}\n"
        "models:\n  fake-ok: {provider: fakeai}\n  smollm2: {provider: fakeai, upstream_model: smollm2}\n"
    )
    catalog = parse_catalog(raw, env={})
    d = catalog.models["fake-ok"].deployments[0]
    assert (d.key, d.upstream_model, d.timeout_s) == ("fakeai/fake-ok/default", "fake-ok", 10.0)


def test_deployments_inherit_and_override_the_provider() -> None:
    catalog = parse_catalog(doc(), env={"OA_KEY": "k1", "OA_URL": "http://proxy/v1"})
    a, b = catalog.models["big"].deployments
    assert (a.name, a.weight, a.api_key, a.base_url, a.wire) == ("a", 3.0, "k1", "http://proxy/v1", "openai_compat")
    assert (b.name, b.api_key, b.missing_key) == ("b", "", True)
    claude = catalog.models["claude"].deployments[0]
    assert (claude.upstream_model, claude.timeout_s, claude.wire, claude.missing_key) == (
        "claude-x",
        5.0,
        "anthropic",
        True,
    )


def test_chain_is_primary_then_fallbacks_then_last_resort_each_once() -> None:
    catalog = parse_catalog(doc(), env={})
    assert [m.name for m in catalog.chain(catalog.models["big"])] == ["big", "mid", "claude", "tiny"]
    assert [m.name for m in catalog.chain(catalog.models["tiny"])] == ["tiny"]


def test_prices_limits_and_capabilities() -> None:
    big = parse_catalog(doc(), env={}).models["big"]
    assert big.capabilities == {"tools", "json"} and (big.limits.rpm, big.limits.tpm) == (100, 1000)
    # 1000 plain input at 2.5 + 1000 cached at 1.25 + 100 output at 10, in micro-dollars.
    assert big.price.cost_usd_micros(2000, 100, cached_input_tokens=1000) == 2500 + 1250 + 1000


def test_cache_writes_cost_the_input_price_unless_set() -> None:
    assert Price(input_usd=3).cost_usd_micros(100, 0, cache_write_input_tokens=100) == 300
    assert Price(input_usd=3, cache_write_input_usd=3.75).cost_usd_micros(100, 0, cache_write_input_tokens=100) == 375


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["models"]["big"].update(colour="red"), "models.big.colour: unknown key"),
        (lambda d: d["models"]["big"].update(tier="huge"), "models.big.tier: 'huge' is not a tier"),
        (lambda d: d["models"]["big"].update(fallbacks=["nope"]), "models.big.fallbacks: 'nope' is not a model"),
        (lambda d: d["models"]["mid"].update(provider="zz"), "models.mid.provider: 'zz' is not a provider"),
        (lambda d: d["providers"]["oa"].update(wire="grpc"), "providers.oa.wire: 'grpc' is not a wire format"),
        (
            lambda d: d["models"]["big"].update(capabilities=["vision"]),
            "models.big.capabilities[0]: 'vision' is not a capability",
        ),
        (lambda d: d["routing"]["tiers"].update(medium="ghost"), "routing.tiers.medium: 'ghost' is not a model"),
        (
            lambda d: d["models"]["big"]["deployments"][0].update(weight=-1),
            "models.big.deployments[0].weight: -1 is less than 0",
        ),
        (lambda d: d["models"]["big"]["deployments"][1].update(name="a"), "'a' is used twice"),
        (lambda d: d["routing"].update(cascade="yes"), "routing.cascade: 'yes' is not true or false"),
    ],
)
def test_errors_name_the_key_and_the_value(mutate: Any, message: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(CatalogError, match=re.escape(message)):
        parse_catalog(d, env={})


def test_reload_swaps_in_a_good_file_and_keeps_the_old_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc()))
    source = CatalogSource(path, env={})
    first = source.current
    assert source.reload_if_changed() is False

    changed = doc()
    changed["models"]["extra"] = {"provider": "local"}
    path.write_text(yaml.safe_dump(changed))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert source.reload_if_changed() is True
    assert "extra" in source.current.models and source.current.version != first.version

    good = source.current
    path.write_text("models: [not, a, mapping")
    with pytest.raises(CatalogError):
        source.reload_if_changed()
    assert source.current is good and "not valid YAML" in source.last_error


# --- timeouts and the fallback policy ----------------------------------------------------


def test_timeouts_inherit_from_the_provider_and_default_when_unset() -> None:
    raw = doc()
    raw["providers"]["an"].update({"connect_timeout_s": 0.5, "first_token_timeout_s": 3, "stall_timeout_s": 4})
    raw["models"]["claude"]["deployments"] = [{"name": "x", "stall_timeout_s": 9}]
    catalog = parse_catalog(raw, env={})
    claude = catalog.models["claude"].deployments[0]
    assert (claude.connect_timeout_s, claude.ttft_timeout_s, claude.stall_timeout_s) == (0.5, 3.0, 9.0)
    tiny = catalog.models["tiny"].deployments[0]
    assert (tiny.connect_timeout_s, tiny.ttft_timeout_s, tiny.stall_timeout_s) == (2.0, 60.0, 30.0)


def test_streaming_whole_answers_is_off_unless_a_provider_or_deployment_asks() -> None:
    raw = doc()
    raw["providers"]["an"]["stream_whole_answers"] = True
    raw["models"]["claude"]["deployments"] = [{"name": "x"}, {"name": "y", "stream_whole_answers": False}]
    catalog = parse_catalog(raw, env={})
    x, y = catalog.models["claude"].deployments
    assert (x.stream_whole_answers, y.stream_whole_answers) == (True, False)
    assert not catalog.models["tiny"].deployments[0].stream_whole_answers


def test_streaming_whole_answers_must_be_true_or_false() -> None:
    raw = doc()
    raw["providers"]["oa"]["stream_whole_answers"] = "yes"
    with pytest.raises(CatalogError, match=r"providers\.oa\.stream_whole_answers"):
        parse_catalog(raw, env={})


@pytest.mark.parametrize("key", ["connect_timeout_s", "stall_timeout_s"])
def test_a_timeout_must_be_positive_and_is_named(key: str) -> None:
    raw = doc()
    raw["providers"]["oa"][key] = 0
    with pytest.raises(CatalogError, match=rf"providers\.oa\.{key}: 0 is less than 0\.001"):
        parse_catalog(raw, env={})


def test_the_shipped_catalog_bounds_every_wait_and_keeps_requests_on_their_model() -> None:
    catalog = load_catalog(ROOT / "deploy" / "models.yaml", env={})
    assert catalog.routing.model_fallback is False
    local = catalog.models["smollm2"].deployments[0]
    # The local model is on this machine: a stall is told apart from work within seconds.
    assert local.ttft_timeout_s <= 30 and local.stall_timeout_s <= 10 and local.connect_timeout_s <= 1
    for d in catalog.deployments():
        assert d.ttft_timeout_s < 60 and d.stall_timeout_s <= 30, d.key


def test_model_fallback_is_read_strictly() -> None:
    with pytest.raises(CatalogError, match=r"routing\.model_fallback"):
        parse_catalog(doc(routing={"model_fallback": "sometimes"}), env={})
    assert parse_catalog(doc(routing={"model_fallback": True}), env={}).routing.model_fallback is True


def test_missing_key_variables_are_listed_once_in_order() -> None:
    catalog = parse_catalog(doc(), env={})
    assert catalog.models["big"].missing_key_envs() == ["OA_KEY", "OA_KEY_2"]
    assert parse_catalog(doc(), env={"OA_KEY": "k"}).models["big"].missing_key_envs() == ["OA_KEY_2"]
