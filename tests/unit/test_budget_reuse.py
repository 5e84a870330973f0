"""What the budget works out once and reuses on the request path (issue 13): counters per minute
and request shape, policies, prices, the day. Each must be made again the moment what it came
from changes: a new minute, an override, a plans or catalog reload, a new day."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from tollway.budget.budget import _NO_LIMIT, Budget
from tollway.budget.config import BudgetConfig
from tollway.budget.plans import parse_plans
from tollway.budget.pricing import PriceTable
from tollway.budget.types import Override, Priority, Quota, ReserveCommand, Scope, Unit, Window
from tollway.common.catalog import CatalogSource

ROOT = Path(__file__).resolve().parents[2]
PLANS = {
    "version": 1,
    "default_plan": "free",
    "thresholds": {"normal": 0.9, "batch": 0.8},
    "plans": {
        "free": {"quotas": [{"scope": "tenant", "window": "minute", "tokens": 1000}]},
        "pro": {"quotas": [{"scope": "tenant", "window": "day", "tokens": 50_000}]},
    },
}


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


def budget() -> Budget:
    # The store is never reached by what these tests call.
    cfg = BudgetConfig(plans="unused", catalog=str(ROOT / "deploy" / "models.yaml"))
    return Budget(None, parse_plans(PLANS), CatalogSource(cfg.catalog), cfg)  # type: ignore[arg-type]


def cmd(**kw: object) -> ReserveCommand:
    args: dict[str, object] = {"tenant": "acme", "model": "gpt-4o-mini", "input_tokens": 8, "max_output_tokens": 16}
    return ReserveCommand(**(args | kw))  # type: ignore[arg-type]


def packed(b: Budget, now: int, c: ReserveCommand, priority: Priority = Priority.NORMAL) -> list[str]:
    return json.loads(b._counters(b.policy("acme"), priority, now, c, c.admitted_while_unavailable)[1])


def test_counters_are_reused_within_a_minute_and_made_anew_in_the_next() -> None:
    b = budget()
    policy = b.policy("acme")
    first = b._counters(policy, Priority.NORMAL, ms(2026, 3, 1, 12, 34, 1), cmd(), False)
    assert b._counters(policy, Priority.NORMAL, ms(2026, 3, 1, 12, 34, 59), cmd(), False)[0] is first[0]
    start = ms(2026, 3, 1, 12, 35) // 1000
    assert packed(b, ms(2026, 3, 1, 12, 35), cmd()) == [f"t|tok|minute|{start}|{start + 60}", "900"]


def test_counters_follow_the_priority_the_subjects_and_admission_while_down() -> None:
    b, now = budget(), ms(2026, 3, 1, 12, 34, 5)
    assert packed(b, now, cmd())[1::2] == ["900"]
    assert packed(b, now, cmd(), Priority.BATCH)[1::2] == ["800"]
    assert packed(b, now, cmd(), Priority.INTERACTIVE)[1::2] == ["1000"]
    assert packed(b, now, cmd(admitted_while_unavailable=True, request_id="r"))[1::2] == [str(_NO_LIMIT)]
    assert packed(b, now, cmd())[1::2] == ["900"]  # the forced shape did not replace the normal one


def test_an_override_or_a_plans_reload_gives_new_counters_within_the_same_minute() -> None:
    b, now = budget(), ms(2026, 3, 1, 12, 34, 5)
    assert packed(b, now, cmd())[0].startswith("t|tok|minute|")
    b._overrides["acme"] = Override(quotas=(Quota(Scope.TENANT, Window.MINUTE, Unit.TOKENS, 2000),))
    assert packed(b, now, cmd())[1::2] == ["1800"]
    b._fixed_plans = parse_plans({**PLANS, "default_plan": "pro"})
    assert b.policy("acme").plan == "pro"  # the override's minute quota stays on top of the new plan
    assert sorted(packed(b, now, cmd())[0::2])[0].startswith("t|tok|day|")
    b._overrides.pop("acme")
    assert [f.split("|")[2] for f in packed(b, now, cmd())[0::2]] == ["day"]


def test_prices_resolve_once_per_table_and_a_new_table_has_its_own() -> None:
    b = budget()
    table = b.prices
    assert table.resolve("gpt-4o-mini") is table.resolve("gpt-4o-mini")
    assert table.resolve("no-such-model") is None and table.resolve("no-such-model") is None
    fresh = PriceTable(b.catalog.current)
    assert fresh.resolve("gpt-4o-mini") == table.resolve("gpt-4o-mini")
    assert fresh.resolve("gpt-4o-mini") is not table.resolve("gpt-4o-mini")


def test_the_day_changes_at_midnight_utc() -> None:
    b = budget()
    assert b._day_of(ms(2026, 3, 1, 23, 59, 59)) == "2026-03-01"
    assert b._day_of(ms(2026, 3, 2)) == "2026-03-02"
    assert b._day_of(ms(2026, 3, 1, 12)) == "2026-03-01"
