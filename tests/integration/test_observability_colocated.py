"""One trace per request in the co-located layout (`make run`'s): the `core` process's members call each
other in-process, and the trace still runs from Envoy through the OpenAI surface, the gateway and the router
with correct parent links (in-process calls are client spans; the callee's stages are their children)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.otlp import Receiver, otlp_receiver
from tests.support.polling import eventually_sync
from tollway.cli import _create_key
from tollway.launcher.processes import free_ports
from tollway.launcher.stack import Stack, StackOptions

pytestmark = pytest.mark.timeout(300)

SERVICES = ("gateway", "router", "openai_compat", "cache", "embedding", "budget")


@pytest.fixture(scope="module")
def traced(run_dir: Path, catalog: Path, namespaces: Path, budget_plans: Path) -> Iterator[tuple[Stack, Receiver]]:
    names = ["edge", "admin", "mesh", "redis", "local_model", *SERVICES]
    with otlp_receiver() as (receiver, port):
        options = StackOptions(
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run_dir / "observability-colocated",
            catalog=catalog,
            with_model=False,
            services=SERVICES,
            env={
                "TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces),
                "TOLLWAY_BUDGET_PLANS": str(budget_plans),
                "TOLLWAY_OTEL_EXPORTER": "otlp",
                "TOLLWAY_OTEL_ENDPOINT": f"127.0.0.1:{port}",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
            startup_timeout_s=90,
            layout="colocated",
        )
        with Stack(options) as stack:
            yield stack, receiver


def test_the_core_process_keeps_one_trace_across_in_process_calls(traced: tuple[Stack, Receiver]) -> None:
    stack, kept = traced
    key, _ = asyncio.run(_create_key(stack.redis_url, "colocated"))
    trace_id, caller_span = bytes.fromhex("5b8efff798038103d269b633813fc60c"), bytes.fromhex("eee19b7ec3c1b174")
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "trace the core process"}]}
    headers = {"authorization": f"Bearer {key}", "traceparent": f"00-{trace_id.hex()}-{caller_span.hex()}-01"}
    with httpx.Client(base_url=stack.edge_url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200

    def names() -> set[str]:
        return {s.name for _, s in kept.trace(trace_id)}

    eventually_sync(
        lambda: {"router.provider.attempt", "gateway.budget.commit"} <= names(), timeout_s=30, what="the core's spans"
    )
    eventually_sync(
        lambda: any(svc == "tollway-envoy" for svc, _ in kept.trace(trace_id)), timeout_s=30, what="Envoy's span"
    )
    spans = kept.trace(trace_id)
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    assert {svc for svc, _ in spans} == {"tollway-envoy", "tollway-core", "tollway-embedding"}
    surface = next(s for svc, s in spans if svc == "tollway-core" and s.name.startswith("openai_compat"))
    assert surface.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert by_id[surface.parent_span_id][0] == "tollway-envoy"

    def ancestors(span: trace_pb2.Span) -> list[str]:
        out = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id][1]
            out.append(span.name)
        return out

    # The provider attempt runs in the router, called in-process by the gateway, called in-process by
    # the OpenAI surface: its chain goes back to the surface's span, and on to Envoy's.
    attempt = next(s for _, s in spans if s.name == "router.provider.attempt")
    chain = ancestors(attempt)
    assert chain[0].endswith(("RouterService/Complete", "RouterService/Generate")), chain
    assert chain[1].endswith(("GatewayService/Complete", "GatewayService/Generate")), chain
    assert surface.name in chain
    assert by_id[surface.parent_span_id][1].name in chain
    # The embedding service runs apart: its server span is the child of the core's client span.
    embed = next(s for svc, s in spans if svc == "tollway-embedding" and s.kind == trace_pb2.Span.SPAN_KIND_SERVER)
    assert by_id[embed.parent_span_id][0] == "tollway-core"
