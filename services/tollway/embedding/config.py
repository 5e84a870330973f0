"""Settings of the embedding service, read from ``TOLLWAY_EMBEDDING_*`` (Redis comes from ``TOLLWAY_REDIS_URL``)."""

from __future__ import annotations

from dataclasses import dataclass

from tollway.embedding.model import DEFAULT_MODEL_ID

__all__ = ["EmbeddingConfig"]


@dataclass(frozen=True)
class EmbeddingConfig:
    """Embedding service settings; each field is ``TOLLWAY_EMBEDDING_<FIELD>``.

    Attributes:
        port: gRPC port.
        metrics_port: Prometheus endpoint port; 0 turns it off.
        models: Comma-separated ids of the built-in models to serve (each costs ~270 MB once loaded).
        default_model: The model used when a request names none; must be in ``models``.
        max_texts_per_call: Texts accepted in one Embed call.
        max_text_chars: Characters accepted per text; longer texts are rejected before tokenising (anything
            past the model's token limit is truncated anyway).
        batching: Whether concurrent calls share model runs.
        batch_max_texts: Texts in one micro-batch beyond which no more calls join it.
        batch_max_wait_ms: How long a micro-batch waits for more calls after its first one arrived. 0 still
            batches every call that queued while the model was busy, without delaying a lone call.
        inference_batch_size: Texts per ONNX Runtime run; bigger batches of long texts cost ~1 GB at 32 and
            gain nothing.
        intra_op_threads: ONNX Runtime threads per run (the machines have 2 cores).
        lru_max_entries: Entries of the in-process cache (~1.7 KB each at 384 dimensions); 0 turns it off.
        redis_cache: Whether vectors are also cached in Redis, shared by every replica.
        cache_ttl_s: Seconds a vector lives in Redis.
        redis_key_prefix: Prefix of the Redis keys.
    """

    port: int = 50056
    metrics_port: int = 0
    models: tuple[str, ...] = (DEFAULT_MODEL_ID,)
    default_model: str = DEFAULT_MODEL_ID
    max_texts_per_call: int = 256
    max_text_chars: int = 65_536
    batching: bool = True
    batch_max_texts: int = 64
    batch_max_wait_ms: float = 0.0
    inference_batch_size: int = 32
    intra_op_threads: int = 2
    lru_max_entries: int = 20_000
    redis_cache: bool = True
    cache_ttl_s: int = 7 * 24 * 3600
    redis_key_prefix: str = "tollway:embedding"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not among models {','.join(self.models)!r}")
        for name in ("max_texts_per_call", "max_text_chars", "batch_max_texts", "inference_batch_size", "cache_ttl_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("port", "metrics_port", "intra_op_threads", "lru_max_entries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_max_wait_ms < 0:
            raise ValueError(f"batch_max_wait_ms must be >= 0, got {self.batch_max_wait_ms}")
