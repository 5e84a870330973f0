"""RouterService over real gRPC (port 0), real Redis, and the provider fakes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.fakes import anthropic as fake_anthropic
from tests.fakes import gemini as fake_gemini
from tests.fakes import openai as fake_openai
from tests.fakes.http import FakeHTTPServer
from tests.fakes.procs import RedisServer
from tollway.common.v1 import common_pb2
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server
from tollway.router.__main__ import build
from tollway.router.config import RouterConfig
from tollway.router.v1 import router_pb2, router_pb2_grpc


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[dict[str, FakeHTTPServer]]:
    servers = {"oa": fake_openai.make_server(), "an": fake_anthropic.make_server(), "gg": fake_gemini.make_server()}
    for s in servers.values():
        await s.start()
    yield servers
    for s in servers.values():
        await s.kill()


def catalog_text(fakes: dict[str, FakeHTTPServer], extra: str = "") -> str:
    return f"""
providers:
  oa: {{wire: openai_compat, base_url: 'http://127.0.0.1:{fakes["oa"].port}/v1', timeout_s: 5}}
  an: {{wire: anthropic, base_url: 'http://127.0.0.1:{fakes["an"].port}', timeout_s: 5}}
  gg: {{wire: gemini, base_url: 'http://127.0.0.1:{fakes["gg"].port}/v1beta', timeout_s: 5}}
models:
  small: {{provider: oa, upstream_model: fake-ok, tier: small}}
  big: {{provider: an, upstream_model: fake-ok, tier: large, capabilities: [tools, json],
         price_per_1m_tokens: {{input: 3, output: 15, cached_input: 0.3, cache_write_input: 3.75}}}}
  tooled: {{provider: gg, upstream_model: fake-tools, tier: medium, capabilities: [tools]}}
  limited: {{provider: oa, upstream_model: fake-429}}
  cached: {{provider: an, upstream_model: fake-cached, capabilities: [tools, json]}}
  cut: {{provider: gg, upstream_model: fake-cut-mid-stream}}
{extra}
routing:
  tiers: {{small: small, medium: tooled, large: big}}
