"""The ingestion workers: chunk, embed in batches, commit, acknowledge.

Each worker is a consumer of the ingest stream's consumer group. For one
``content_changed`` event it re-reads the document (the event only names it), skips what
is already indexed or was replaced since, cuts the text, embeds the chunks in batches
through the embedding service, and commits them in one Redis script that also appends the
index event every replica follows. Only then is the event acknowledged.

Failure handling:

* a failed try is acknowledged and the event parked with its next try number, due after
  an exponential backoff with jitter; after ``max_attempts`` tries (or at once for an
  error a retry cannot fix, such as an unknown model) it goes to the dead-letter stream
  and the operation and document are marked failed;
* a worker that dies mid-batch leaves its event in the group's pending list; another
  worker takes it over with XAUTOCLAIM once it has been idle ``claim_idle_ms``. The commit
  refuses content that is already indexed, so an event redelivered after a commit that was
  not acknowledged indexes nothing twice. An event delivered ``max_attempts`` times
  without ever finishing (it kills its worker) is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np

from tollway.mesh.errors import FailedPrecondition, InvalidArgument, NotFound, TollwayError, Unavailable
from tollway.mesh.frozen import frozen
from tollway.retrieval import metrics
from tollway.retrieval.chunking import chunk_text
from tollway.retrieval.store import UNREACHABLE, IngestEvent, RetrievalStore
from tollway.retrieval.types import Chunk, Collection, OpState, chunk_id

log = logging.getLogger("tollway.retrieval.ingest")

# Errors a later try cannot fix: the event goes to the dead-letter stream at once.
_PERMANENT = (InvalidArgument, NotFound, FailedPrecondition)


# What a text is, for models that embed queries and documents differently (E5); others ignore it.
InputType = Literal["query", "document"]
DOCUMENT: InputType = "document"
QUERY: InputType = "query"


class Embedder(Protocol):
    """Turns texts into unit vectors with a named model (the embedding service)."""

    async def embed(self, texts: Sequence[str], model: str, input_type: InputType = DOCUMENT) -> np.ndarray:
        """float32 array (len(texts), dim). Raises TollwayError subclasses."""
        ...


def _embedded_texts(chunks: Sequence[Chunk], model: str, col: Collection) -> list[str]:
    """What ``model`` embeds of each chunk: its indexed text, except that in a sentence-window
    collection an ensemble model embeds what the collection's ``ensemble_unit`` says (the window
    by default; its parent section in collections stored before the choice existed)."""
    if model in col.ensemble:
        return [col.ensemble_text(c) for c in chunks]
    return [c.indexed_text() for c in chunks]


class Invalidator(Protocol):
    """Removes response-cache entries grounded in documents (the cache service)."""

    async def invalidate(self, document_names: Sequence[str]) -> None:
        """Raises TollwayError subclasses when the cache cannot be told."""
        ...


@frozen
class IngestSettings:
    """How workers read, batch and retry.

    Attributes:
        embed_batch: Chunks per embedding call.
        read_count: Events a worker takes per read.
        block_ms: How long a read waits for new events (below Redis's command deadline).
        claim_idle_ms: How long an unacknowledged event waits before another worker takes it.
        reclaim_interval_s: How often a worker looks for such events and for due retries.
        max_attempts: Tries before an event is dead-lettered.
        backoff_base_ms: Wait before the second try; doubles each try.
        backoff_max_ms: The longest wait between tries.
    """

    embed_batch: int = 32
    read_count: int = 8
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    reclaim_interval_s: float = 1.0
    max_attempts: int = 5
    backoff_base_ms: int = 500
    backoff_max_ms: int = 60_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Ingestor:
    """One replica's ingestion workers."""

    def __init__(
        self,
        store: RetrievalStore,
        embedder: Embedder,
        invalidator: Invalidator | None,
        settings: IngestSettings,
        *,
        consumer_prefix: str,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.invalidator = invalidator
        self.settings = settings
        self.consumer_prefix = consumer_prefix
        self.clock = clock

    def backoff_ms(self, attempt: int) -> int:
        """Wait before try ``attempt + 1``: exponential, capped, with ±25 % jitter."""
        base = min(self.settings.backoff_max_ms, self.settings.backoff_base_ms * 2 ** max(0, attempt - 1))
        return int(base * random.uniform(0.75, 1.25))

    async def work(self, stop: asyncio.Event, worker: int = 0) -> None:
        """One worker's loop until ``stop`` is set; survives Redis outages."""
        consumer = f"{self.consumer_prefix}-{worker}"
        last_reclaim = 0.0
        while not stop.is_set():
            try:
                await self.store.ensure_group()
                if time.monotonic() - last_reclaim >= self.settings.reclaim_interval_s:
                    last_reclaim = time.monotonic()
                    await self.store.move_due(self.clock())
                    for event, deliveries in await self.store.reclaim(
                        consumer, self.settings.claim_idle_ms, self.settings.read_count
                    ):
                        await self.handle(event, deliveries=deliveries)
                for event in await self.store.read_new(consumer, self.settings.read_count, self.settings.block_ms):
                    await self.handle(event)
            except UNREACHABLE as exc:
                log.warning("ingest stream unreachable; retrying", extra={"error": str(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            except Exception:
                log.exception("ingest worker failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def handle(self, event: IngestEvent, *, deliveries: int = 1) -> str:
        """Processes one event to its end: acknowledged, retried later or dead-lettered.

        Returns:
            The outcome: indexed, unchanged, superseded, gone, retried or dead.
        """
        if deliveries > self.settings.max_attempts:
            await self.store.dead_letter(
                event, self.clock(), 13, "WORKER_CRASHED",
                f"delivered {deliveries} times without finishing (the worker died each time)",
            )  # fmt: skip
            return self._count("dead")
        try:
            outcome = await self._index(event)
        except UNREACHABLE:
            raise  # Redis is down: the event stays pending and is reclaimed later
        except Exception as exc:
            return await self._failed(event, exc)
        await self.store.ack(event)
        return self._count(outcome)

    def _count(self, outcome: str) -> str:
        metrics.INGESTED.labels(outcome).inc()
        return outcome

    async def _failed(self, event: IngestEvent, exc: Exception) -> str:
        now = self.clock()
        if isinstance(exc, TollwayError):
            code, reason, message = exc.code.value[0], exc.reason, exc.message
        else:
            log.exception("indexing %s failed", event.document_id, exc_info=exc)
            code, reason, message = 13, "INTERNAL", f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _PERMANENT) or event.attempt >= self.settings.max_attempts:
            log.warning(
                "indexing failed for good; dead-lettered",
                extra={"document": event.document_id, "attempt": event.attempt, "reason": reason},
            )
            await self.store.dead_letter(event, now, code, reason, message)
            return self._count("dead")
        due = now + self.backoff_ms(event.attempt)
        log.info(
            "indexing failed; retrying later",
            extra={"document": event.document_id, "attempt": event.attempt, "reason": reason, "due_ms": due},
        )
        await self.store.retry_later(event, due, now, message)
        return self._count("retried")

    async def _index(self, event: IngestEvent) -> str:
        store = self.store
        stored = await store.get_collection(event.collection_id, counts=False)
        if stored is None or stored.uid != event.uid:
            await store.update_operation(event.operation_id, state=OpState.SUPERSEDED, updated=self.clock())
            return "gone"
        col = stored.collection
        doc = await store.get_document(event.uid, event.collection_id, event.document_id)
        if doc is None or doc.content_hash != event.content_hash:
            await store.update_operation(event.operation_id, state=OpState.SUPERSEDED, updated=self.clock())
            return "superseded"
        if doc.indexed_hash == event.content_hash:
            # A redelivery after a commit that was not acknowledged, or a retry after the
            # commit when the cache could not be told: tell it now (idempotent).
            if event.attempt > 1:
                await self._invalidate(doc.name)
            await store.update_operation(event.operation_id, state=OpState.SUCCEEDED, updated=self.clock())
            return "unchanged"
        await store.update_operation(event.operation_id, state=OpState.RUNNING, tries=event.attempt,
                                     updated=self.clock())  # fmt: skip
        pieces, parents = chunk_text(doc.text, col.chunking)
        await store.update_operation(event.operation_id, chunks=len(pieces), updated=self.clock())
        drafts = [
            Chunk(
                chunk_id(doc.document_id, event.content_hash, n),
                doc.document_id,
                piece.text,
                doc.title,
                parents[piece.parent] if piece.parent >= 0 else "",
                doc.metadata,
                None,
            )
            for n, piece in enumerate(pieces)
        ]
        # During an embedding-model migration every new chunk gets a vector of both models, so
        # that the switch never finds a chunk without one; and one of every ensemble model.
        dims = {col.embedding_model: col.dimension}
        if col.next_model:
            dims[col.next_model] = col.next_dimension
        dims.update(col.ensemble)
        vectors: dict[str, list[np.ndarray]] = {m: [] for m in dims}
        step = self.settings.embed_batch
        for start in range(0, len(drafts), step):
            batch = drafts[start : start + step]
            for model, dim in dims.items():
                got = await self.embedder.embed(_embedded_texts(batch, model, col), model, input_type=DOCUMENT)
                if got.shape != (len(batch), dim):
                    raise FailedPrecondition(
                        f"the embedding service returned vectors of shape {got.shape} for model "
                        f"{model!r}; the collection expects dimension {dim}",
                        reason="EMBEDDING_DIMENSION_MISMATCH",
                    )
                vectors[model] += list(got)
            embedded = len(vectors[col.embedding_model])
            await store.update_operation(event.operation_id, embedded=embedded, updated=self.clock())
        chunks = [dataclasses.replace(c, vector=v) for c, v in zip(drafts, vectors[col.embedding_model], strict=True)]
        outcome, replaced = await store.commit(event, chunks, vectors, self.clock())
        if outcome == "models":
            # A migration started or switched after the collection was read: embed again soon.
            raise Unavailable(
                "the collection's embedding models changed while indexing; retrying",
                retry_after_s=0.1,
                reason="EMBEDDING_MODELS_CHANGED",
            )
        if outcome == "indexed":
            metrics.INGESTED_CHUNKS.inc(len(chunks))
            if replaced:
                await self._invalidate(doc.name)
        elif outcome in ("superseded", "gone"):
            await store.update_operation(event.operation_id, state=OpState.SUPERSEDED, updated=self.clock())
        return outcome

    async def _invalidate(self, name: str) -> None:
        if self.invalidator is not None:
            await self.invalidator.invalidate([name])
