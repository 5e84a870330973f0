"""The guards' Prometheus metrics: decisions, structured-output outcomes, context trims."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter

from tollway.gateway.guard.context import TrimReport
from tollway.gateway.guard.decisions import GuardDecision

DECISIONS = Counter(
    "tollway_gateway_guard_decisions_total",
    "Guard rules applied, by stage (input, output), rule (pii.email, injection, topic.x, limits.x) and action.",
    ["stage", "rule", "action"],
)
STRUCTURED = Counter(
    "tollway_gateway_structured_outputs_total",
    "Structured-output requests by model and outcome (valid, repaired, retried, failed).",
    ["model", "outcome"],
)
STRUCTURED_RETRIES = Counter(
    "tollway_gateway_structured_retries_total", "Extra model calls made to get valid structured output.", ["model"]
)
CONTEXT_TRIMS = Counter(
    "tollway_gateway_context_trims_total", "Requests whose older turns were summarised or dropped.", ["model", "how"]
)
CONTEXT_TOKENS_SAVED = Counter(
    "tollway_gateway_context_tokens_saved_total", "Prompt tokens removed by context trimming.", ["model"]
)


def observe_decisions(decisions: Iterable[GuardDecision]) -> None:
    """Counts each decision once per item it applied to."""
    for d in decisions:
        DECISIONS.labels(d.stage, d.rule, d.action).inc(d.count)


def observe_structured(model: str, attempts: int, repaired: bool, ok: bool) -> None:
    """Counts one structured-output request: its outcome and the retries it took."""
    outcome = "failed" if not ok else "retried" if attempts > 1 else "repaired" if repaired else "valid"
    STRUCTURED.labels(model, outcome).inc()
    if attempts > 1:
        STRUCTURED_RETRIES.labels(model).inc(attempts - 1)


def observe_trim(model: str, report: TrimReport) -> None:
    """Counts a context trim (nothing when the request fit)."""
    if report.trimmed:
        CONTEXT_TRIMS.labels(model, "summarised" if report.summarised else "dropped").inc()
        CONTEXT_TOKENS_SAVED.labels(model).inc(report.tokens_saved)
