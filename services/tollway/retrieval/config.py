"""Retrieval service settings, from ``TOLLWAY_RETRIEVAL_*`` (Redis comes from ``TOLLWAY_REDIS_URL``)."""

from __future__ import annotations

from tollway.mesh.frozen import frozen


@frozen
class RetrievalConfig:
    """Retrieval service settings; each field is ``TOLLWAY_RETRIEVAL_<FIELD>``.

    Attributes:
        port: gRPC port.
        metrics_port: Prometheus endpoint port; 0 turns it off.
        embedding_addr: Where EmbeddingService listens (required: chunks and queries are embedded there).
        cache_addr: Where CacheService listens; empty means no response cache is told when documents
            change (grounded entries then live until their TTL).
        key_prefix: Prefix of every Redis key the service writes.
        max_document_chars: The longest document text accepted.
        workers: Ingestion workers per replica (each handles one event at a time; two let the embedding
            service batch their chunks together).
        embed_batch: Chunks per embedding call.
        embed_timeout_s: Deadline of one embedding call.
        claim_idle_ms: How long an event given to a worker may stay unacknowledged before another
            worker takes it over (a worker that died mid-batch).
        max_attempts: Tries of an event before it is parked in the dead-letter stream.
        backoff_base_ms: Wait before an event's second try; doubles with each try.
        backoff_max_ms: The longest wait between tries.
        hnsw_m: hnswlib graph degree M.
        hnsw_ef_construction: hnswlib ef_construction.
        hnsw_ef_search: hnswlib ef at query time.
        exact_below: Filtered vector searches over at most this many chunks are exact.
        bm25_k1: BM25 k1.
        bm25_b: BM25 b.
        bm25_bigrams: Whether neighbouring word pairs are BM25 terms too (phrase matches score higher).
        bm25_bigram_weight: Default weight of word-pair matches, added to the words' BM25 score (0 to 1).
        candidates: Chunks each ranking contributes to hybrid fusion.
        keyword_weight: Default keyword weight of hybrid fusion (0 to 1).
        ensemble_keyword_weight: The same for a collection with ensemble models (0 to 1): with two
            vector rankings the keyword ranking does best with less weight (0.3 on both tune halves of
            docs/benchmarks.md, issue 15).
        ensemble_weight: Default share of the vector rankings' weight given to a collection's
            ensemble models (0 to 1).
        fusion: Default fusion method: ``weighted`` or ``rrf``.
        feedback_count: Default pseudo-relevance feedback results (0: off).
        snapshot_dir: Where this replica writes index snapshots; empty turns them off.
        snapshot_interval_s: Seconds between snapshots while the indexes change (0: only at stop).
        events_maxlen: Approximate length the index event stream is trimmed to.
        follow_block_ms: How long one read of the index event stream waits for news.
        migration_poll_s: Seconds between looks for embedding-model migrations to back-fill or switch.
    """

    port: int = 50057
    metrics_port: int = 0
    embedding_addr: str = "127.0.0.1:50056"
    cache_addr: str = ""
    key_prefix: str = "tw:retrieval"
    max_document_chars: int = 1_000_000
    workers: int = 2
    embed_batch: int = 32
    embed_timeout_s: float = 60.0
    claim_idle_ms: int = 30_000
    max_attempts: int = 5
    backoff_base_ms: int = 500
    backoff_max_ms: int = 60_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 96
    exact_below: int = 4096
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    bm25_bigrams: bool = True
    bm25_bigram_weight: float = 0.25
    candidates: int = 100
    keyword_weight: float = 0.4
    ensemble_keyword_weight: float = 0.3
    ensemble_weight: float = 0.5
    fusion: str = "weighted"
    feedback_count: int = 0
    snapshot_dir: str = ""
    snapshot_interval_s: float = 600.0
    events_maxlen: int = 1_000_000
    follow_block_ms: int = 1000
    migration_poll_s: float = 1.0

    def __post_init__(self) -> None:
        positive = (
            "max_document_chars", "workers", "embed_batch", "embed_timeout_s", "claim_idle_ms", "max_attempts",
            "backoff_base_ms", "backoff_max_ms", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search",
            "candidates", "events_maxlen", "follow_block_ms", "bm25_k1", "migration_poll_s",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"Config 'TOLLWAY_RETRIEVAL_{name.upper()}' has value {value!r}. Must be above 0.")
        for name in ("exact_below", "snapshot_interval_s", "feedback_count", "bm25_b"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"Config 'TOLLWAY_RETRIEVAL_{name.upper()}' has value {getattr(self, name)!r}. Must be 0 or more."
                )
        for name in ("keyword_weight", "ensemble_keyword_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"Config 'TOLLWAY_RETRIEVAL_{name.upper()}' has value {getattr(self, name)!r}. Must be 0 to 1."
                )
        if not 0.0 <= self.ensemble_weight <= 1.0:
            raise ValueError(
                f"Config 'TOLLWAY_RETRIEVAL_ENSEMBLE_WEIGHT' has value {self.ensemble_weight!r}. Must be 0 to 1."
            )
        if not 0.0 <= self.bm25_bigram_weight <= 1.0:
            raise ValueError(
                f"Config 'TOLLWAY_RETRIEVAL_BM25_BIGRAM_WEIGHT' has value {self.bm25_bigram_weight!r}. Must be 0 to 1."
            )
        if self.fusion not in ("weighted", "rrf"):
            raise ValueError(f"Config 'TOLLWAY_RETRIEVAL_FUSION' has value {self.fusion!r}. Use weighted or rrf.")
        if self.follow_block_ms >= 2000:
            raise ValueError(
                f"Config 'TOLLWAY_RETRIEVAL_FOLLOW_BLOCK_MS' has value {self.follow_block_ms!r}. "
                "Must be below Redis's 2 s command deadline."
            )
        if not self.embedding_addr:
            raise ValueError(
                "Config 'TOLLWAY_RETRIEVAL_EMBEDDING_ADDR' has value ''. The service needs the embedding service."
            )
        if not self.key_prefix or any(c in self.key_prefix for c in "{} "):
            raise ValueError(
                f"Config 'TOLLWAY_RETRIEVAL_KEY_PREFIX' has value {self.key_prefix!r}. "
                "Must be non-empty, without braces or spaces."
            )
