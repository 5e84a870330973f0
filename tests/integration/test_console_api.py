"""InsightsService through Envoy (HTTP/JSON), and the console's files served by Envoy under /ui/.

Usage totals agree with the budget ledger for the same burst; a tenant key reads only its own
tenant; feedback is checked, scoped and counted once.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.support.polling import eventually_sync
from tests.support.text import unique_words
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cli import _create_key
from tollway.launcher.stack import Stack
from tollway.mesh import clients

pytestmark = pytest.mark.timeout(90)


def key_for(stack: Stack, tenant: str) -> str:
    return asyncio.run(_create_key(stack.redis_url, tenant))[0]


def http(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def complete(client: httpx.Client, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "fake-ok",
        "messages": [{"role": "user", "content": f"hello {unique_words()}"}],
        "max_tokens": 16,
        "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
        **extra,
    }
    res = client.post("/v1/complete", json=body)
    assert res.status_code == 200, res.text
    return res.json()


def usage(client: httpx.Client, group: str, **params: str) -> list[dict[str, Any]]:
    res = client.get("/v1/usage", params={"group_by": f"USAGE_GROUP_{group}", **params})
    assert res.status_code == 200, res.text
    return res.json()["rows"]


async def ledger_usage(stack: Stack, tenant: str) -> budget_pb2.GetUsageResponse:
    async with clients.channel(stack.address("budget")) as channel:
        return await budget_pb2_grpc.BudgetServiceStub(channel).GetUsage(budget_pb2.GetUsageRequest(tenant_id=tenant))


def test_usage_agrees_with_the_budget_ledger_for_the_same_burst(stack: Stack) -> None:
    tenant = f"burst-{uuid.uuid4().hex[:8]}"
    with http(stack, key_for(stack, tenant)) as client:
        for i in range(6):
            complete(client, model="fake-priced", feature="burst" if i % 2 else "other", user=f"user-{i % 3}")

        def recorded() -> list[dict[str, Any]] | None:
            rows = usage(client, "TENANT")
            return rows if rows and int(rows[0]["request_count"]) == 6 else None

        try:
            [ours] = eventually_sync(recorded, timeout_s=10, what="six calls in the usage totals")
        except AssertionError:
            print(usage(client, "TENANT"), client.get("/v1/calls").json())
            raise

        def committed() -> list[budget_pb2.UsageRow] | None:
            rows = [r for r in asyncio.run(ledger_usage(stack, tenant)).rows if not r.group]
            return rows if sum(r.request_count for r in rows) == 6 else None

        ledger = eventually_sync(committed, timeout_s=10, what="six commits in the ledger")
        assert int(ours["input_tokens"]) == sum(r.input_tokens for r in ledger)
        assert int(ours["output_tokens"]) == sum(r.output_tokens for r in ledger)
        assert int(ours["cached_input_tokens"]) == sum(r.cached_input_tokens for r in ledger)
        # The ledger keeps billionths of a dollar, the records millionths: equal within rounding.
        ledger_micros = sum(r.cost_usd_nanos for r in ledger) / 1000
        assert int(ours["cost_usd_micros"]) > 0
        assert abs(int(ours["cost_usd_micros"]) - ledger_micros) <= 6
        by_feature = {r["group"]: int(r["request_count"]) for r in usage(client, "FEATURE")}
        assert by_feature == {"burst": 3, "other": 3}
        assert {r["group"] for r in usage(client, "USER")} == {"user-0", "user-1", "user-2"}
        assert [r["group"] for r in usage(client, "MODEL")] == ["fake-priced"]


def test_a_tenant_key_sees_only_its_own_tenant_and_an_admin_key_sees_all(stack: Stack) -> None:
    a, b = f"iso-a-{uuid.uuid4().hex[:6]}", f"iso-b-{uuid.uuid4().hex[:6]}"
    with http(stack, key_for(stack, a)) as ca, http(stack, key_for(stack, b)) as cb, http(
        stack, key_for(stack, "admin")
    ) as admin:
        mine = complete(ca)["request_id"]
        theirs = complete(cb)["request_id"]
        eventually_sync(lambda: usage(cb, "TENANT") and usage(ca, "TENANT"), what="both tenants recorded")

        refused = cb.get("/v1/usage", params={"tenant_id": a})
        assert refused.status_code == 403
        assert f"cannot read tenant '{a}'" in refused.json()["message"]
        assert cb.get("/v1/calls", params={"tenant_id": a}).status_code == 403
        listed = [c["fields"]["request_id"] for c in cb.get("/v1/calls").json()["calls"]]
        assert theirs in listed and mine not in listed
        assert {r["group"] for r in usage(cb, "TENANT")} == {b}

        everyone = {r["group"] for r in usage(admin, "TENANT")}
        assert {a, b} <= everyone
        only_a = admin.get("/v1/calls", params={"tenant_id": a, "page_size": 500}).json()["calls"]
        assert {c["fields"]["tenant"] for c in only_a} == {a}
        assert ca.get("/v1/usage").status_code == 200
        assert httpx.get(stack.edge_url + "/v1/usage").status_code == 401


def test_feedback_is_checked_scoped_and_counted_once(stack: Stack) -> None:
    a, b = f"fb-a-{uuid.uuid4().hex[:6]}", f"fb-b-{uuid.uuid4().hex[:6]}"
    with http(stack, key_for(stack, a)) as ca, http(stack, key_for(stack, b)) as cb:
        rid = complete(ca)["request_id"]
        eventually_sync(lambda: usage(ca, "TENANT"), what="the call recorded")

        bad = ca.post("/v1/feedback", json={"request_id": rid, "score": 3})
        assert bad.status_code == 400 and "score" in bad.json()["message"]
        assert ca.post("/v1/feedback", json={"request_id": "nope", "score": 1}).status_code == 404
        assert cb.post("/v1/feedback", json={"request_id": rid, "score": 1}).status_code == 404
        [row] = usage(ca, "MODEL")
        assert int(row["feedback_count"]) == 0  # refusals changed nothing

        first = ca.post("/v1/feedback", json={"request_id": rid, "score": 1, "comment": "right answer"})
        assert first.status_code == 200 and first.json()["replaced"] is False
        again = ca.post("/v1/feedback", json={"request_id": rid, "score": 0.5})
        assert again.json()["replaced"] is True
        [row] = usage(ca, "MODEL")
        assert int(row["feedback_count"]) == 1 and row["mean_feedback_score"] == pytest.approx(0.5)
        [call] = ca.get("/v1/calls").json()["calls"]
        assert call["feedback_score"] == pytest.approx(0.5)
        one = ca.get(f"/v1/calls/{rid}")
        assert one.status_code == 200 and one.json()["call"]["fields"]["request_id"] == rid
        assert one.json()["call"]["feedback_score"] == pytest.approx(0.5) and one.json()["raw_response"] == ""
        assert cb.get(f"/v1/calls/{rid}").status_code == 404
        assert call["fields"]["key_id"].startswith("tw-") and call["raw_state"] == "not_kept"
        # The fake reports usage the way OpenAI does: the record says the counts are the provider's.
        assert call["fields"]["usage_from_provider"] == "1"


def test_envoy_serves_the_console_under_ui(stack: Stack) -> None:
    with httpx.Client(base_url=stack.edge_url, timeout=10) as client:
        page = client.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Tollway console" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        script = client.get("/ui/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        chart = client.get("/ui/vendor/chart.umd.min.js")
        assert chart.status_code == 200, "run scripts/vendor_web.sh (make install does)"
        assert "Chart.js v4" in chart.text[:200]
        moved = client.get("/ui")
        assert moved.status_code == 301 and moved.headers["location"].endswith("/ui/")


def test_the_overview_shows_budgets_breakers_prompts_and_admin_only_cache_quality(stack: Stack) -> None:
    a, b = f"ov-a-{uuid.uuid4().hex[:6]}", f"ov-b-{uuid.uuid4().hex[:6]}"
    with http(stack, key_for(stack, a)) as ca, http(stack, key_for(stack, b)) as cb, http(
        stack, key_for(stack, "admin")
    ) as admin:
        complete(ca)
        complete(cb)
        eventually_sync(lambda: usage(ca, "TENANT") and usage(cb, "TENANT"), what="both tenants recorded")

        mine = ca.get("/v1/overview").json()
        assert mine["unavailable"] == []
        assert mine["budgets"] and {x["tenant_id"] for x in mine["budgets"]} == {a}
        requests = next(x for x in mine["budgets"] if x["unit"] == "QUOTA_UNIT_REQUESTS")
        used, limit = int(requests["used"]), int(requests["limit"])
        assert used >= 1 and int(requests["remaining"]) == limit - used
        assert any(x["name"].startswith("fakeai/") for x in mine["breakers"])
        assert mine["namespaces"] == []  # the cache's counts span tenants: admins only
        assert ca.get("/v1/overview", params={"tenant_id": b}).status_code == 403

        everyone = admin.get("/v1/overview").json()
        assert {a, b} <= {x["tenant_id"] for x in everyone["budgets"]}
        assert "default" in {n["namespace"] for n in everyone["namespaces"]}
        assert everyone["unavailable"] == []
