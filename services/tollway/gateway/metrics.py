"""Gateway metrics: requests, tokens, time to first token."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tollway.gateway.callrecord import CallRecord
from tollway.mesh.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "tollway_gateway_requests_total",
    "Requests by model, cache tier and final status.",
    ["model", "cache_tier", "status"],
)
TOKENS = Counter("tollway_gateway_tokens_total", "Tokens by model and direction.", ["model", "direction"])
TTFT_SECONDS = Histogram("tollway_gateway_ttft_seconds", "Time to the first delta.", buckets=LATENCY_BUCKETS)
LATENCY_SECONDS = Histogram(
    "tollway_gateway_request_seconds", "Time from request to the end of the answer.", buckets=LATENCY_BUCKETS
)


def observe_request(record: CallRecord) -> None:
    """Counts a finished request (its record is complete)."""
    model = record.model
    REQUESTS.labels(model, record.cache_tier.value, record.status).inc()
    TOKENS.labels(model, "input").inc(record.input_tokens)
    TOKENS.labels(model, "output").inc(record.output_tokens)
    LATENCY_SECONDS.observe(record.latency_ms / 1000)


CACHE_ERRORS = Counter(
    "tollway_gateway_cache_errors_total", "Cache or embedding calls that failed (the request went on).", ["op"]
)
