"""One trace per request across the mesh's processes, and a real Prometheus scraping every one.

A stack of its own, in the split layout (one process per service, so every hop is a real gRPC
call between processes), with spans exported by OTLP to a receiver in this test (the
opentelemetry-proto collector service on a grpc server) and Prometheus started by the launcher.
Nothing is mocked but the hosted provider (tests/fakes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.otlp import Receiver, otlp_receiver
from tests.support.polling import eventually_sync
from tollway.cli import _create_key
from tollway.launcher.processes import free_ports, port_free
from tollway.launcher.stack import Stack, StackOptions
from tollway.mesh.topology import load_mesh

pytestmark = pytest.mark.timeout(300)

SERVICES = ("gateway", "router", "openai_compat", "cache", "embedding", "budget", "prompts", "retrieval")
_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    with otlp_receiver() as running:
        yield running


def _ports(offset: int) -> dict[str, int]:
    """Free ports for the stack whose metrics ports (port + offset) are free as well."""
    names = ["edge", "admin", "mesh", "redis", "local_model", "prometheus", *SERVICES]
    for _ in range(50):
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        if all(port_free("127.0.0.1", ports[s] + offset) for s in SERVICES):
            return ports
    raise RuntimeError("no free ports whose metrics ports are free too")


@pytest.fixture(scope="module")
def observed(
    run_dir: Path, catalog: Path, namespaces: Path, budget_plans: Path, receiver: tuple[Receiver, int]
) -> Iterator[Stack]:
    offset = load_mesh(StackOptions().mesh_path).observability.metrics_port_offset
    options = StackOptions(
        ports=_ports(offset),
        run_dir=run_dir / "observability",
        catalog=catalog,
        with_model=False,
        services=SERVICES,
        env={
            "TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces),
            "TOLLWAY_BUDGET_PLANS": str(budget_plans),
            "TOLLWAY_OTEL_EXPORTER": "otlp",
            "TOLLWAY_OTEL_ENDPOINT": f"127.0.0.1:{receiver[1]}",
            # Batches leave every 100 ms instead of 5 s, so the test waits less for its spans.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        startup_timeout_s=90,
        layout="split",
        with_prometheus=True,
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def key(observed: Stack) -> str:
    created, _ = asyncio.run(_create_key(observed.redis_url, "observed"))
    return created


def _generate(stack: Stack, key: str, content: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": content}], "user": "u-trace"}
    with httpx.Client(base_url=stack.edge_url, timeout=30) as client:
        r = client.post("/v1/generate", json=body, headers={"authorization": f"Bearer {key}", **(headers or {})})
    assert r.status_code == 200, r.text
    events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: ")]
    assert "completed" in events[-1], events[-1]
    return events[0]["started"]


def _only(spans: list[tuple[str, trace_pb2.Span]], service: str, name: str, kind: int | None = None) -> trace_pb2.Span:
    found = [s for svc, s in spans if svc == service and s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, f"{service} {name}: {len(found)} spans; all: {[(v, s.name) for v, s in spans]}"
    return found[0]


def _attrs(span: trace_pb2.Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


def test_one_trace_spans_envoy_gateway_cache_embedding_and_router(
    observed: Stack, key: str, receiver: tuple[Receiver, int]
) -> None:
    kept = receiver[0]
    trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    caller_span = bytes.fromhex("00f067aa0ba902b7")
    # The client's own trace: Envoy continues it (a request without one gets a new trace from Envoy).
    _generate(observed, key, "trace me across the mesh", {"traceparent": f"00-{trace_id.hex()}-{caller_span.hex()}-01"})

    wanted = {"tollway-envoy", "tollway-gateway", "tollway-cache", "tollway-embedding", "tollway-router",
              "tollway-budget"}

    def services_seen() -> set[str]:
        return {svc for svc, _ in kept.trace(trace_id)}

    eventually_sync(lambda: wanted <= services_seen(), timeout_s=30, what="spans from every process of the request")
    # Settling the budget and storing the answer happen after the response: wait for their spans.
    eventually_sync(
        lambda: {"gateway.budget.commit", "/tollway.cache.v1.CacheService/Store"}
        <= {s.name for _, s in kept.trace(trace_id)},
        timeout_s=30,
        what="the budget commit and cache store spans",
    )
    spans = kept.trace(trace_id)
    by_id = {s.span_id: (svc, s) for svc, s in spans}

    envoy = [s for svc, s in spans if svc == "tollway-envoy"]
    assert envoy and all(s.trace_id == trace_id for s in envoy)
    envoy_root = next(s for s in envoy if s.parent_span_id == caller_span)
    gateway = _only(spans, "tollway-gateway", "/tollway.gateway.v1.GatewayService/Generate", _SERVER)
    assert by_id[gateway.parent_span_id][0] == "tollway-envoy", "the gateway's parent is Envoy's span"
    assert gateway.parent_span_id in {s.span_id for s in envoy}
    assert envoy_root.span_id == gateway.parent_span_id or by_id[gateway.parent_span_id][1].parent_span_id == (
        envoy_root.span_id
    )

    def chain_to(span: trace_pb2.Span, ancestor: trace_pb2.Span) -> bool:
        """Whether ``ancestor`` is on ``span``'s parent chain."""
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id][1]
            if span.span_id == ancestor.span_id:
                return True
        return False

    # Each callee's server span is the child of the gateway's client span for that call, which is
    # inside the gateway's request (directly or under the stage that made it).
    for service, method in [
        ("tollway-cache", "/tollway.cache.v1.CacheService/Lookup"),
        ("tollway-embedding", "/tollway.embedding.v1.EmbeddingService/Embed"),
        ("tollway-router", "/tollway.router.v1.RouterService/Generate"),
        ("tollway-budget", "/tollway.budget.v1.BudgetService/ReserveBudget"),
    ]:
        servers = [s for svc, s in spans if svc == service and s.kind == _SERVER and s.name.startswith(method)]
        assert servers, f"no {method} server span in {service}: {[(v, s.name) for v, s in spans]}"
        for server in servers:
            client_svc, client = by_id[server.parent_span_id]
            assert client_svc == "tollway-gateway" and client.kind == _CLIENT, (service, client.name)
            assert client.name == server.name
            assert chain_to(client, gateway), f"{client.name} is not inside the gateway's request"

    # A span per stage, under the request, with what the stage found.
    tier1 = _only(spans, "tollway-gateway", "gateway.cache.tier1")
    assert _attrs(tier1)["tollway.cache.tier"] == "miss"
    stages = ("auth", "guard.input", "embed", "cache.tier2", "budget.reserve", "stream", "budget.commit")
    for stage in (f"gateway.{s}" for s in stages):
        assert chain_to(_only(spans, "tollway-gateway", stage), gateway), stage
    router = _only(spans, "tollway-router", "/tollway.router.v1.RouterService/Generate", _SERVER)
    attempt = _only(spans, "tollway-router", "router.provider.attempt")
    assert attempt.parent_span_id == router.span_id
    assert _attrs(attempt)["tollway.provider"] == "fakeai" and _attrs(attempt)["tollway.model"] == "fake-ok"
    assert _attrs(attempt)["tollway.tokens.output"] > 0
    request = _attrs(gateway)
    assert request["tollway.model"] == "fake-ok" and request["tollway.provider"] == "fakeai"
    assert request["tollway.cache.tier"] == "miss" and request["tollway.tokens.output"] > 0
    assert "tollway.cost_usd" in request and request["tollway.status"] == "OK"


