"""The cache's Prometheus metrics (shared RPC metrics live in tollway.mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LOOKUPS = Counter(
    "tollway_cache_lookups_total",
    "Cache lookups by namespace and outcome (exact_hit, semantic_hit, stale_hit, miss, skip).",
    ["namespace", "outcome"],
)
CHECK_REJECTIONS = Counter(
    "tollway_cache_check_rejections_total",
    "Tier-2 candidates above the threshold that the second check rejected, by namespace.",
    ["namespace"],
)
STORES = Counter("tollway_cache_stores_total", "Answers stored, by namespace.", ["namespace"])
REMOVALS = Counter(
    "tollway_cache_removals_total",
    "Entries removed, by namespace and cause (eviction, invalidation, expiry, replaced).",
    ["namespace", "cause"],
)
QUALITY_AGREEMENT = Histogram(
    "tollway_cache_quality_agreement",
    "Agreement between a sampled semantic hit and a fresh answer, by namespace and method "
    "(token_f1 in [0, 1], embedding_cosine in [-1, 1]).",
    ["namespace", "method"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0),
)
INDEXED = Gauge(
    "tollway_cache_indexed_entries",
    "Entries in this replica's tier-2 index, by namespace.",
    ["namespace"],
)
EVENTS_APPLIED = Counter(
    "tollway_cache_index_events_applied",
    "Adds and deletes from the shared event stream applied to this replica's index.",
)
