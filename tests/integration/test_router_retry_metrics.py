"""The router counts its retries (tollway_router_retries_total) and makes one span per provider attempt."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from tests.integration.test_router_engine import Fakes, Sleeps, chat, fakes, make_router, run, started
from tollway.mesh import tracing

__all__ = ["fakes"]  # the fixture, shared with test_router_engine


def _retries(model: str, kind: str, how: str) -> float:
    labels = {"model": model, "kind": kind, "how": how}
    return REGISTRY.get_sample_value("tollway_router_retries_total", labels) or 0.0


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()


async def test_a_retry_after_a_429_is_counted_and_each_attempt_is_a_span(
    fakes: Fakes, spans: InMemorySpanExporter
) -> None:
    before = _retries("limited-m", "RATE_LIMITED", "backoff")
    router = make_router(
        fakes,
        {"limited-m": {"provider": "an", "upstream_model": "fake-429-then-ok"}},
        sleep=Sleeps(),
    )
    events = await run(router, chat("limited-m", policy="background", request_id="retry-metrics-1"))
    assert started(events).attempt_count == 2
    assert _retries("limited-m", "RATE_LIMITED", "backoff") == before + 1
    attempts = [s for s in spans.get_finished_spans() if s.name == "router.provider.attempt"]
    assert [s.attributes["tollway.attempt"] for s in attempts] == [1, 2]
    assert attempts[0].status.description.startswith("RATE_LIMITED")
    assert attempts[1].status.is_ok and attempts[1].attributes["tollway.tokens.output"] > 0


async def test_an_answer_at_the_first_attempt_counts_no_retry(fakes: Fakes) -> None:
    before = _retries("fine-m", "RATE_LIMITED", "backoff") + _retries("fine-m", "RATE_LIMITED", "another_deployment")
    router = make_router(fakes, {"fine-m": {"provider": "an", "upstream_model": "fake-ok"}}, sleep=Sleeps())
    await run(router, chat("fine-m"))
    after = _retries("fine-m", "RATE_LIMITED", "backoff") + _retries("fine-m", "RATE_LIMITED", "another_deployment")
    assert after == before