def test_a_request_without_traceparent_gets_its_trace_from_envoy(
    observed: Stack, key: str, receiver: tuple[Receiver, int]
) -> None:
    kept = receiver[0]
    before = {s.trace_id for _, s in kept.all()}
    _generate(observed, key, "a request that brings no trace")

    def new_gateway_spans() -> list[trace_pb2.Span]:
        return [
            s for svc, s in kept.all()
            if svc == "tollway-gateway" and s.kind == _SERVER and s.trace_id not in before
            and s.name.endswith("/Generate")
        ]

    eventually_sync(lambda: len(new_gateway_spans()) == 1, timeout_s=30, what="the gateway span of the new trace")
    gateway = new_gateway_spans()[0]

    def parents() -> list[tuple[str, trace_pb2.Span]]:
        return [(svc, s) for svc, s in kept.trace(gateway.trace_id) if s.span_id == gateway.parent_span_id]

    # Envoy sends its spans in batches of its own (every 5 s): its span may come after the gateway's.
    eventually_sync(lambda: len(parents()) == 1, timeout_s=30, what="the parent of the gateway's span")
    assert parents()[0][0] == "tollway-envoy"
    assert parents()[0][1].parent_span_id == b"", "Envoy's span is the root of the trace"


def _prom(stack: Stack, path: str, **params: str) -> Any:
    reply = httpx.get(f"{stack.prometheus_url}{path}", params=params, timeout=10).json()
    assert reply["status"] == "success", reply
    return reply["data"]


def _query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    data = _prom(stack, "/api/v1/query", query=promql)
    assert data["resultType"] == "vector", data
    return list(data["result"])


