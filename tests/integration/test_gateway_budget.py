"""The budget on the gateway's request path, through the real stack: refusals as HTTP 429 with
their headers (Envoy and the OpenAI surface), every way a call ends settling its reservation,
cache hits recorded as saved cost, and the budget service going away and coming back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.polling import eventually
from tests.support.redis_server import local_redis
from tests.support.text import unique_words
from tollway.budget.__main__ import build as build_budget
from tollway.budget.config import BudgetConfig
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cli import _create_key
from tollway.common.v1 import common_pb2
from tollway.gateway.__main__ import build as build_gateway
from tollway.gateway.config import GatewayConfig
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.launcher.processes import free_port
from tollway.launcher.stack import Stack
from tollway.mesh import clients
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server

pytestmark = pytest.mark.timeout(90)

PROMPT = "Say hello in one short sentence."
PROMPT_TOKENS = 13  # o200k_base with the chat framing (see tollway.common.tokens)
MAX_TOKENS = 16
PER_REQUEST = PROMPT_TOKENS + MAX_TOKENS


def messages() -> list[common_pb2.Message]:
    return [common_pb2.Message(role="user", content=PROMPT)]


def body(model: str = "fake-ok", **extra: Any) -> dict[str, Any]:
    # Interactive: may fill the whole quota (normal stops at 90 %), so the arithmetic stays simple.
    out = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "priority": "PRIORITY_INTERACTIVE",
        **extra,
    }
    out.setdefault("cache_policy", {"mode": "CACHE_MODE_BYPASS"})
    return out


def ledger(redis_url: str, tenant: str, prefix: str = "tw:budget") -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [
            {k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(f"{prefix}:{{{tenant}}}:ledger")
        ]
    finally:
        client.close()


def entries(redis_url: str, tenant: str, rid: str) -> list[dict[str, str]]:
    return [e for e in ledger(redis_url, tenant) if e.get("rid") == rid]


async def set_quota(stack: Stack, tenant: str, plan: str, tokens_per_day: int | None = None) -> None:
    # A day window: a test cannot straddle its reset the way it could a minute's.
    quotas = []
    if tokens_per_day is not None:
        quotas.append(
            budget_pb2.Quota(
                scope=budget_pb2.QUOTA_SCOPE_TENANT,
                window=budget_pb2.WINDOW_DAY,
                unit=budget_pb2.QUOTA_UNIT_TOKENS,
                limit=tokens_per_day,
            )
        )
    async with clients.channel(stack.address("budget")) as channel:
        await budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(
            budget_pb2.SetBudgetRequest(tenant_id=tenant, plan=plan, clear_overrides=True, quotas=quotas)
        )


async def reconcile(stack: Stack, tenant: str) -> budget_pb2.ReconcileBudgetResponse:
    async with clients.channel(stack.address("budget")) as channel:
        return await budget_pb2_grpc.BudgetServiceStub(channel).ReconcileBudget(
            budget_pb2.ReconcileBudgetRequest(tenant_id=tenant)
        )


async def settled(stack: Stack, tenant: str) -> None:
    """Waits until every reservation of ``tenant`` is committed or released, then proves the
    counters equal the ledger."""

    async def done() -> bool:
        result = await reconcile(stack, tenant)
        return result.balanced and result.open_reservation_count == 0

    await eventually(done)


def error_reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status else ():
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
    return info.reason


# --- refusals ---------------------------------------------------------------------------------


async def test_a_quota_is_hit_through_envoy_as_429_with_retry_after_and_rate_limit_headers(stack: Stack) -> None:
    tenant = "quota-http"
    await set_quota(stack, tenant, "capped", PER_REQUEST)
    key, _ = await _create_key(stack.redis_url, tenant)
    async with httpx.AsyncClient(base_url=stack.edge_url, headers={"authorization": f"Bearer {key}"}) as http:
        ok = await http.post("/v1/complete", json=body())
        assert ok.status_code == 200, ok.text
        # The remaining-budget headers of a success: the gateway's trailing metadata, copied
        # into the JSON answer's headers by the edge.
        assert ok.headers["x-ratelimit-limit-tokens"] == str(PER_REQUEST)
        assert ok.headers["x-ratelimit-remaining-tokens"] == "0"
        assert ok.headers["x-ratelimit-reset-tokens"].endswith("s")
        assert ok.headers["x-ratelimit-limit-requests"] == "1000000"
        await settled(stack, tenant)
        used = int(ok.json()["usage"]["input_tokens"]) + int(ok.json()["usage"]["output_tokens"])
        refused = await http.post("/v1/complete", json=body())
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
        assert refused.headers["x-ratelimit-limit-tokens"] == str(PER_REQUEST)
        assert refused.headers["x-ratelimit-remaining-tokens"] == str(PER_REQUEST - used)
        assert refused.headers["x-ratelimit-reset-tokens"] == refused.headers["retry-after"] + "s"
        assert "day token quota" in refused.text
        streamed = await http.post("/v1/generate", json=body())
        assert streamed.status_code == 429 and "retry-after" in streamed.headers
    # A refused request never reached a provider: one reservation, committed, nothing more.
    assert [e["op"] for e in ledger(stack.redis_url, tenant)] == ["reserve", "commit"]


async def test_a_success_carries_the_remaining_budget_over_grpc_and_in_a_native_stream(stack: Stack) -> None:
    tenant = "quota-success"
    await set_quota(stack, tenant, "capped", 4 * PER_REQUEST)
    key, _ = await _create_key(stack.redis_url, tenant)
    auth = [("authorization", f"Bearer {key}")]
    async with clients.channel(stack.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        call = stub.Complete(
            gateway_pb2.CompleteRequest(
                model="fake-ok", messages=messages(), max_tokens=MAX_TOKENS, priority=gateway_pb2.PRIORITY_INTERACTIVE
            ),
            metadata=auth,
        )
        await call
        # A unary answer's budget is trailing metadata (sent with the answer), not initial.
        trailing = dict(await call.trailing_metadata() or ())
        assert trailing["x-ratelimit-limit-tokens"] == str(4 * PER_REQUEST)
        assert trailing["x-ratelimit-remaining-tokens"] == str(3 * PER_REQUEST)
        assert not any(k.startswith("x-ratelimit-") for k, _ in await call.initial_metadata() or ())
    # A stream sends its headers before its events: initial metadata.
    async with (
        httpx.AsyncClient(base_url=stack.edge_url, headers={"authorization": f"Bearer {key}"}) as http,
        http.stream("POST", "/v1/generate", json=body()) as streamed,
    ):
        assert streamed.status_code == 200
        assert streamed.headers["x-ratelimit-limit-tokens"] == str(4 * PER_REQUEST)
        # What is left after the first answer's usage and this request's own reservation.
        assert int(streamed.headers["x-ratelimit-remaining-tokens"]) < 3 * PER_REQUEST
        await streamed.aread()
    await settled(stack, tenant)


async def test_a_refusal_over_grpc_carries_quota_failure_and_retry_info(stack: Stack) -> None:
    tenant = "quota-grpc"
    await set_quota(stack, tenant, "capped", PER_REQUEST - 1)
    key, _ = await _create_key(stack.redis_url, tenant)
    async with clients.channel(stack.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(
                gateway_pb2.CompleteRequest(
                    model="fake-ok",
                    messages=messages(),
                    max_tokens=MAX_TOKENS,
                    priority=gateway_pb2.PRIORITY_INTERACTIVE,
                ),
                metadata=[("authorization", f"Bearer {key}")],
            )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.value.trailing_metadata() or ())
    assert trailing["x-ratelimit-remaining-tokens"] == str(PER_REQUEST - 1) and "retry-after" in trailing
    status = rpc_status.from_call(err.value)
    assert status is not None
    kinds = {d.TypeName() for d in status.details}
    assert {"google.rpc.QuotaFailure", "google.rpc.RetryInfo", "google.rpc.ErrorInfo"} <= kinds
    failure = error_details_pb2.QuotaFailure()
    next(d for d in status.details if d.Is(failure.DESCRIPTOR)).Unpack(failure)
    assert failure.violations[0].subject == f"tenants/{tenant}"
    assert ledger(stack.redis_url, tenant) == []


async def test_the_openai_surface_answers_429_in_openais_shape_and_sends_budget_headers(stack: Stack) -> None:
    tenant = "quota-openai"
    await set_quota(stack, tenant, "capped", 2 * PER_REQUEST)
    key, _ = await _create_key(stack.redis_url, tenant)
    chat = {"model": "fake-ok", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    headers = {"authorization": f"Bearer {key}", "x-tollway-cache-mode": "bypass", "x-tollway-priority": "interactive"}
    async with httpx.AsyncClient(base_url=stack.edge_url, headers=headers) as http:
        first = await http.post("/v1/chat/completions", json=chat)
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-remaining-tokens"] == str(PER_REQUEST)
        assert first.headers["x-ratelimit-limit-requests"] == "1000000"
        second = await http.post("/v1/chat/completions", json={**chat, "stream": True})
        assert second.status_code == 200 and second.headers["x-ratelimit-limit-tokens"] == str(2 * PER_REQUEST)
        await settled(stack, tenant)
        # Usage far below the estimate went back: hold the rest with a larger request.
        big = {**chat, "max_tokens": 2 * PER_REQUEST}
        refused = await http.post("/v1/chat/completions", json=big)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and "token quota" in error["message"]
        for name in ("retry-after", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"):
            assert name in refused.headers, name
        bad = await http.post("/v1/chat/completions", json=chat, headers={"x-tollway-priority": "urgent"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-tollway-priority"


# --- every way a call ends settles its reservation ----------------------------------------------


@pytest.fixture
async def settle_key(stack: Stack) -> str:
    key, _ = await _create_key(stack.redis_url, "settle")
    return key


@contextlib.asynccontextmanager
async def gateway_stub(stack: Stack) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with clients.channel(stack.address("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def test_a_complete_answer_commits_the_providers_usage(stack: Stack, settle_key: str) -> None:
    rid = uuid.uuid4().hex
    async with gateway_stub(stack) as stub:
        reply = await stub.Complete(
            gateway_pb2.CompleteRequest(
                model="fake-ok",
                messages=messages(),
                max_tokens=MAX_TOKENS,
                request_id=rid,
                priority=gateway_pb2.PRIORITY_BATCH,
                conversation_id="conv-7",
            ),
            metadata=auth(settle_key),
        )
    await eventually(lambda: [e["op"] for e in entries(stack.redis_url, "settle", rid)] == ["reserve", "commit"])
    reserve, commit = entries(stack.redis_url, "settle", rid)
    assert (reserve["prio"], reserve["conv"], reserve["in"], reserve["gout"]) == ("batch", "conv-7", "13", "16")
    assert (int(commit["in"]), int(commit["out"])) == (reply.usage.input_tokens, reply.usage.output_tokens)
    assert commit["partial"] == "0" and commit["prov"] == "fakeai"
    await settled(stack, "settle")


async def test_a_failure_before_any_output_releases_the_reservation(stack: Stack, settle_key: str) -> None:
    rid = uuid.uuid4().hex
    async with gateway_stub(stack) as stub:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(
                gateway_pb2.CompleteRequest(model="fake-500", messages=messages(), max_tokens=8, request_id=rid),
                metadata=auth(settle_key),
            )
    await eventually(lambda: [e["op"] for e in entries(stack.redis_url, "settle", rid)] == ["reserve", "release"])
    await settled(stack, "settle")


async def test_a_stream_cut_mid_way_commits_its_partial_usage(stack: Stack, settle_key: str) -> None:
    rid = uuid.uuid4().hex
    async with gateway_stub(stack) as stub:
        events = [
            e.WhichOneof("event")
            async for e in stub.Generate(
                gateway_pb2.GenerateRequest(
                    model="fake-cut-mid-stream",
                    messages=messages(),
                    max_tokens=64,
                    request_id=rid,
                    cache_policy=common_pb2.CachePolicy(mode=common_pb2.CACHE_MODE_BYPASS),
                ),
                metadata=auth(settle_key),
            )
        ]
    assert events[0] == "started" and events[-1] == "error" and "delta" in events
    await eventually(lambda: [e["op"] for e in entries(stack.redis_url, "settle", rid)] == ["reserve", "commit"])
    commit = entries(stack.redis_url, "settle", rid)[1]
    assert commit["partial"] == "1" and int(commit["out"]) > 0 and int(commit["in"]) > 0
    await settled(stack, "settle")


async def test_a_client_that_goes_away_still_commits_what_the_provider_produced(stack: Stack, settle_key: str) -> None:
    rid = uuid.uuid4().hex
    async with gateway_stub(stack) as stub:
        call = stub.Generate(
            gateway_pb2.GenerateRequest(
                model="fake-gap-50",
                messages=messages(),
                max_tokens=2000,
                request_id=rid,
                cache_policy=common_pb2.CachePolicy(mode=common_pb2.CACHE_MODE_BYPASS),
            ),
            metadata=auth(settle_key),
        )
        deltas = 0
        async for event in call:
            deltas += event.WhichOneof("event") == "delta"
            if deltas == 3:
                break
        call.cancel()
    await eventually(lambda: [e["op"] for e in entries(stack.redis_url, "settle", rid)] == ["reserve", "commit"])
    commit = entries(stack.redis_url, "settle", rid)[1]
    assert commit["partial"] == "1" and int(commit["out"]) >= 3 and int(commit["in"]) >= PROMPT_TOKENS
    assert int(commit["out"]) < 2000  # what was produced, not what was reserved
    await settled(stack, "settle")


async def test_a_cache_hit_reserves_nothing_and_is_recorded_as_saved_cost(stack: Stack) -> None:
    tenant = "saver"
    key, _ = await _create_key(stack.redis_url, tenant)
    request = gateway_pb2.CompleteRequest(
        model="fake-ok", messages=[common_pb2.Message(role="user", content=f"cache me {unique_words()}")]
    )
    async with gateway_stub(stack) as stub:
        first = await stub.Complete(request, metadata=auth(key))

        async def hit() -> str | None:
            # A new request id each time: the answer may first be found by its meaning, before its
            # exact key is written (split layout), and a request id is recorded as saved once.
            request.request_id = uuid.uuid4().hex
            reply = await stub.Complete(request, metadata=auth(key))
            return request.request_id if reply.cache_tier == common_pb2.CACHE_TIER_EXACT else None

        second_id = await eventually(hit)
    await eventually(lambda: [e["op"] for e in entries(stack.redis_url, tenant, second_id)] == ["saved"])
    saved = entries(stack.redis_url, tenant, second_id)[0]
    assert int(saved["out"]) == first.usage.output_tokens and saved["tier"] == "exact"
    assert saved["f"] == ""  # changes no counter

    async def usage() -> budget_pb2.UsageRow | None:
        # The first answer's commit is written off its path, batched (tollway.budget.leasing).
        async with clients.channel(stack.address("budget")) as channel:
            reply = await budget_pb2_grpc.BudgetServiceStub(channel).GetUsage(
                budget_pb2.GetUsageRequest(tenant_id=tenant)
            )
        return reply.rows[-1] if reply.rows and reply.rows[-1].request_count else None

    row = await eventually(usage, what="the first answer's commit in the day's usage")
    assert row.cache_hit_count >= 1 and row.request_count == 1
    await settled(stack, tenant)


# --- the budget service down ---------------------------------------------------------------------


async def test_while_the_budget_service_is_down_tenants_get_their_policy_and_admitted_calls_are_charged_later(
    stack: Stack, budget_plans: Path, catalog: Path, tmp_path: Path
) -> None:
    """A gateway and a budget service of its own (on a Redis of its own, the stack's router), so the
    test can stop the budget service while nothing else drains the gateway's outbox."""
    with local_redis() as own_redis:
        mesh = MeshConfig(redis_url=own_redis.url)
        budget_port = free_port()

        async def start_budget() -> tuple[grpc.aio.Server, Any]:
            spec, _ = build_budget(BudgetConfig(plans=str(budget_plans), catalog=str(catalog)), mesh)
            server, _, _ = await create_server(spec, f"127.0.0.1:{budget_port}")
            return server, spec

        budget_server, budget_spec = await start_budget()
        gw_spec = build_gateway(
            GatewayConfig(
                router_addr=stack.address("router"),
                budget_addr=f"127.0.0.1:{budget_port}",
                budget_timeout_s=1.0,
                budget_drain_interval_s=0.2,
                catalog=str(catalog),
            ),
            mesh,
        )
        gw_server, gw_port, _ = await create_server(gw_spec, "127.0.0.1:0")
        try:
            admin_channel = grpc.aio.insecure_channel(f"127.0.0.1:{budget_port}")
            admin = budget_pb2_grpc.BudgetServiceStub(admin_channel)
            await admin.SetBudget(budget_pb2.SetBudgetRequest(tenant_id="rates-only", plan="open"))
            await admin.SetBudget(budget_pb2.SetBudgetRequest(tenant_id="money", plan="dollars"))
            open_key, _ = await _create_key(own_redis.url, "rates-only")
            money_key, _ = await _create_key(own_redis.url, "money")
            async with clients.channel(f"127.0.0.1:{gw_port}") as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)

                async def ask(key: str, rid: str = "") -> gateway_pb2.CompleteResponse:
                    return await stub.Complete(
                        gateway_pb2.CompleteRequest(
                            model="fake-ok", messages=messages(), max_tokens=MAX_TOKENS, request_id=rid
                        ),
                        metadata=auth(key),
                    )

                # Up: each tenant's first reservation tells the gateway its policy.
                await ask(open_key)
                await ask(money_key)

                def committed(tenant: str) -> bool:
                    return [e["op"] for e in ledger(own_redis.url, tenant)] == ["reserve", "commit"]

                await eventually(lambda: committed("rates-only") and committed("money"))
                await budget_server.stop(None)
                assert budget_spec.on_stop is not None
                await budget_spec.on_stop()
                # Down: the pure rate limit admits, the dollar quota refuses.
                rid = uuid.uuid4().hex
                admitted = await ask(open_key, rid)
                assert admitted.text
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ask(money_key)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(refused.value) == "BUDGET_UNAVAILABLE"
                outbox = redis.Redis.from_url(own_redis.url)
                await eventually(lambda: outbox.xlen("tollway:budget:outbox") == 1)
                await asyncio.sleep(0.5)  # drain rounds run meanwhile: the entry stays while it is down
                assert outbox.xlen("tollway:budget:outbox") == 1
                # Back: the outbox drains, the admitted call is in the ledger once, with its usage.
                budget_server, budget_spec = await start_budget()
                await eventually(lambda: outbox.xlen("tollway:budget:outbox") == 0, timeout_s=15)
                outbox.close()
                charged = entries(own_redis.url, "rates-only", rid)
                assert [e["op"] for e in charged] == ["reserve", "commit"] and charged[0]["unav"] == "1"
                assert int(charged[1]["out"]) == admitted.usage.output_tokens
                result = await admin.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id="rates-only"))
                assert result.balanced and result.open_reservation_count == 0
            await admin_channel.close()
        finally:
            await gw_server.stop(None)
            assert gw_spec.on_stop is not None
            await gw_spec.on_stop()
            await budget_server.stop(None)
            assert budget_spec.on_stop is not None
            await budget_spec.on_stop()
