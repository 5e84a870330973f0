"""Cache service settings, from ``TOLLWAY_CACHE_*`` (Redis comes from ``TOLLWAY_REDIS_URL``)."""

from __future__ import annotations

from tollway.mesh.frozen import frozen


@frozen
class CacheConfig:
    """Attributes:
    port: gRPC port (``TOLLWAY_CACHE_PORT``).
    metrics_port: Prometheus port; 0 turns it off.
    namespaces_path: The namespaces YAML file; empty means the built-in
        ``tollway/cache/namespaces.yaml``. Reloaded on SIGHUP and when its mtime changes.
    key_prefix: Prefix of every Redis key the cache writes.
    dim: Embedding dimension every vector must have (384 for all-MiniLM-L6-v2).
    hnsw_m: hnswlib graph degree M.
    hnsw_ef_construction: hnswlib ef_construction (insert quality vs time).
    hnsw_ef_search: hnswlib ef at query time (recall vs latency).
    index_initial_capacity: Rows allocated for a new namespace's index (it doubles when full).
    search_k: Neighbours fetched per tier-2 search before filtering.
    search_max_k: The most neighbours a search widens to when the nearest are all filtered out.
    max_verified: Tier-2 candidates re-read from Redis and checked per lookup.
    snapshot_dir: Where this replica writes index snapshots; empty turns them off (every
        start then rebuilds from Redis). Give each replica its own directory.
    snapshot_interval_s: Seconds between snapshots while the index changes (0: only at stop).
    sweep_interval_s: Seconds between deletions of entries past their stale grace period.
    stats_flush_interval_s: Seconds between writes of the counters to Redis.
    namespaces_poll_s: Seconds between checks of the namespaces file's mtime.
    events_maxlen: Approximate length the add/delete event stream is trimmed to.
    follow_block_ms: How long one read of the event stream waits for news.
    rebuild_threads: Threads hnswlib uses while building the index at start.
    """

    port: int = 50052
    metrics_port: int = 0
    namespaces_path: str = ""
    key_prefix: str = "tw:cache"
    dim: int = 384
    hnsw_m: int = 12
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 64
    index_initial_capacity: int = 1024
    search_k: int = 8
    search_max_k: int = 256
    max_verified: int = 4
    snapshot_dir: str = ""
    snapshot_interval_s: float = 600.0
    sweep_interval_s: float = 5.0
    stats_flush_interval_s: float = 1.0
    namespaces_poll_s: float = 2.0
    events_maxlen: int = 1_000_000
    follow_block_ms: int = 1000
    rebuild_threads: int = 2

    def __post_init__(self) -> None:
        positive = (
            "dim",
            "hnsw_m",
            "hnsw_ef_construction",
            "hnsw_ef_search",
            "index_initial_capacity",
            "search_k",
            "search_max_k",
            "max_verified",
            "sweep_interval_s",
            "stats_flush_interval_s",
            "namespaces_poll_s",
            "events_maxlen",
            "follow_block_ms",
            "rebuild_threads",
        )
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"Config 'TOLLWAY_CACHE_{name.upper()}' has value {value!r}. Must be above 0.")
        if self.search_max_k < self.search_k:
            raise ValueError(
                f"Config 'TOLLWAY_CACHE_SEARCH_MAX_K' has value {self.search_max_k!r}. "
                f"Must be at least TOLLWAY_CACHE_SEARCH_K ({self.search_k})."
            )
        if self.snapshot_interval_s < 0:
            raise ValueError(
                f"Config 'TOLLWAY_CACHE_SNAPSHOT_INTERVAL_S' has value {self.snapshot_interval_s!r}. Must be 0 or more."
            )
        if not self.key_prefix:
            raise ValueError("Config 'TOLLWAY_CACHE_KEY_PREFIX' has value ''. Must not be empty.")