def test_prometheus_scrapes_every_process_and_loads_the_rules(observed: Stack, key: str) -> None:
    with httpx.Client(base_url=observed.edge_url, timeout=30) as client:
        assert client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    _generate(observed, key, "something to count")

    def down() -> list[str]:
        targets = _prom(observed, "/api/v1/targets")["activeTargets"]
        return [t["labels"].get("process", "?") for t in targets if t["health"] != "up"] or (
            ["none yet"] if not targets else []
        )

    eventually_sync(lambda: down() == [], timeout_s=60, what="every scrape target up")
    processes = {t["labels"]["process"] for t in _prom(observed, "/api/v1/targets")["activeTargets"]}
    assert processes == {*SERVICES, "envoy", "prometheus"}

    def tollway_series() -> set[str]:
        result = _query(observed, 'count by (process) ({job="tollway", __name__=~"tollway_.+"})')
        return {r["metric"]["process"] for r in result}

    # Every service's own series, the OpenAI surface's once it served a request.
    eventually_sync(
        lambda: tollway_series() == set(SERVICES), timeout_s=60, what="tollway_* series from every service"
    )

    def stage_count() -> float:
        result = _query(observed, 'sum(tollway_stage_seconds_count{service="gateway",stage="cache.tier1"})')
        return float(result[0]["value"][1]) if result else 0.0

    eventually_sync(lambda: stage_count() >= 1, timeout_s=30, what="the gateway's stage histogram")
    # Queue depths: the embedding micro-batcher's queue, the gateway's work left after answers.
    gauges = [("tollway_embedding_queued_calls", "embedding"), ("tollway_gateway_background_tasks", "gateway")]
    for gauge, process in gauges:
        assert [r["metric"]["process"] for r in _query(observed, gauge)] == [process], gauge
    envoy = _query(observed, 'envoy_server_live{job="envoy"}')
    assert envoy and envoy[0]["value"][1] == "1"

    groups = _prom(observed, "/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len([r for r in rules if r["type"] == "alerting"]) == 7
    assert len([r for r in rules if r["type"] == "recording"]) == 8

    def unhealthy() -> list[str]:
        current = [r for g in _prom(observed, "/api/v1/rules")["groups"] for r in g["rules"]]
        return [r["name"] for r in current if r.get("health") != "ok"]

    eventually_sync(lambda: unhealthy() == [], timeout_s=30, what="every rule evaluated without error")
    # Nothing is wrong with this stack: no alert fires.
    assert [a for a in _prom(observed, "/api/v1/alerts")["alerts"] if a["state"] == "firing"] == []


def test_the_launcher_lists_prometheus_as_a_supervised_child(observed: Stack) -> None:
    child = next(c for c in observed.children if c.name == "prometheus")
    assert child.alive()
    assert observed.supervisor is not None
    assert "prometheus" in {c["name"] for c in observed.supervisor.status()["children"]}


def test_retrieval_carries_the_trace_on_to_embedding(observed: Stack, receiver: tuple[Receiver, int]) -> None:
    import grpc

    from tollway.retrieval.v1 import retrieval_pb2 as pb
    from tollway.retrieval.v1 import retrieval_pb2_grpc

    kept = receiver[0]
    trace_id, caller_span = bytes.fromhex("7a1c00ffee0000000000000000000017"), bytes.fromhex("1111222233334444")
    with grpc.insecure_channel(observed.address("retrieval")) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id="traced-kb"), timeout=30)
        # A search embeds its query first (the collection is empty: nothing is found, the embed is made).
        stub.Search(
            pb.SearchRequest(collection="collections/traced-kb", query="where do the traces go"),
            metadata=(("traceparent", f"00-{trace_id.hex()}-{caller_span.hex()}-01"),),
            timeout=30,
        )
    embed = "/tollway.embedding.v1.EmbeddingService/Embed"

    def embedding_servers() -> list[trace_pb2.Span]:
        return [s for svc, s in kept.trace(trace_id) if svc == "tollway-embedding" and s.name == embed]

    def processes_done() -> set[str]:
        return {svc for svc, s in kept.trace(trace_id) if s.kind == _SERVER}

    # Each process sends its spans in its own batches: wait for both.
    eventually_sync(
        lambda: processes_done() >= {"tollway-retrieval", "tollway-embedding"},
        timeout_s=30,
        what="both processes' spans",
    )
    assert len(embedding_servers()) == 1
    spans = kept.trace(trace_id)
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    search = _only(spans, "tollway-retrieval", "/tollway.retrieval.v1.RetrievalService/Search", _SERVER)
    assert search.parent_span_id == caller_span
    client_svc, client = by_id[embedding_servers()[0].parent_span_id]
    assert (client_svc, client.kind, client.name) == ("tollway-retrieval", _CLIENT, embed)
    assert client.parent_span_id == search.span_id


def test_an_openai_request_is_one_trace_through_the_openai_surface(
    observed: Stack, key: str, receiver: tuple[Receiver, int]
) -> None:
    kept = receiver[0]
    trace_id, caller_span = bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331")
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "trace the OpenAI path"}]}
    headers = {"authorization": f"Bearer {key}", "traceparent": f"00-{trace_id.hex()}-{caller_span.hex()}-01"}
    with httpx.Client(base_url=observed.edge_url, timeout=30) as client:
        r = client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text

    def servers() -> set[str]:
        return {svc for svc, s in kept.trace(trace_id) if s.kind == _SERVER}

    wanted = {"tollway-envoy", "tollway-openai_compat", "tollway-gateway", "tollway-router"}
    eventually_sync(lambda: wanted <= servers(), timeout_s=30, what="server spans of every hop")
    spans = kept.trace(trace_id)
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    surface = next(s for svc, s in spans if svc == "tollway-openai_compat" and s.kind == _SERVER)
    assert by_id[surface.parent_span_id][0] == "tollway-envoy"
    gateway = next(s for svc, s in spans if svc == "tollway-gateway" and s.kind == _SERVER)
    client_svc, client = by_id[gateway.parent_span_id]
    assert (client_svc, client.kind) == ("tollway-openai_compat", _CLIENT)
    assert client.parent_span_id == surface.span_id
