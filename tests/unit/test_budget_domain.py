"""Window arithmetic, pricing, the priority rule, counters, plans parsing and names."""

from __future__ import annotations

import datetime as dt

import pytest

from tollway.budget import quota, windows
from tollway.budget.budget import override_from_json, override_to_json, parse_name
from tollway.budget.config import BudgetConfig
from tollway.budget.plans import PlansError, parse_plans
from tollway.budget.pricing import PriceTable, Rates
from tollway.budget.types import Override, Policy, Priority, Quota, Scope, UnavailablePolicy, Unit, Window
from tollway.common.catalog import Catalog, Deployment, Model, Price, Routing
from tollway.mesh.errors import InvalidArgument


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "now", "start", "end"),
    [
        (Window.MINUTE, ms(2026, 3, 1, 12, 34, 56), ms(2026, 3, 1, 12, 34), ms(2026, 3, 1, 12, 35)),
        (Window.HOUR, ms(2026, 3, 1, 12, 34, 56), ms(2026, 3, 1, 12), ms(2026, 3, 1, 13)),
        (Window.DAY, ms(2026, 3, 1, 23, 59, 59), ms(2026, 3, 1), ms(2026, 3, 2)),
        (Window.MONTH, ms(2026, 12, 31, 23, 59), ms(2026, 12, 1), ms(2027, 1, 1)),
        (Window.MONTH, ms(2028, 2, 29, 8), ms(2028, 2, 1), ms(2028, 3, 1)),
    ],
)
def test_bucket_is_the_calendar_period_in_utc(window: Window, now: int, start: int, end: int) -> None:
    assert windows.bucket(window, now) == (start // 1000, end // 1000)


def test_a_window_edge_starts_the_next_bucket() -> None:
    edge = ms(2026, 3, 1, 13)
    assert windows.bucket(Window.HOUR, edge - 1)[1] == windows.bucket(Window.HOUR, edge)[0] == edge // 1000
    assert windows.bucket(Window.CONVERSATION, edge) == (0, 0)


def test_dates() -> None:
    assert windows.day_of(ms(2026, 1, 2, 23, 59)) == "2026-01-02"
    assert windows.days(dt.date(2026, 2, 27), dt.date(2026, 3, 2)) == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "2026-03-02",
    ]
    for bad in ("20260101", "2026-1-01", "2026-13-01", "yesterday"):
        with pytest.raises(ValueError, match=bad):
            windows.parse_date(bad)


# --- pricing --------------------------------------------------------------------------------


def test_costs_are_exact_nano_dollars_rounded_up() -> None:
    rates = Rates.from_price(Price(input_usd=0.15, output_usd=0.60, cached_input_usd=0.075))
    assert rates == Rates(150_000, 600_000, 75_000)
    assert rates.cost_nanos(8, 6) == 4800  # the LiteLLM harness's request; micros would round it
    assert rates.cost_nanos(100, 20, cached_input_tokens=60) == 40 * 150 + 60 * 75 + 20 * 600
    odd = Rates.from_price(Price(input_usd=0.0375))
    assert odd.cost_nanos(1, 0) == 38 and odd.cost_nanos(2, 0) == 75


def _catalog(prices: dict[str, Price], tiers: dict[str, str] | None = None) -> Catalog:
    dep = Deployment(provider="p", base_url="http://x", upstream_model="u")
    models = {
        n: Model(name=n, deployments=(dep,), price=p, max_output_tokens=100 * (i + 1))
        for i, (n, p) in enumerate(prices.items())
    }
    return Catalog(models=models, aliases={"cheap-alias": "cheap"}, routing=Routing(tiers=tiers or {}))


def test_price_table_resolves_aliases_auto_and_versions_by_price_only() -> None:
    prices = {"cheap": Price(0.1, 0.2), "dear": Price(5.0, 15.0)}
    table = PriceTable(_catalog(prices, {"small": "cheap", "large": "dear"}))
    assert table.resolve("cheap-alias").name == "cheap"  # type: ignore[union-attr]
    auto = table.resolve("auto")
    assert auto is not None and auto.rates == Rates.from_price(prices["dear"])
    assert table.resolve("nope") is None
    same = PriceTable(_catalog(prices, {"small": "cheap"}))
    assert same.version == table.version  # routing changed, prices did not
    assert PriceTable(_catalog({**prices, "cheap": Price(0.1, 0.3)})).version != table.version


# --- the priority rule and counters --------------------------------------------------------


