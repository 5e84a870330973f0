"""Gateway metrics: requests, tokens, time to first token, cost, stages."""

from __future__ import annotations

from prometheus_client import Gauge

from tollway.gateway.callrecord import CallRecord
from tollway.mesh.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

REQUESTS = LoopCounter(
    "tollway_gateway_requests_total",
    "Requests by model, cache tier and final status.",
    ["model", "cache_tier", "status"],
)
TOKENS = LoopCounter("tollway_gateway_tokens_total", "Tokens by model and direction.", ["model", "direction"])
TTFT_SECONDS = LoopHistogram("tollway_gateway_ttft_seconds", "Time to the first delta.", buckets=LATENCY_BUCKETS)
LATENCY_SECONDS = LoopHistogram(
    "tollway_gateway_request_seconds", "Time from request to the end of the answer.", buckets=LATENCY_BUCKETS
)


BACKGROUND_TASKS = Gauge(
    "tollway_gateway_background_tasks",
    "Work a request left for after its answer (cache stores, budget settlements, quality samples) still running.",
)
# Cost attribution (issue 17). The alerts in deploy/prometheus/alerts.yml read these names.
COST_USD = LoopCounter(
    "tollway_gateway_cost_usd_total", "Cost of answered requests in US dollars.", ["tenant", "feature", "model"]
)
# A series per end user: bounded by the users who spend, and what the per-user cost alert needs.
USER_COST_USD = LoopCounter(
    "tollway_gateway_user_cost_usd_total", "Cost in US dollars by end user.", ["tenant", "user"]
)
REQUEST_TOKENS = LoopHistogram(
    "tollway_gateway_request_tokens",
    "Tokens of one request (input + output), by model: the tokens-per-request alert compares its mean.",
    ["model"],
    buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144),
)
OUTPUT_TOKENS_PER_SECOND = LoopHistogram(
    "tollway_gateway_output_tokens_per_second",
    "Answer tokens per second after the first token, by model (requests with two or more output tokens).",
    ["model"],
    buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640),
)


def observe_request(record: CallRecord) -> None:
    """Counts a finished request (its record is complete)."""
    model = record.model
    REQUESTS.labels(model, record.cache_tier.value, record.status).inc()
    TOKENS.labels(model, "input").inc(record.input_tokens)
    TOKENS.labels(model, "output").inc(record.output_tokens)
    LATENCY_SECONDS.observe(record.latency_ms / 1000)
    if record.cost_usd > 0:
        COST_USD.labels(record.tenant, record.feature, model).inc(record.cost_usd)
        USER_COST_USD.labels(record.tenant, record.user).inc(record.cost_usd)
    tokens = record.input_tokens + record.output_tokens
    if tokens:
        REQUEST_TOKENS.labels(model).observe(tokens)
    streaming_ms = record.latency_ms - record.ttft_ms
    if record.output_tokens > 1 and record.ttft_ms and streaming_ms > 0:
        OUTPUT_TOKENS_PER_SECOND.labels(model).observe((record.output_tokens - 1) * 1000 / streaming_ms)


CACHE_ERRORS = LoopCounter(
    "tollway_gateway_cache_errors_total", "Cache or embedding calls that failed (the request went on).", ["op"]
)
# Grounded requests (issue 15): how many sources fitted into the context.
RETRIEVED_CHUNKS = LoopHistogram(
    "tollway_gateway_grounding_sources",
    "Sources put into a grounded request's context.",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 100),
)
