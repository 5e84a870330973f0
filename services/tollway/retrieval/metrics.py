"""The retrieval service's Prometheus metrics (the shared RPC ones live in tollway.mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INDEXED_CHUNKS = Gauge(
    "tollway_retrieval_indexed_chunks", "Chunks in this replica's index, per collection.", ["collection"]
)
INDEX_EVENTS = Counter("tollway_retrieval_index_events_total", "Index events applied from the stream by this replica.")
INGESTED = Counter(
    "tollway_retrieval_ingest_events_total",
    "Ingest events handled by this replica's workers, by outcome "
    "(indexed, unchanged, superseded, gone, retried, dead).",
    ["outcome"],
)
INGESTED_CHUNKS = Counter("tollway_retrieval_ingested_chunks_total", "Chunks embedded and committed by this replica.")
SEARCH_SECONDS = Histogram(
    "tollway_retrieval_search_seconds",
    "Search time in the index (query embedding excluded), by mode.",
    ["mode"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