def test_priority_thresholds_round_down() -> None:
    policy = Policy("t", "p", (), normal_threshold=0.9, batch_threshold=0.8)
    assert quota.allowed(1000, policy.threshold(Priority.BATCH)) == 800
    assert quota.allowed(1001, policy.threshold(Priority.BATCH)) == 800
    assert quota.allowed(1000, policy.threshold(Priority.NORMAL)) == 900
    assert quota.allowed(1000, policy.threshold(Priority.INTERACTIVE)) == 1000
    assert quota.allowed(7, 1 / 3) == 2


def test_demand_is_linear_in_output_tokens_and_rounds_up() -> None:
    d = quota.demands(Rates(150_000, 600_000, 0), 8)
    assert d[Unit.TOKENS].amount(16) == 24
    assert d[Unit.USD_NANOS].amount(16) == 10_800
    assert d[Unit.REQUESTS].amount(16) == 1
    assert quota.demands(Rates(1, 1, 0), 1)[Unit.USD_NANOS].amount(1) == 1  # 2 picos -> 1 nano


def test_counters_cover_each_subject_and_a_named_key_quota_replaces_the_general_one() -> None:
    policy = Policy(
        "t",
        "p",
        (
            Quota(Scope.TENANT, Window.DAY, Unit.TOKENS, 100),
            Quota(Scope.KEY, Window.MINUTE, Unit.TOKENS, 10),
            Quota(Scope.KEY, Window.MINUTE, Unit.TOKENS, 50, subject="vip"),
            Quota(Scope.FEATURE, Window.HOUR, Unit.REQUESTS, 5, subject="search"),
            Quota(Scope.CONVERSATION, Window.CONVERSATION, Unit.TOKENS, 30),
        ),
    )
    now = ms(2026, 3, 1, 12, 0, 30)
    plain = quota.counters(policy, Priority.INTERACTIVE, now, api_key_id="k1", feature="chat")
    assert [(c.field.split("|")[0], c.allowed) for c in plain] == [("t", 100), ("k:k1", 10)]
    vip = quota.counters(policy, Priority.INTERACTIVE, now, api_key_id="vip", feature="search", conversation_id="c")
    assert [(c.field.split("|")[0], c.allowed) for c in vip] == [
        ("t", 100),
        ("k:vip", 50),
        ("f:search", 5),
        ("c:c", 30),
    ]
    assert vip[0].field == f"t|tok|day|{ms(2026, 3, 1) // 1000}|{ms(2026, 3, 2) // 1000}"
    assert vip[-1].reset_ms == 0
    assert quota.parse_field(vip[2].field) == (
        "f:search",
        Unit.REQUESTS,
        Window.HOUR,
        ms(2026, 3, 1, 12) // 1000,
        ms(2026, 3, 1, 13) // 1000,
    )
    assert quota.retry_after_s(vip[0].reset_ms, now) == 12 * 3600 - 30
    assert quota.retry_after_s(0, now) is None


# --- the plans file -----------------------------------------------------------------------

GOOD = {
    "default_plan": "free",
    "plans": {
        "free": {"quotas": [{"scope": "tenant", "window": "day", "tokens": 100}], "max_tokens_per_request": 64},
        "pro": {
            "quotas": [{"scope": "tenant", "window": "month", "usd": 2.5}],
            "thresholds": {"normal": 0.95, "batch": 0.5},
        },
    },
    "tenants": {"acme": {"plan": "pro", "quotas": [{"scope": "tenant", "window": "month", "usd": 10}]}},
}


