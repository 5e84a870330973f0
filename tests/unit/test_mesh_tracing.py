"""Stages: a span each when tracing is on (children of the current span), a histogram always."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY

from tollway.mesh import tracing


def _count(service: str, stage: str) -> float:
    return REGISTRY.get_sample_value("tollway_stage_seconds_count", {"service": service, "stage": stage}) or 0.0


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # not the global one: the test stays isolated
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()


def test_with_tracing_off_a_stage_is_timed_and_makes_no_span() -> None:
    before = _count("svc-off", "work")
    with tracing.stage("svc-off", "work") as span:
        assert span is None
    assert _count("svc-off", "work") == before + 1
    assert tracing.start("svc-off", "stream") is None
    tracing.end(None, "ignored")  # safe with tracing off
    tracing.annotate(None, {"k": 1})


def test_a_stage_is_a_child_of_the_current_span_and_parents_what_runs_in_it(spans: InMemorySpanExporter) -> None:
    with tracing.stage("gateway", "outer", **{"tollway.model": "m"}) as outer:
        with tracing.stage("gateway", "cache.tier1") as inner:
            tracing.annotate(inner, {"tollway.cache.tier": "miss"})
        tracing.annotate(None, {"tollway.cost_usd": 0.5})  # the current span: outer
    done = {s.name: s for s in spans.get_finished_spans()}
    assert set(done) == {"gateway.outer", "gateway.cache.tier1"}
    assert done["gateway.cache.tier1"].parent.span_id == outer.get_span_context().span_id
    assert done["gateway.cache.tier1"].attributes["tollway.cache.tier"] == "miss"
    assert done["gateway.outer"].attributes == {"tollway.model": "m", "tollway.cost_usd": 0.5}


def test_an_error_leaving_a_stage_marks_its_span_and_goes_on(spans: InMemorySpanExporter) -> None:
    before = _count("gateway", "failing")
    with pytest.raises(KeyError), tracing.stage("gateway", "failing"):
        raise KeyError("nope")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert _count("gateway", "failing") == before + 1


def test_a_started_span_is_not_current_and_ends_with_its_attributes(spans: InMemorySpanExporter) -> None:
    with tracing.stage("router", "request") as request:
        attempt = tracing.start("router", "provider.attempt", **{"tollway.provider": "fakeai"})
        with tracing.stage("router", "inside"):
            pass
        tracing.end(attempt, "CONNECTION: reset", **{"tollway.tokens.output": 3})
    done = {s.name: s for s in spans.get_finished_spans()}
    assert done["router.provider.attempt"].parent.span_id == request.get_span_context().span_id
    # The stage that ran while the attempt was open is the request's child, not the attempt's.
    assert done["router.inside"].parent.span_id == request.get_span_context().span_id
    assert done["router.provider.attempt"].attributes == {"tollway.provider": "fakeai", "tollway.tokens.output": 3}
    assert done["router.provider.attempt"].status.description == "CONNECTION: reset"


def test_a_sample_ratio_outside_0_to_1_stops_the_service_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from tollway.mesh import telemetry
    from tollway.mesh.config import ConfigError, MeshConfig, load_config

    monkeypatch.setattr(telemetry, "_provider", None)
    cfg = load_config(MeshConfig, env={"TOLLWAY_OTEL_EXPORTER": "console", "TOLLWAY_OTEL_SAMPLE_RATIO": "1.5"})
    with pytest.raises(ConfigError, match=r"TOLLWAY_OTEL_SAMPLE_RATIO.*1\.5"):
        telemetry.tracer_provider("svc", cfg)
    assert telemetry._provider is None


def test_the_sampler_keeps_the_configured_share_of_new_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    from tollway.mesh import telemetry
    from tollway.mesh.config import MeshConfig, load_config

    monkeypatch.setattr(telemetry, "_provider", None)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)  # keep the process's global
    cfg = load_config(MeshConfig, env={"TOLLWAY_OTEL_EXPORTER": "none", "TOLLWAY_OTEL_SAMPLE_RATIO": "0.1"})
    provider = telemetry.tracer_provider("svc", cfg)
    try:
        tracer = provider.get_tracer("t")
        kept = sum(tracer.start_span("s").get_span_context().trace_flags.sampled for _ in range(4000))
        assert 250 < kept < 550  # 10 % of 4000 is 400; the bounds are ~7 standard deviations apart
    finally:
        tracing.disable()


def test_clients_made_later_find_the_process_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    from tollway.mesh import telemetry
    from tollway.mesh.config import MeshConfig, load_config

    monkeypatch.setattr(telemetry, "_provider", None)
    assert telemetry.current_provider() is None  # tracing off: channels get no interceptors
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    provider = telemetry.tracer_provider("svc", load_config(MeshConfig, env={"TOLLWAY_OTEL_EXPORTER": "none"}))
    try:
        assert telemetry.current_provider() is provider
    finally:
        tracing.disable()


async def test_an_http_request_continues_the_trace_of_its_traceparent(spans: InMemorySpanExporter) -> None:
    from opentelemetry.trace import SpanKind, get_current_span

    seen = {}

    async def app(scope: object, receive: object, send: object) -> None:
        seen["span"] = get_current_span().get_span_context()

    middleware = tracing.TraceContextMiddleware(app, "surface")
    header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [(b"traceparent", header)]}
    await middleware(scope, None, None)
    (span,) = spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER and span.name == "surface POST"
    assert f"{span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert seen["span"].span_id == span.context.span_id  # current while the app runs


async def test_with_tracing_off_http_requests_pass_through() -> None:
    calls = []

    async def app(scope: object, receive: object, send: object) -> None:
        calls.append(scope)

    await tracing.TraceContextMiddleware(app, "surface")({"type": "http", "headers": []}, None, None)
    assert len(calls) == 1
