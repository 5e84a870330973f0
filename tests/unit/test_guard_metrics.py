"""The guards' metrics count decisions, structured-output outcomes and trims."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tollway.gateway.guard import metrics
from tollway.gateway.guard.context import TrimReport
from tollway.gateway.guard.decisions import GuardDecision


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_decisions_count_each_item() -> None:
    before = value("tollway_gateway_guard_decisions_total", stage="input", rule="pii.email", action="redact")
    metrics.observe_decisions([GuardDecision("input", "pii.email", "redact", 3)])
    after = value("tollway_gateway_guard_decisions_total", stage="input", rule="pii.email", action="redact")
    assert after - before == 3


def test_structured_outcomes_and_retries() -> None:
    name = "tollway_gateway_structured_outputs_total"
    before = {o: value(name, model="m1", outcome=o) for o in ("valid", "repaired", "retried", "failed")}
    retries = value("tollway_gateway_structured_retries_total", model="m1")
    metrics.observe_structured("m1", attempts=1, repaired=False, ok=True)
    metrics.observe_structured("m1", attempts=1, repaired=True, ok=True)
    metrics.observe_structured("m1", attempts=2, repaired=False, ok=True)
    metrics.observe_structured("m1", attempts=3, repaired=False, ok=False)
    for outcome in before:
        assert value(name, model="m1", outcome=outcome) - before[outcome] == 1
    assert value("tollway_gateway_structured_retries_total", model="m1") - retries == 3


def test_trims_count_only_when_something_was_removed() -> None:
    saved = value("tollway_gateway_context_tokens_saved_total", model="m2")
    metrics.observe_trim("m2", TrimReport(100, 100, 200))
    metrics.observe_trim("m2", TrimReport(900, 300, 400, removed_messages=5, summarised=True, summary_tokens=40))
    assert value("tollway_gateway_context_tokens_saved_total", model="m2") - saved == 600
    assert value("tollway_gateway_context_trims_total", model="m2", how="summarised") == 1
