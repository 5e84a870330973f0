"""The embedding service's domain: validate a call, answer from the cache tiers, batch the rest for the model.

Lookup order per distinct text: in-process LRU, then Redis (one MGET for the whole call), then the model
through the micro-batcher; what the model computed is written back to both tiers. A Redis failure never fails
a call: the tier is skipped and the vector computed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tollway.embedding import metrics
from tollway.embedding.batcher import BatcherClosedError, MicroBatcher
from tollway.embedding.cache import CachedEmbedding, EmbeddingLRU, text_digest
from tollway.embedding.model import InputType, LoadedModel, ModelRegistry, UnknownModelError
from tollway.embedding.store import EmbeddingStore, StoreUnavailableError
from tollway.mesh.errors import InvalidArgument, NotFound, Unavailable

__all__ = ["EmbedOutcome", "Embedder", "ModelInfo"]

log = logging.getLogger(__name__)

# A call listing thousands of bad texts gets the first few named; the message gives the total.
_MAX_VIOLATIONS = 10
# While Redis is down every call would fail the same way: say so once in a while, count every time.
_STORE_WARNING_INTERVAL_S = 30.0


@dataclass(frozen=True)
class EmbedOutcome:
    """The answer to one Embed call.

    Attributes:
        model_id: The model that made the vectors.
        dimension: Columns of ``vectors``.
        vectors: float32 (n, dimension), rows in the order of the texts, unit L2 norm.
        truncated: Per text, whether it was cut at the model's token limit.
        cache_hit_count: Texts answered from the LRU or Redis rather than the model.
    """

    model_id: str
    dimension: int
    vectors: np.ndarray
    truncated: list[bool]
    cache_hit_count: int


@dataclass(frozen=True)
class ModelInfo:
    """A served model, as ListModels describes it."""

    model_id: str
    dimension: int
    max_tokens: int
    description: str
    asymmetric: bool = False


class Embedder:
    """Embeds texts with the served models, through the embedding cache and the micro-batcher.

    Call :meth:`start` (loads every model) before :meth:`embed`, and :meth:`aclose` at the end. Use from one
    event loop.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store: EmbeddingStore | None,
        *,
        lru_max_entries: int = 20_000,
        max_texts_per_call: int = 256,
        max_text_chars: int = 65_536,
        batching: bool = True,
        batch_max_texts: int = 64,
        batch_max_wait_s: float = 0.0,
    ) -> None:
        """Creates the embedder; nothing is loaded until :meth:`start`.

        Args:
            registry: The served models.
            store: The Redis tier, or None to use the in-process tier only.
            lru_max_entries: Size of the in-process tier; 0 turns it off.
            max_texts_per_call: Texts accepted per call.
            max_text_chars: Characters accepted per text.
            batching: Whether concurrent calls share model runs.
            batch_max_texts: Texts per micro-batch beyond which no more calls join it.
            batch_max_wait_s: How long a micro-batch waits for more calls after its first one.
        """
        self._registry = registry
        self._store = store
        self._lru = EmbeddingLRU(lru_max_entries)
        self._max_texts_per_call = max_texts_per_call
        self._max_text_chars = max_text_chars
        self._batching = batching
        self._batch_max_texts = batch_max_texts
        self._batch_max_wait_s = batch_max_wait_s
        # One worker thread for every model: ONNX Runtime already spreads one run over both cores, so two
        # runs at once would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-model")
        # One batcher per model and input form: a batch is one model call, and a call embeds one form.
        self._batchers: dict[str, MicroBatcher[str, CachedEmbedding]] = {}
        self._closed = False
        self._last_store_warning = -_STORE_WARNING_INTERVAL_S

    @property
    def default_model_id(self) -> str:
        """The model used when a call names none."""
        return self._registry.default_model_id

    async def start(self) -> None:
        """Loads every served model on the worker thread (about 0.5 s each) and prepares its batcher.

        Raises:
            ModelFilesMissingError: A model's wheel is not installed.
        """
        await asyncio.get_running_loop().run_in_executor(self._executor, self._registry.load_all)
        for spec in self._registry.specs:
            forms = (InputType.QUERY, InputType.DOCUMENT) if spec.asymmetric else (None,)
            for form in forms:
                self._batcher(self._registry.get(spec.model_id), form)

    async def aclose(self) -> None:
        """Fails queued calls with UNAVAILABLE, lets a running model call finish, stops the worker.

        Safe to call more than once, and before :meth:`start`.
        """
        self._closed = True
        for batcher in self._batchers.values():
            await batcher.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def list_models(self) -> list[ModelInfo]:
        """Returns the served models, the default first."""
        specs = sorted(self._registry.specs, key=lambda s: s.model_id != self.default_model_id)
        return [ModelInfo(s.model_id, s.dimension, s.max_tokens, s.description, s.asymmetric) for s in specs]

    async def embed(
        self, texts: Sequence[str], model_id: str = "", input_type: InputType | None = None
    ) -> EmbedOutcome:
        """Embeds texts with one model.

        Args:
            texts: 1 to ``max_texts_per_call`` non-empty texts of at most ``max_text_chars`` characters each.
            model_id: A served model's id; empty means the default.
            input_type: Whether the texts are queries or documents, for models that embed them differently;
                None is the model's form for comparing texts of one kind (see :class:`InputType`).

        Returns:
            The vectors in input order, truncation flags and the number of cache hits.

        Raises:
            InvalidArgument: EMPTY_INPUT, TOO_MANY_TEXTS, EMPTY_TEXT or TEXT_TOO_LONG.
            NotFound: UNKNOWN_MODEL.
            Unavailable: SHUTTING_DOWN.
        """
        self._validate(texts)
        model = await self._model(model_id)
        # Vectors are cached per model *and* form: E5's query and passage vectors of one text differ.
        cache_id = model.spec.cache_id(input_type)
        digests = [text_digest(t) for t in texts]
        first_index: dict[bytes, int] = {}
        for i, digest in enumerate(digests):
            first_index.setdefault(digest, i)

        found: dict[bytes, CachedEmbedding] = {}
        for digest in first_index:
            entry = self._lru.get(cache_id, digest)
            if entry is not None:
                found[digest] = entry
        from_lru = len(found)
        missing = [d for d in first_index if d not in found]
        from_redis = 0
        if missing and self._store is not None:
            from_redis = await self._read_store(model, cache_id, missing, found)
        from_cache = set(found)

        to_compute = [d for d in first_index if d not in found]
        if to_compute:
            computed = await self._compute(model, input_type, [texts[first_index[d]] for d in to_compute])
            for digest, entry in zip(to_compute, computed, strict=True):
                found[digest] = entry
                self._lru.put(cache_id, digest, entry)
            await self._write_store(cache_id, list(zip(to_compute, computed, strict=True)))
            metrics.TRUNCATED.labels(model.model_id).inc(sum(e.truncated for e in computed))

        metrics.TEXTS.labels(model.model_id, "lru").inc(from_lru)
        metrics.TEXTS.labels(model.model_id, "redis").inc(from_redis)
        metrics.TEXTS.labels(model.model_id, "model").inc(len(to_compute))
        entries = [found[d] for d in digests]
        return EmbedOutcome(
            model_id=model.model_id,
            dimension=model.dimension,
            vectors=np.stack([e.vector for e in entries]),
            truncated=[e.truncated for e in entries],
            cache_hit_count=sum(d in from_cache for d in digests),
        )

    def _validate(self, texts: Sequence[str]) -> None:
        if not texts:
            raise InvalidArgument(
                "texts is empty: send at least one text to embed",
                [("texts", "must contain at least one text")],
                reason="EMPTY_INPUT",
            )
        if len(texts) > self._max_texts_per_call:
            limit = self._max_texts_per_call
            raise InvalidArgument(
                f"{len(texts)} texts in one call, but at most {limit} are allowed: split them over several calls",
                [("texts", f"at most {limit} texts per call, got {len(texts)}")],
                reason="TOO_MANY_TEXTS",
                metadata={"limit": str(limit), "count": str(len(texts))},
            )
        empty = [i for i, t in enumerate(texts) if not t]
        if empty:
            raise InvalidArgument(
                f"{len(empty)} of the texts are empty (first at index {empty[0]}): every text must have content",
                [(f"texts[{i}]", "must not be empty") for i in empty[:_MAX_VIOLATIONS]],
                reason="EMPTY_TEXT",
                metadata={"count": str(len(empty))},
            )
        limit = self._max_text_chars
        long = [i for i, t in enumerate(texts) if len(t) > limit]
        if long:
            raise InvalidArgument(
                f"{len(long)} of the texts are longer than {limit} characters (first at index {long[0]}): "
                "split them into chunks",
                [(f"texts[{i}]", f"at most {limit} characters, got {len(texts[i])}") for i in long[:_MAX_VIOLATIONS]],
                reason="TEXT_TOO_LONG",
                metadata={"limit": str(limit), "count": str(len(long))},
            )

    async def _model(self, model_id: str) -> LoadedModel:
        try:
            spec = self._registry.spec(model_id)
        except UnknownModelError as exc:
            raise NotFound(
                f"embedding model {exc.model_id!r} is not served here; known models: {', '.join(exc.known)}",
                reason="UNKNOWN_MODEL",
                metadata={"model": exc.model_id, "known_models": ",".join(exc.known)},
            ) from None
        if not self._registry.is_loaded(spec.model_id):
            # Loading blocks for ~0.5 s: never on the event loop.
            await asyncio.get_running_loop().run_in_executor(self._executor, self._registry.get, spec.model_id)
        return self._registry.get(spec.model_id)

    def _batcher(self, model: LoadedModel, input_type: InputType | None) -> MicroBatcher[str, CachedEmbedding]:
        cache_id = model.spec.cache_id(input_type)
        batcher = self._batchers.get(cache_id)
        if batcher is None:
            model_id = model.model_id

            def on_batch(calls: int, texts: int) -> None:
                metrics.BATCH_CALLS.labels(model_id).observe(calls)
                metrics.BATCH_TEXTS.labels(model_id).observe(texts)

            batcher = MicroBatcher(
                lambda texts: _run_model(model, texts, input_type),
                self._executor,
                max_batch=self._batch_max_texts,
                max_wait_s=self._batch_max_wait_s,
                enabled=self._batching,
                on_batch=on_batch,
            )
            self._batchers[cache_id] = batcher
            metrics.QUEUED_CALLS.labels(cache_id).set_function(lambda b=batcher: b.queued_calls)
        return batcher

    async def _compute(
        self, model: LoadedModel, input_type: InputType | None, texts: list[str]
    ) -> list[CachedEmbedding]:
        if self._closed:
            raise Unavailable(
                "the embedding service is shutting down; retry on another replica", reason="SHUTTING_DOWN"
            )
        try:
            return await self._batcher(model, input_type).submit(texts)
        except BatcherClosedError:
            raise Unavailable(
                "the embedding service is shutting down; retry on another replica", reason="SHUTTING_DOWN"
            ) from None

    async def _read_store(
        self, model: LoadedModel, cache_id: str, digests: list[bytes], found: dict[bytes, CachedEmbedding]
    ) -> int:
        assert self._store is not None
        try:
            fetched = await self._store.get_many(cache_id, digests, model.dimension)
        except StoreUnavailableError as exc:
            self._store_failed("read", exc)
            return 0
        hits = 0
        for digest, entry in zip(digests, fetched, strict=True):
            if entry is not None:
                found[digest] = entry
                self._lru.put(cache_id, digest, entry)
                hits += 1
        return hits

    async def _write_store(self, cache_id: str, entries: list[tuple[bytes, CachedEmbedding]]) -> None:
        if self._store is None:
            return
        try:
            await self._store.put_many(cache_id, entries)
        except StoreUnavailableError as exc:
            self._store_failed("write", exc)

    def _store_failed(self, operation: str, exc: StoreUnavailableError) -> None:
        metrics.STORE_ERRORS.labels(operation).inc()
        now = time.monotonic()
        if now - self._last_store_warning >= _STORE_WARNING_INTERVAL_S:
            self._last_store_warning = now
            log.warning(
                "embedding cache %s skipped (Redis tier unavailable; vectors are still computed): %s", operation, exc
            )


def _run_model(model: LoadedModel, texts: list[str], input_type: InputType | None) -> list[CachedEmbedding]:
    """Runs on the worker thread: one model call, split into read-only per-text copies (a row view would keep
    the whole batch matrix alive in the LRU)."""
    # Concurrent calls asking for the same new text land in one batch: embed it once.
    unique = list(dict.fromkeys(texts))
    result = model.embed(unique, input_type)
    by_text = {}
    for text, row, truncated in zip(unique, result.vectors, result.truncated, strict=True):
        vector = row.copy()
        vector.flags.writeable = False
        by_text[text] = CachedEmbedding(vector=vector, truncated=truncated)
    return [by_text[text] for text in texts]
