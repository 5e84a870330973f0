"""The router's Prometheus metrics (the shared RPC ones live in tollway.mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Gauge

from tollway.mesh.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

# 0 closed, 1 half-open, 2 open: a graph of the gauge reads as "how broken".
BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

BREAKER_STATE = Gauge(
    "tollway_router_breaker_state",
    "Circuit breaker state per deployment as this replica last saw it: 0 closed, 1 half-open, 2 open.",
    ["breaker"],
)
BREAKER_TRANSITIONS = LoopCounter(
    "tollway_router_breaker_transitions_total",
    "Breaker transitions made by this replica (sum over replicas for the total).",
    ["breaker", "from_state", "to_state"],
)
BREAKER_REJECTIONS = LoopCounter(
    "tollway_router_breaker_rejections_total",
    "Calls not made because the deployment's breaker was open or its probe was in flight.",
    ["breaker"],
)
BREAKER_STORE_ERRORS = LoopCounter(
    "tollway_router_breaker_store_errors_total",
    "Breaker reads or writes that failed against Redis (the call was allowed).",
)
ATTEMPTS = LoopCounter(
    "tollway_router_attempts_total",
    "Provider calls, by provider, model and outcome (ok, or the error kind).",
    ["provider", "model", "outcome"],
)
RETRIES = LoopCounter(
    "tollway_router_retries_total",
    "Calls made again for the same model after a retryable failure, by model, the failure's kind and how "
    "(another_deployment at once, or backoff on the same ones).",
    ["model", "kind", "how"],
)
FALLBACKS = LoopCounter(
    "tollway_router_fallbacks_total",
    "Requests that left a model for the next one in its chain, by the model left and why.",
    ["model", "reason"],
)
TTFT_SECONDS = LoopHistogram(
    "tollway_router_provider_ttft_seconds",
    "Time from the provider request to its first output, by provider and model.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
DECISIONS = LoopCounter(
    "tollway_router_routing_decisions_total",
    "Models picked for requests, by how (named, auto tier, cascade) and tier.",
    ["how", "tier"],
)
PROVIDER_TIMEOUTS = LoopCounter(
    "tollway_router_provider_timeouts_total",
    "Provider calls given up on because a timeout ran out, by provider, deployment and which one "
    "(connect_timeout_s, first_token_timeout_s, stall_timeout_s, timeout_s, request deadline).",
    ["provider", "deployment", "timeout"],
)
STREAM_FAILURES = LoopCounter(
    "tollway_router_stream_failures_total",
    "Streams that failed after text was sent (ended with an error event).",
    ["provider", "model"],
)
CATALOG_RELOADS = LoopCounter(
    "tollway_router_catalog_reloads_total",
    "Catalog reload attempts, by result (ok or error).",
    ["result"],
)
LIMIT_SKIPS = LoopCounter(
    "tollway_router_limit_skips_total",
    "Deployments passed over because a call would exceed their provider limit, by deployment and limit (rpm, tpm).",
    ["deployment", "limit"],
)
LIMIT_WAITS = LoopCounter(
    "tollway_router_limit_waits_total",
    "Requests that waited for a provider-limit window because every deployment was at its limit.",
    ["model"],
)
LIMIT_STORE_ERRORS = LoopCounter(
    "tollway_router_limit_store_errors_total",
    "Provider-limit reads or writes that failed against Redis (the call was allowed).",
)