"""


@pytest.fixture(scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, fakes: dict[str, FakeHTTPServer]
) -> AsyncIterator[tuple[router_pb2_grpc.RouterServiceStub, Path]]:
    path = tmp_path_factory.mktemp("router") / "models.yaml"
    path.write_text(catalog_text(fakes))
    cfg = RouterConfig(port=0, catalog=str(path), catalog_reload_s=0.1, breaker_refresh_s=0)
    spec, _ = build(cfg, MeshConfig(redis_url=redis_server.url))
    server, port, _ = await create_server(spec)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield router_pb2_grpc.RouterServiceStub(channel), path
    await channel.close()
    await server.stop(0)
    assert spec.on_stop is not None
    await spec.on_stop()


def request(model: str, text: str = "hello", **kw: Any) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        request_id=kw.pop("request_id", f"t-{time.monotonic_ns()}"),
        messages=[common_pb2.Message(role="user", content=text)],
        **kw,
    )


async def events_of(stub: router_pb2_grpc.RouterServiceStub, req: router_pb2.GenerateRequest) -> list[Any]:
    return [e async for e in stub.Generate(req, timeout=10)]


async def test_stream_is_started_deltas_completed(served: Any) -> None:
    stub, _ = served
    events = await events_of(stub, request("small"))
    kinds = [e.WhichOneof("event") for e in events]
    # Deltas that are ready together are sent as one message.
    assert kinds[0] == "started" and kinds[-1] == "completed" and set(kinds[1:-1]) == {"delta"}
    assert "".join(e.delta.text for e in events[1:-1]) == "Hello from fake-ok."
    s = events[0].started
    assert (s.model, s.provider, s.attempt_count, s.deployment) == ("small", "oa", 1, "oa/small/default")
    assert s.decision.method == "named" and s.decision.tier == router_pb2.MODEL_TIER_SMALL
    c = events[-1].completed
    assert c.finish_reason == common_pb2.FINISH_REASON_STOP and c.usage_reported and c.usage.output_tokens == 4


async def test_auto_reports_its_decision(served: Any) -> None:
    stub, _ = served
    events = await events_of(stub, request("auto", "Explain why and compare, step by step:\n1. a\n2. b\n```x```"))
    d = events[0].started.decision
    assert events[0].started.model == "big" and d.requested_model == "auto" and d.method == "auto"
    assert d.tier == router_pb2.MODEL_TIER_LARGE and d.classifier == "heuristic" and d.complexity_score >= 4.5
    assert "code" in d.reason


async def test_tool_calls_come_back_whole_in_completed(served: Any) -> None:
    stub, _ = served
    tools = [
        router_pb2.Tool(name="get_weather", parameters_json='{"type": "object"}'),
        router_pb2.Tool(name="get_time"),
    ]
    events = await events_of(stub, request("tooled", tools=tools))
    c = events[-1].completed
    assert c.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert [
        (t.name, json.loads(t.arguments_json)["city" if t.name == "get_weather" else "tz"]) for t in c.tool_calls
    ] == [("get_weather", "Paris"), ("get_time", "Europe/Paris")]


async def test_cache_reads_writes_and_cost_are_reported(served: Any) -> None:
    stub, _ = served
    req = request(
        "cached", "a b c d e f g h", message_extras=[router_pb2.MessageExtras(message_index=0, cache_breakpoint=True)]
    )
    c = (await events_of(stub, req))[-1].completed
    assert c.usage.cached_input_tokens > 0 and c.usage.cached_input_tokens <= c.usage.input_tokens
    plain = (
        await events_of(
            stub,
            request(
                "big",
                "a b c d e f g h",
                message_extras=[router_pb2.MessageExtras(message_index=0, cache_breakpoint=True)],
            ),
        )
    )[-1].completed
    assert plain.cache_write_input_tokens > 0 and plain.cost_usd_micros > 0


async def test_json_schema_answer(served: Any) -> None:
    stub, _ = served
    fmt = router_pb2.ResponseFormat(
        type=router_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        schema_name="w",
        schema_json='{"type": "object", "properties": {"n": {"type": "integer"}}}',
    )
    events = await events_of(stub, request("big", response_format=fmt))
    assert json.loads("".join(e.delta.text for e in events if e.HasField("delta"))) == {"n": 42}


async def test_mid_stream_cut_is_an_error_event_with_partial_usage(served: Any) -> None:
    stub, _ = served
    events = await events_of(stub, request("cut"))
    assert events[0].HasField("started") and events[1].HasField("delta")
    err = events[-1].error
    assert err.code == 14 and err.reason == "PROVIDER_STREAM_CUT" and err.partial_usage.output_tokens > 0


async def test_rate_limited_is_resource_exhausted_with_retry_after(served: Any) -> None:
    stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await events_of(stub, request("limited"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(info.value.trailing_metadata())["retry-after"] == "1"
    assert "scenario fake-429" in (info.value.details() or "")
    status = rpc_status.from_call(info.value)
    assert status is not None and any(d.type_url.endswith("RetryInfo") for d in status.details)


async def test_unknown_model_and_bad_input(served: Any) -> None:
    stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await events_of(stub, request("nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "small" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await events_of(stub, request("small", tools=[router_pb2.Tool(name="t")]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not support tools" in (info.value.details() or "")


async def test_the_callers_prompt_count_sizes_the_request_and_a_negative_one_is_refused(served: Any) -> None:
    stub, _ = served
    assert (await events_of(stub, request("small")))[-1].WhichOneof("event") == "completed"
    # The same prompt said to be ten million tokens fits no window: the router took the count.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await events_of(stub, request("small", prompt_tokens=10_000_000))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context window" in (info.value.details() or "")
    for call, field in (
        (lambda: events_of(stub, request("small", prompt_tokens=-1)), "prompt_tokens"),
        (
            lambda: stub.Complete(router_pb2.CompleteRequest(request=request("small", prompt_tokens=-5)), timeout=10),
            "request.prompt_tokens",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(info.value)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert [v.field for v in bad.field_violations] == [field]


async def test_list_models_and_reload(served: Any, fakes: dict[str, FakeHTTPServer]) -> None:
    stub, path = served
    before = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=5)
    big = next(m for m in before.models if m.name == "big")
    assert big.tier == router_pb2.MODEL_TIER_LARGE and list(big.capabilities) == ["json", "tools"]
    assert big.input_usd_per_1m_tokens == 3 and big.deployments[0].key == "an/big/default"
    assert dict(before.tier_models) == {"small": "small", "medium": "tooled", "large": "big"}

    path.write_text(catalog_text(fakes, "  added: {provider: oa, upstream_model: fake-ok}"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    for _ in range(100):
        after = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=5)
        if after.catalog_version != before.catalog_version:
            break
        await asyncio.sleep(0.05)
    assert "added" in [m.name for m in after.models]
    assert (await events_of(stub, request("added")))[0].started.model == "added"

    path.write_text("models: [broken")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    for _ in range(100):
        broken = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=5)
        if broken.reload_error:
            break
        await asyncio.sleep(0.05)
    assert "not valid YAML" in broken.reload_error and broken.catalog_version == after.catalog_version
    path.write_text(catalog_text(fakes))


async def test_list_breakers_covers_every_deployment(served: Any) -> None:
    stub, _ = served
    await events_of(stub, request("small"))  # one request of its own: the test passes alone or in any order
    reply = await stub.ListBreakers(router_pb2.ListBreakersRequest(), timeout=5)
    names = [b.name for b in reply.breakers]
    assert "oa/small/default" in names and names == sorted(names)
    assert reply.failure_threshold == 5 and reply.cooldown_ms == 10_000
    small = next(b for b in reply.breakers if b.name == "oa/small/default")
    assert small.state == router_pb2.BREAKER_STATE_CLOSED and small.window_request_count >= 1
    only = await stub.ListBreakers(router_pb2.ListBreakersRequest(name_prefix="gg/"), timeout=5)
    assert {b.name.split("/")[0] for b in only.breakers} == {"gg"}


async def test_transitions_page_size_is_checked(served: Any) -> None:
    stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListBreakerTransitions(router_pb2.ListBreakerTransitionsRequest(page_size=5000), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
