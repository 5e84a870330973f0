"""Prometheus metrics of the embedding service (the shared RPC metrics live in tollway.mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUED_CALLS = Gauge(
    "tollway_embedding_queued_calls",
    "Embed calls waiting for the model worker (the micro-batcher's queue), by model (E5: and .query or .passage).",
    ["model"],
)
TEXTS = Counter(
    "tollway_embedding_texts_total",
    "Texts embedded, by model and by where the vector came from (lru, redis or model).",
    ["model", "source"],
)
BATCH_TEXTS = Histogram(
    "tollway_embedding_batch_texts",
    "Texts per model run after micro-batching.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_CALLS = Histogram(
    "tollway_embedding_batch_calls",
    "Calls sharing one model run.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
TRUNCATED = Counter(
    "tollway_embedding_truncated_total",
    "Texts cut at the model's token limit (computed by the model, not served from the cache).",
    ["model"],
)
STORE_ERRORS = Counter(
    "tollway_embedding_store_errors_total",
    "Redis cache reads or writes that failed and were skipped.",
    ["operation"],
)
