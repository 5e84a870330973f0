"""The gateway's model list: every model and alias, with prices in micro-dollars."""

from __future__ import annotations

import yaml

from tollway.common.catalog import parse_catalog
from tollway.gateway.models import ListedModel, list_models

CATALOG = """
providers:
  oa: {wire: openai_compat, base_url: 'http://oa/v1'}
  an: {wire: anthropic, base_url: 'http://an'}
models:
  big: {provider: oa, tier: large, price_per_1m_tokens: {input: 0.15, output: 0.6}}
  claude: {provider: an, tier: medium, context_window: 200000}
aliases:
  best: big
"""


def test_models_and_aliases_are_listed_by_name_with_micro_dollar_prices() -> None:
    listed = list_models(parse_catalog(yaml.safe_load(CATALOG), env={}))
    assert [m.name for m in listed] == ["best", "big", "claude"]
    best, big, claude = listed
    assert best == ListedModel("best", "big", "oa", "large", big.context_window, 150_000, 600_000)
    # 0.15 * 1e6 is 149999.99999999997 in binary: rounded, not truncated.
    assert (big.alias_of, big.input_price_usd_micros_per_million) == ("", 150_000)
    assert (claude.provider, claude.tier, claude.context_window) == ("an", "medium", 200_000)
    assert claude.input_price_usd_micros_per_million == 0
