"""Every API surface under a budget and a client that leaves (issue 16): a refused request is
each SDK's RateLimitError with retry-after and x-ratelimit-* headers; embeddings reserve and
settle like chat; a client that disconnects cancels the provider call (streams: the fake sees
its connection closed) or the gateway call (whole answers: the call record says CANCELLED)."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from tests.support.polling import eventually, eventually_sync
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cli import _create_key
from tollway.launcher.stack import Stack
from tollway.mesh import clients

pytestmark = pytest.mark.timeout(90)
NO_CACHE = {"x-tollway-cache-mode": "bypass"}
HI = [{"role": "user", "content": "hi"}]
EMBED_MODEL = "minilm-l6-v2-int8"


async def _tenant(stack: Stack, tenant: str, tokens_per_day: int) -> str:
    quota = budget_pb2.Quota(
        scope=budget_pb2.QUOTA_SCOPE_TENANT,
        window=budget_pb2.WINDOW_DAY,
        unit=budget_pb2.QUOTA_UNIT_TOKENS,
        limit=tokens_per_day,
    )
    async with clients.channel(stack.address("budget")) as channel:
        await budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(
            budget_pb2.SetBudgetRequest(tenant_id=tenant, plan="capped", clear_overrides=True, quotas=[quota])
        )
    key, _ = await _create_key(stack.redis_url, tenant)
    return key


async def _settled(stack: Stack, tenant: str) -> budget_pb2.ReconcileBudgetResponse:
    async def done() -> budget_pb2.ReconcileBudgetResponse | None:
        async with clients.channel(stack.address("budget")) as channel:
            result = await budget_pb2_grpc.BudgetServiceStub(channel).ReconcileBudget(
                budget_pb2.ReconcileBudgetRequest(tenant_id=tenant)
            )
        return result if result.balanced and result.open_reservation_count == 0 else None

    return await eventually(done, what=f"every reservation of {tenant} settled")


def test_budget_refusals_on_every_surface(stack: Stack) -> None:
    key = asyncio.run(_tenant(stack, f"sdk-quota-{uuid.uuid4().hex[:6]}", 5))
    oa = openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=key, max_retries=0)
    an = anthropic.Anthropic(base_url=stack.edge_url, api_key=key, max_retries=0)
    refusals: list[Any] = []
    with pytest.raises(openai.RateLimitError) as chat:
        oa.chat.completions.create(model="fake-ok", messages=HI, extra_headers=NO_CACHE)
    refusals.append(chat.value)
    with pytest.raises(openai.RateLimitError) as responses:
        oa.responses.create(model="fake-ok", input="hi", extra_headers=NO_CACHE)
    refusals.append(responses.value)
    with pytest.raises(openai.RateLimitError) as embeddings:
        oa.embeddings.create(model=EMBED_MODEL, input="hello there, a few tokens")
    refusals.append(embeddings.value)
    with pytest.raises(anthropic.RateLimitError) as messages:
        an.messages.create(model="fake-ok", max_tokens=50, messages=HI, extra_headers=NO_CACHE)
    refusals.append(messages.value)
    assert messages.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    for refusal in refusals:
        headers = refusal.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit-tokens"] == "5"
        assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) <= 5


def test_embeddings_reserve_commit_record_and_release_on_failure(stack: Stack) -> None:
    tenant = f"sdk-embed-{uuid.uuid4().hex[:6]}"
    key = asyncio.run(_tenant(stack, tenant, 1_000_000))
    oa = openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=key, max_retries=0)
    raw = oa.embeddings.with_raw_response.create(model=EMBED_MODEL, input=["one text", "and another"], user="emb-user")
    request_id = raw.headers["x-tollway-request-id"]
    tokens = raw.parse().usage.prompt_tokens
    assert "x-ratelimit-remaining-tokens" in raw.headers
    # The embedding service refuses a text over its size limit after the reservation was made.
    with pytest.raises(openai.BadRequestError):
        oa.embeddings.create(model=EMBED_MODEL, input=["x " * 40_000])
    result = asyncio.run(_settled(stack, tenant))
    assert result.open_reservation_count == 0
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)

    def record() -> dict[str, str] | None:
        rows = [f for _, f in r.xrevrange("tollway:calls", count=200) if f.get("request_id") == request_id]
        return rows[0] if rows else None

    row = eventually_sync(record, what="the embeddings call record")
    assert row["tenant"] == tenant and row["provider"] == "embedding" and row["model"] == EMBED_MODEL
    assert int(row["input_tokens"]) == tokens and row["status"] == "OK" and row["user"] == "emb-user"


def _post(stack: Stack, path: str, body: dict[str, Any], headers: dict[str, str]) -> socket.socket:
    raw = json.dumps(body).encode()
    host, port = stack.mesh.edge.listen.host, stack.mesh.edge.listen.port
    s = socket.create_connection((host, port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{head}"
        f"content-length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    return s


def _chat(model: str, stream: bool, user: str) -> dict[str, Any]:
    return {"model": model, "messages": HI, "stream": stream, "user": user}


def _responses(model: str, stream: bool, user: str) -> dict[str, Any]:
    return {"model": model, "input": "hi", "stream": stream, "user": user}


def _messages(model: str, stream: bool, user: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 2000, "messages": HI, "stream": stream, "metadata": {"user_id": user}}


SURFACES = {
    "chat": ("/v1/chat/completions", _chat),
    "responses": ("/v1/responses", _responses),
    "messages": ("/v1/messages", _messages),
}


def _headers(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}", "anthropic-version": "2023-06-01", **NO_CACHE}


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_a_client_leaving_a_stream_cancels_the_provider_call(
    surface: str, stack: Stack, api_key: str, fake_openai: str
) -> None:
    def aborted() -> int:
        return int(httpx.get(f"{fake_openai}/_stats").json()["streams_aborted_by_client"])

    before = aborted()
    path, body = SURFACES[surface]
    with _post(stack, path, body("fake-gap-50", True, "leaver"), _headers(api_key)) as s:
        received = b""
        while received.count(b"tick") < 2:
            received += s.recv(4096)
    eventually_sync(lambda: aborted() > before, what="the provider stream closed after the client left")


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_a_client_leaving_a_whole_answer_cancels_the_gateway_call(
    surface: str, stack: Stack, api_key: str, fake_openai: str
) -> None:
    user = f"leaver-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    before = int(httpx.get(f"{fake_openai}/_stats").json()["requests"])
    path, body = SURFACES[surface]
    with _post(stack, path, body("fake-slow-5000", False, user), _headers(api_key)):
        # The provider has the request: the gateway call is under way.
        eventually_sync(lambda: int(httpx.get(f"{fake_openai}/_stats").json()["requests"]) > before)

    def cancelled() -> dict[str, str] | None:
        rows = [f for _, f in r.xrevrange("tollway:calls", count=200) if f.get("user") == user]
        return rows[0] if rows else None

    # Not cancelled, the fake would answer after 5 s and the record would say OK.
    row = eventually_sync(cancelled, what="the cancelled call's record")
    assert row["status"] == "CANCELLED"
