"""Provider limits through the whole path: Envoy, the OpenAI surface, the gateway with its
budget, the router, real Redis and the wire-exact fake provider. A deployment at its limit is
skipped and the answer says so (``x-tollway-fallback``); a request no deployment can take is
a 429 with retry-after naming the deployment's limit, never reaches the provider, and its
budget reservation is released."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.support.polling import eventually
from tests.support.small_stack import roomy_stack
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cli import _create_key
from tollway.launcher.stack import Stack
from tollway.mesh import clients

pytestmark = pytest.mark.timeout(120)

TENANT = "limited-co"


@pytest.fixture(scope="module")
def limited_stack(fake_openai: str) -> Iterator[Stack]:
    models = (
        "  lim-one: {provider: fakeai, upstream_model: fake-ok, limits: {rpm: 2}}\n"
        "  lim-two:\n    provider: fakeai\n    upstream_model: fake-ok\n    deployments:\n"
        "      - {name: k1, weight: 100, limits: {rpm: 1}}\n"
        "      - {name: k2, weight: 0.01}\n"
    )
    services = ("gateway", "router", "budget", "openai_compat")
    with roomy_stack("router-limits-", models, fake_openai, TENANT, services=services, tokens=1_000_000) as stack:
        yield stack


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def _provider_requests(fake_openai: str) -> int:
    return int(httpx.get(f"{fake_openai}/_stats", timeout=5).json()["requests"])


async def test_a_deployment_at_its_limit_is_skipped_and_the_answer_says_so(limited_stack: Stack) -> None:
    key, _ = await _create_key(limited_stack.redis_url, TENANT)
    async with httpx.AsyncClient(base_url=limited_stack.edge_url, headers={"authorization": f"Bearer {key}"}) as http:
        first = await http.post("/v1/chat/completions", json=_chat("lim-two"), timeout=30)
        second = await http.post("/v1/chat/completions", json=_chat("lim-two"), timeout=30)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.headers["x-tollway-fallback"] == "none"
    assert second.headers["x-tollway-fallback"] == "fakeai/lim-two/k1 (LIMIT_RPM)"


async def test_no_deployment_free_is_a_429_naming_the_limit_and_the_reservation_is_released(
    limited_stack: Stack, fake_openai: str
) -> None:
    key, _ = await _create_key(limited_stack.redis_url, TENANT)
    async with httpx.AsyncClient(base_url=limited_stack.edge_url, headers={"authorization": f"Bearer {key}"}) as http:
        for _ in range(2):
            ok = await http.post("/v1/chat/completions", json=_chat("lim-one"), timeout=30)
            assert ok.status_code == 200, ok.text
        sent = _provider_requests(fake_openai)
        refused = await http.post("/v1/chat/completions", json=_chat("lim-one"), timeout=30)
    assert refused.status_code == 429, refused.text
    # The window frees when the first call's second leaves the minute: more than the 2 s a
    # request may wait, at most a minute.
    assert 2 < int(refused.headers["retry-after"]) <= 61
    assert "deployment fakeai/lim-one/default: its limit of 2 requests per minute is reached" in refused.text
    assert _provider_requests(fake_openai) == sent  # the provider never saw it

    def ledger() -> list[dict[str, str]]:
        client = redis.Redis.from_url(limited_stack.redis_url)
        try:
            rows = client.xrange(f"tw:budget:{{{TENANT}}}:ledger")
        finally:
            client.close()
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]

    # Holds admitted from a lease are written with their settlement, in the budget's next batch.
    entries = await eventually(lambda: (e := ledger()) and any(x["op"] == "release" for x in e) and e, what="a release")
    async with clients.channel(limited_stack.address("budget")) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)

        async def settled() -> bool:
            r = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=TENANT))
            return r.balanced and r.open_reservation_count == 0

        await eventually(settled)
    # The refused request held its estimate, then gave it back, uncharged (the ledger's order is the
    # order holds were written, not the requests').
    [refused_hold] = [e["res"] for e in entries if e["op"] == "release"]
    assert [e["op"] for e in entries if e.get("res") == refused_hold] == ["reserve", "release"]