def test_plans_resolve_tenants_with_overrides_on_top() -> None:
    plans = parse_plans(GOOD)
    acme = plans.policy("acme")
    assert acme is not None and acme.plan == "pro" and acme.batch_threshold == 0.5
    assert acme.quotas == (Quota(Scope.TENANT, Window.MONTH, Unit.USD_NANOS, 10_000_000_000),)
    other = plans.policy("someone")
    assert other is not None and other.plan == "free" and other.max_tokens_per_request == 64
    assert parse_plans({**GOOD, "default_plan": ""}).policy("someone") is None
    moved = plans.policy("acme", Override(plan="free", max_tokens_per_request=0))
    assert moved is not None and moved.plan == "free" and moved.max_tokens_per_request == 0 and moved.overridden


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"plan": {}}, r"budget\.yaml: plan: unknown key"),
        ({"plans": {"free": {"quota": []}}}, r"plans\.free\.quota: unknown key"),
        (
            {"plans": {"free": {"quotas": [{"scope": "tenant", "window": "week", "tokens": 1}]}}},
            r"'week' is not a window",
        ),
        ({"plans": {"free": {"quotas": [{"scope": "tenant", "window": "day"}]}}}, r"quotas\[0\]: needs exactly one"),
        ({"plans": {"free": {"quotas": [{"scope": "tenant", "window": "day", "tokens": 1, "usd": 1}]}}}, "exactly one"),
        ({"plans": {"free": {"quotas": [{"scope": "tenant", "window": "day", "tokens": -1}]}}}, "less than 0"),
        ({"plans": {"free": {"quotas": [{"scope": "key", "window": "conversation", "tokens": 1}]}}}, "conversation"),
        (
            {"plans": {"free": {"quotas": [{"scope": "tenant", "subject": "x", "window": "day", "tokens": 1}]}}},
            "subject",
        ),
        (
            {"plans": {"free": {"thresholds": {"normal": 0.5, "batch": 0.9}}}},
            r"thresholds\.batch: 0\.9 is above normal",
        ),
        ({"plans": {"free": {"thresholds": {"normal": 0}}}}, r"normal: 0 is not in \(0, 1\]"),
        ({"tenants": {"x": {"plan": "gold"}}}, r"tenants\.x\.plan: 'gold' is not a plan"),
        ({"tenants": {"bad id": {"plan": "free"}}}, "is not a tenant id"),
        ({"default_plan": "gold"}, r"default_plan: 'gold' is not a plan"),
        ({"version": 2}, r"version: 2 is not in \[1, 1\]"),
        ({"plans": {}}, "at least one plan"),
        ({"plans": {"free": {"when_unavailable": "maybe"}}}, r"'maybe' is not a budget-outage policy"),
        (
            {"plans": {"free": {"quotas": [{"scope": "tenant", "window": "day", "tokens": 1}] * 2}}},
            r"quotas\[1\]: repeats",
        ),
    ],
)
def test_a_malformed_plans_file_is_refused_naming_the_key(change: dict, message: str) -> None:
    with pytest.raises(PlansError, match=message):
        parse_plans({**GOOD, **change})


def test_outage_policy_fails_closed_for_dollar_quotas_and_open_for_pure_rate_limits() -> None:
    plans = parse_plans(GOOD)
    free, acme = plans.policy("someone"), plans.policy("acme")
    assert free is not None and free.when_unavailable is UnavailablePolicy.ADMIT  # tokens only
    assert acme is not None and acme.when_unavailable is UnavailablePolicy.REFUSE  # a usd quota
    explicit = parse_plans(
        {
            **GOOD,
            "plans": {**GOOD["plans"], "free": {**GOOD["plans"]["free"], "when_unavailable": "refuse"}},
            "tenants": {"acme": {"plan": "pro", "when_unavailable": "admit"}},
        }
    )
    someone, acme2 = explicit.policy("someone"), explicit.policy("acme")
    assert someone is not None and someone.when_unavailable is UnavailablePolicy.REFUSE
    assert acme2 is not None and acme2.when_unavailable is UnavailablePolicy.ADMIT


# --- names, overrides, config --------------------------------------------------------------


def test_reservation_names() -> None:
    assert parse_name("tenants/acme/reservations/" + "a" * 32) == ("acme", "a" * 32)
    for bad in ("acme/" + "a" * 32, "tenants/acme/reservations/xyz", "tenants/a|b/reservations/" + "a" * 32):
        with pytest.raises(InvalidArgument):
            parse_name(bad)


def test_override_round_trips() -> None:
    o = Override(plan="pro", quotas=(Quota(Scope.KEY, Window.MINUTE, Unit.REQUESTS, 3, "k"),), max_tokens_per_request=5)
    assert override_from_json(override_to_json(o)) == o


def test_config_names_the_bad_variable() -> None:
    with pytest.raises(ValueError, match="TOLLWAY_BUDGET_SWEEP_INTERVAL_S"):
        BudgetConfig(sweep_interval_s=0)
    with pytest.raises(ValueError, match="TOLLWAY_BUDGET_KEY_PREFIX"):
        BudgetConfig(key_prefix="a{b}")
    with pytest.raises(ValueError, match="TOLLWAY_BUDGET_RESERVATION_TTL_S"):
        BudgetConfig(reservation_ttl_s=100, max_reservation_ttl_s=10)
