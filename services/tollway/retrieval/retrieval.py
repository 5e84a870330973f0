"""The retrieval domain: checks and rules of every RPC, over the store, the indexes and the
workers. No gRPC here (the servicer translates), no Redis (the store does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from tollway.common.paging import Page, page_size
from tollway.mesh.background import Background
from tollway.mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, TollwayError
from tollway.mesh.frozen import frozen
from tollway.retrieval import metrics
from tollway.retrieval.filters import check_filters, check_metadata
from tollway.retrieval.ingest import QUERY, Embedder, Ingestor, IngestSettings, Invalidator, wall_clock_ms
from tollway.retrieval.migrate import Migrator
from tollway.retrieval.search import Searcher
from tollway.retrieval.store import RetrievalStore, decode_page_token, encode_page_token
from tollway.retrieval.sync import IndexSync
from tollway.retrieval.types import (
    COLLECTION_ID,
    DOCUMENT_ID,
    FIELD_NAME,
    MAX_ENSEMBLE_MODELS,
    MAX_FILTERABLE_FIELDS,
    MAX_SENTENCE_WINDOW,
    MAX_TITLE_CHARS,
    OPERATION_ID,
    Chunking,
    Collection,
    Document,
    EnsembleUnit,
    FieldType,
    Mode,
    Operation,
    OpState,
    SearchOptions,
    SearchOutcome,
    Strategy,
    content_hash,
    document_name,
)

log = logging.getLogger("tollway.retrieval")

MAX_QUERY_CHARS = 8192
MAX_TOP_K = 100


class ModelCatalog(Protocol):
    """The embedding models the embedding service serves: id -> dimension."""

    async def models(self) -> tuple[Mapping[str, int], str]:
        """(dimension by model id, the default model id)."""
        ...


@frozen
class Limits:
    """Input limits and search defaults.

    Attributes:
        max_document_chars: The longest document text accepted.
        default_keyword_weight: Keyword weight of hybrid fusion when a search sets none.
        default_ensemble_keyword_weight: The same for a collection with ensemble models.
        default_fusion: Fusion method when a search sets none ("weighted" or "rrf").
        default_feedback_count: Pseudo-relevance feedback results when a search sets none.
        default_bigram_weight: Weight of word-pair matches in BM25 when a search sets none.
        default_ensemble_weight: Share of the vector side given to a collection's ensemble models
            when a search sets none.
    """

    max_document_chars: int = 1_000_000
    default_keyword_weight: float = 0.4
    default_ensemble_keyword_weight: float = 0.3
    default_fusion: str = "weighted"
    default_feedback_count: int = 0
    default_bigram_weight: float = 0.25
    default_ensemble_weight: float = 0.5


def _name_part(name: str, pattern: str, field: str) -> list[str]:
    parts = name.split("/")
    shape = pattern.split("/")
    if len(parts) != len(shape) or any(s != "*" and s != p for s, p in zip(shape, parts, strict=True)):
        raise InvalidArgument(f"{field} {name!r} is not of the form {pattern.replace('*', '{id}')}",
                              [(field, "malformed resource name")])  # fmt: skip
    return [p for s, p in zip(shape, parts, strict=True) if s == "*"]


def collection_id_of(name: str, field: str = "name") -> str:
    """The id in ``collections/{id}``.

    Raises:
        InvalidArgument: ``name`` has another form.
    """
    return _name_part(name, "collections/*", field)[0]


class Retrieval:
    """Collections, documents, operations and search."""

    def __init__(
        self,
        store: RetrievalStore,
        sync: IndexSync,
        embedder: Embedder,
        catalog: ModelCatalog,
        *,
        invalidator: Invalidator | None = None,
        ingest: IngestSettings | None = None,
        limits: Limits | None = None,
        searcher: Searcher | None = None,
        workers: int = 2,
        snapshot_interval_s: float = 600.0,
        consumer_prefix: str | None = None,
        migration_poll_s: float = 1.0,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self.sync = sync
        self.embedder = embedder
        self.catalog = catalog
        self.invalidator = invalidator
        self.limits = limits or Limits()
        self.searcher = searcher or Searcher()
        self.clock = clock
        self.workers = workers
        self.snapshot_interval_s = snapshot_interval_s
        self.ingestor = Ingestor(
            store, embedder, invalidator, ingest or IngestSettings(),
            consumer_prefix=consumer_prefix or f"retrieval-{uuid.uuid4().hex[:8]}", clock=clock,
        )  # fmt: skip
        self.migrator = Migrator(store, embedder)
        self.migration_poll_s = migration_poll_s
        self.background = Background(log, jitter=0.1)

    async def start(self) -> None:
        """Builds the indexes, then starts the index follower and the workers."""
        await self.store.ensure_group()
        await self.sync.start()
        self.background.run(self.sync.follow, name="index events")
        self.background.run(self.sync.follow_keywords, name="keyword index builds")
        for i in range(self.workers):
            self.background.run(lambda stop, i=i: self.ingestor.work(stop, i), name=f"ingest worker {i}")
        self.background.every(self.snapshot_interval_s, self.sync.snapshot_if_changed, name="index snapshot")
        self.background.every(self.migration_poll_s, self.migrator.step, name="embedding migrations")
        self.background.start()

    async def stop(self) -> None:
        """Stops the loops (a worker finishes its event first) and writes a last snapshot.

        Safe to call before :meth:`start` and more than once.
        """
        await self.background.stop(timeout_s=10.0)
        if self.sync.snapshot_dir is not None and self.sync.applied_since_snapshot:
            await self.sync.snapshot()

    # --- collections -------------------------------------------------------------------

    async def create_collection(
        self,
        collection_id: str,
        *,
        embedding_model: str,
        chunking: Chunking,
        fields: Mapping[str, FieldType | None],
        description: str = "",
        ensemble_models: Sequence[str] = (),
        ensemble_unit: EnsembleUnit | None = None,
    ) -> Collection:
        """Creates a collection (defaults applied, everything checked first).

        ``ensemble_unit`` applies to a collection with ensemble models and sentence windows only;
        there None means :attr:`EnsembleUnit.WINDOW`.

        Raises:
            InvalidArgument: A malformed id, chunk sizes out of range, bad field declarations,
                ensemble models that are unknown (named with the served ones), repeated, the
                main model, or too many; an ``ensemble_unit`` where it does not apply.
            NotFound: The embedding service does not serve ``embedding_model``.
            AlreadyExists: The id is taken.
        """
        violations = []
        if not COLLECTION_ID.match(collection_id):
            violations.append(("collection_id", "1 to 63 of a-z, 0-9 and '-', starting with a letter"))
        max_tokens = chunking.max_tokens or 200
        if not 16 <= max_tokens <= 2048:
            violations.append(("collection.chunking.max_tokens", "must be 16 to 2048 (0 means 200)"))
        overlap = chunking.overlap_tokens if chunking.strategy is Strategy.FIXED else 0
        if not 0 <= overlap <= max_tokens // 2:
            violations.append(
                ("collection.chunking.overlap_tokens", f"must be 0 to {max_tokens // 2} (half max_tokens)")
            )
        parent = 0
        if chunking.strategy is Strategy.HIERARCHICAL:
            parent = chunking.parent_max_tokens or 4 * max_tokens
            if not max_tokens <= parent <= 8192:
                violations.append(("collection.chunking.parent_max_tokens", f"must be {max_tokens} to 8192"))
        window = chunking.sentence_window
        if chunking.strategy is Strategy.HIERARCHICAL and not 0 <= window <= MAX_SENTENCE_WINDOW:
            violations.append(("collection.chunking.sentence_window", f"must be 0 to {MAX_SENTENCE_WINDOW}"))
        elif chunking.strategy is not Strategy.HIERARCHICAL and window:
            violations.append(("collection.chunking.sentence_window", "must be 0 unless the strategy is hierarchical"))
        if len(fields) > MAX_FILTERABLE_FIELDS:
            violations.append(("collection.filterable_fields", f"at most {MAX_FILTERABLE_FIELDS}"))
        for i, (name, kind) in enumerate(fields.items()):
            if not FIELD_NAME.match(name):
                violations.append((f"collection.filterable_fields[{i}].name", "1 to 64 of A-Z a-z 0-9 _ - ."))
            if kind is None:
                violations.append((f"collection.filterable_fields[{i}].type", "required"))
        if len(ensemble_models) > MAX_ENSEMBLE_MODELS:
            violations.append(("collection.ensemble_models", f"at most {MAX_ENSEMBLE_MODELS} models"))
        windows = chunking.strategy is Strategy.HIERARCHICAL and window > 0
        if ensemble_unit is not None and not (windows and ensemble_models):
            # Anywhere else every model embeds the chunk itself: a unit there would be ignored silently.
            violations.append(
                ("collection.ensemble_unit", "applies only with ensemble_models and chunking.sentence_window > 0")
            )
        if violations:
            raise InvalidArgument(f"bad collection: {violations[0][0]}: {violations[0][1]}", violations)
        dims, default = await self.catalog.models()
        model = embedding_model or default
        if model not in dims:
            raise NotFound(
                f"embedding model {model!r} is not served; served: {', '.join(sorted(dims))}",
                reason="UNKNOWN_MODEL",
                metadata={"model": model},
            )
        ensemble = _check_ensemble(ensemble_models, model, dims)
        col = Collection(
            collection_id=collection_id,
            embedding_model=model,
            dimension=dims[model],
            chunking=Chunking(chunking.strategy, max_tokens, overlap, parent, window),
            fields={k: v for k, v in fields.items() if v is not None},
            description=description,
            created_ms=self.clock(),
            ensemble=ensemble,
            ensemble_unit=(ensemble_unit or EnsembleUnit.WINDOW) if windows and ensemble else None,
        )
        if not await self.store.create_collection(col):
            raise AlreadyExists(f"collection {collection_id!r} already exists", reason="COLLECTION_EXISTS",
                                metadata={"collection": collection_id})  # fmt: skip
        return col

    async def _collection(self, collection_id: str) -> tuple[Collection, str]:
        stored = await self.store.get_collection(collection_id)
        if stored is None:
            raise NotFound(
                f"collection {collection_id!r} does not exist; create it with CreateCollection",
                reason="COLLECTION_NOT_FOUND",
                metadata={"collection": collection_id},
            )
        return stored.collection, stored.uid

    async def get_collection(self, name: str) -> Collection:
        """Raises NotFound or InvalidArgument."""
        return (await self._collection(collection_id_of(name)))[0]

    async def list_collections(self, size: int, token: str) -> Page[Collection]:
        """A page of collections in id order (AIP-158)."""
        size = page_size(size)
        after = self._after(token)
        ids = await self.store.list_collection_ids(after, size + 1)
        found = [c for cid in ids if (c := await self.store.get_collection(cid)) is not None]
        return Page.of([s.collection for s in found], size, lambda c: encode_page_token(c.collection_id))

    @staticmethod
    def _after(token: str) -> str:
        if not token:
            return ""
        after = decode_page_token(token)
        if after is None:
            raise InvalidArgument("page_token is malformed; pass next_page_token as returned",
                                  [("page_token", "malformed")])  # fmt: skip
        return after

    async def delete_collection(self, name: str) -> int:
        """Deletes a collection; returns how many documents went with it."""
        cid = collection_id_of(name)
        gone = await self.store.delete_collection(cid)
        if gone is None:
            await self._collection(cid)  # raises NotFound
            return 0
        _, doc_ids = gone
        await self._invalidate([document_name(cid, d) for d in doc_ids])
        return len(doc_ids)

    async def migrate(self, name: str, model: str) -> Collection:
        """Starts moving a collection to another embedding model (see :mod:`.migrate`).

        Raises:
            InvalidArgument: Malformed name or no model given.
            NotFound: No such collection, or a model the embedding service does not serve.
            FailedPrecondition: The collection uses that model already, or is migrating.
        """
        cid = collection_id_of(name)
        if not model:
            raise InvalidArgument("embedding_model is required", [("embedding_model", "required")])
        col, _ = await self._collection(cid)
        if model in col.ensemble:
            # Its vectors would be the main and an ensemble model's at once, and the switch would drop them.
            raise FailedPrecondition(
                f"collection {cid!r} already fuses {model!r} as an ensemble model; migrate to another model",
                reason="MODEL_IN_ENSEMBLE",
                metadata={"model": model},
            )
        dims, _ = await self.catalog.models()
        if model not in dims:
            raise NotFound(
                f"embedding model {model!r} is not served; served: {', '.join(sorted(dims))}",
                reason="UNKNOWN_MODEL",
                metadata={"model": model},
            )
        outcome = await self.store.start_migration(cid, model, dims[model], self.clock())
        if outcome == "nocol":
            await self._collection(cid)
        if outcome == "same":
            raise FailedPrecondition(f"collection {cid!r} already uses {model!r}", reason="SAME_MODEL")
        if outcome == "busy":
            raise FailedPrecondition(
                f"collection {cid!r} is already migrating; wait until GetCollection shows no migration",
                reason="MIGRATION_IN_PROGRESS",
            )
        return (await self._collection(cid))[0]

    async def _invalidate(self, names: Sequence[str]) -> None:
        if self.invalidator is None or not names:
            return
        try:
            for start in range(0, len(names), 256):
                await self.invalidator.invalidate(names[start : start + 256])
        except TollwayError as exc:
            # The deletion is done; what remains is grounded cache entries expiring by TTL.
            log.error("could not invalidate cache entries of deleted documents", extra={"error": exc.message})

    # --- documents ---------------------------------------------------------------------

    async def upsert(
        self,
        parent: str,
        document_id: str,
        *,
        text: str,
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        source_version: str = "",
    ) -> Operation:
        """Stores a document and queues its indexing.

        Raises:
            InvalidArgument: Malformed id, empty or oversized text (the limit in the message
                and ErrorInfo metadata), a title too long, metadata of the wrong type.
            NotFound: No such collection.
        """
        cid = collection_id_of(parent, "parent")
        violations = []
        if not DOCUMENT_ID.match(document_id):
            violations.append(("document_id", "1 to 128 characters, no '/', braces or whitespace"))
        limit = self.limits.max_document_chars
        if not text.strip():
            raise InvalidArgument(
                f"document.text is empty; give 1 to {limit} characters",
                [("document.text", "required, not blank")],
                reason="EMPTY_DOCUMENT",
                metadata={"limit_chars": str(limit)},
            )
        if len(text) > limit:
            raise InvalidArgument(
                f"document.text has {len(text)} characters; the limit is {limit}. Split the document.",
                [("document.text", f"at most {limit} characters")],
                reason="DOCUMENT_TOO_LARGE",
                metadata={"limit_chars": str(limit), "length_chars": str(len(text))},
            )
        if len(title) > MAX_TITLE_CHARS:
            violations.append(("document.title", f"at most {MAX_TITLE_CHARS} characters"))
        if violations:
            raise InvalidArgument(f"bad document: {violations[0][0]}: {violations[0][1]}", violations)
        col, _ = await self._collection(cid)
        metadata = dict(metadata or {})
        check_metadata(metadata, col.fields, "document.metadata")
        now = self.clock()
        digest = content_hash(title, text, metadata)
        outcome, op_id = await self.store.upsert(
            cid, document_id, title=title, text=text, metadata=metadata, source_version=source_version,
            digest=digest, now_ms=now, operation_id=uuid.uuid4().hex,
        )  # fmt: skip
        if outcome == "nocol":
            await self._collection(cid)  # deleted meanwhile: NotFound
        return await self.get_operation(f"operations/{op_id}")

    def _doc_name(self, name: str) -> tuple[str, str]:
        cid, did = _name_part(name, "collections/*/documents/*", "name")
        return cid, did

    async def get_document(self, name: str) -> Document:
        """Raises NotFound or InvalidArgument."""
        cid, did = self._doc_name(name)
        _, uid = await self._collection(cid)
        doc = await self.store.get_document(uid, cid, did)
        if doc is None:
            raise NotFound(
                f"document {name!r} does not exist", reason="DOCUMENT_NOT_FOUND", metadata={"document": name}
            )
        return doc

    async def list_documents(self, parent: str, size: int, token: str) -> Page[Document]:
        """A page of a collection's documents in id order, without text (AIP-158)."""
        cid = collection_id_of(parent, "parent")
        size = page_size(size)
        after = self._after(token)
        _, uid = await self._collection(cid)
        ids = await self.store.list_document_ids(uid, after, size + 1)
        docs = [d for did in ids if (d := await self.store.get_document(uid, cid, did, text=False)) is not None]
        return Page.of(docs, size, lambda d: encode_page_token(d.document_id))

    async def delete_document(self, name: str) -> int:
        """Deletes a document; returns how many chunks left the indexes."""
        cid, did = self._doc_name(name)
        outcome, removed = await self.store.delete_document(cid, did)
        if outcome == "nocol":
            await self._collection(cid)
        if outcome == "nodoc":
            raise NotFound(
                f"document {name!r} does not exist", reason="DOCUMENT_NOT_FOUND", metadata={"document": name}
            )
        await self._invalidate([document_name(cid, did)])
        return removed

    async def get_operation(self, name: str) -> Operation:
        """Raises NotFound or InvalidArgument."""
        (op_id,) = _name_part(name, "operations/*", "name")
        if not OPERATION_ID.match(op_id):
            raise InvalidArgument(f"name {name!r} is not an operation name", [("name", "malformed operation id")])
        op = await self.store.get_operation(op_id)
        if op is None:
            raise NotFound(f"operation {name!r} is unknown or expired (kept a day)", reason="OPERATION_NOT_FOUND",
                           metadata={"operation": name})  # fmt: skip
        return op

    async def operation_document(self, op: Operation) -> Document | None:
        """The document an operation indexed, for its response (None when gone)."""
        if op.state is not OpState.SUCCEEDED:
            return None
        stored = await self.store.get_collection(op.collection_id, counts=False)
        if stored is None:
            return None
        return await self.store.get_document(stored.uid, op.collection_id, op.document_id, text=False)

    # --- search ------------------------------------------------------------------------

    async def search(
        self,
        collection: str,
        opts: SearchOptions,
        *,
        query_embedding: Sequence[float] = (),
        query_embedding_model: str = "",
    ) -> tuple[Collection, SearchOutcome]:
        """Searches a collection.

        Raises:
            InvalidArgument: Empty or long query, top_k out of range, bad filters or options,
                an embedding of the wrong model or dimension.
            NotFound: No such collection.
            Unavailable: The embedding service (when the query must be embedded).
        """
        cid = collection_id_of(collection, "collection")
        violations = []
        if not opts.query.strip():
            violations.append(("query", "required"))
        elif len(opts.query) > MAX_QUERY_CHARS:
            violations.append(("query", f"at most {MAX_QUERY_CHARS} characters"))
        if not 1 <= opts.top_k <= MAX_TOP_K:
            violations.append(("top_k", f"must be 1 to {MAX_TOP_K} (0 means 10)"))
        if opts.keyword_weight is not None and not 0.0 <= opts.keyword_weight <= 1.0:
            violations.append(("fusion.keyword_weight", "must be 0 to 1"))
        if not 1 <= opts.rrf_k <= 1000:
            violations.append(("fusion.rrf_k", "must be 1 to 1000 (0 means 60)"))
        if not 0.0 <= opts.mmr_lambda <= 1.0:
            violations.append(("rerank.mmr_lambda", "must be 0 to 1"))
        if not 0 <= opts.feedback_count <= 20:
            violations.append(("rerank.feedback_count", "must be 0 to 20"))
        if not 0.0 <= opts.bigram_weight <= 1.0:
            violations.append(("keyword_bigram_weight", "must be 0 to 1"))
        if not 0.0 <= opts.ensemble_weight <= 1.0:
            violations.append(("ensemble_weight", "must be 0 to 1"))
        if violations:
            raise InvalidArgument(f"bad search: {violations[0][0]}: {violations[0][1]}", violations)
        col, uid = await self._collection(cid)
        check_filters(opts.filters, col.fields)
        if opts.keyword_weight is None:
            default = (
                self.limits.default_ensemble_keyword_weight
                if col.ensemble
                else self.limits.default_keyword_weight
            )
            opts = dataclasses.replace(opts, keyword_weight=default)
        vector = None
        if opts.mode is not Mode.KEYWORD:
            if query_embedding:
                if query_embedding_model != col.embedding_model or len(query_embedding) != col.dimension:
                    raise InvalidArgument(
                        f"query_embedding must come from the collection's model {col.embedding_model!r} "
                        f"({col.dimension} values); got {len(query_embedding)} values from {query_embedding_model!r}",
                        [("query_embedding", "wrong model or dimension")],
                    )
                vector = np.asarray(query_embedding, np.float32)
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
            # The query is embedded by every model it still needs, concurrently.
            wanted = ([] if vector is not None else [col.embedding_model]) + list(col.ensemble)
            got = await asyncio.gather(*(self.embedder.embed([opts.query], m, input_type=QUERY) for m in wanted))
            by_model = {m: v[0] for m, v in zip(wanted, got, strict=True)}
            if vector is None:
                vector = by_model.pop(col.embedding_model)
            opts = dataclasses.replace(opts, ensemble_vectors=by_model)
        opts = dataclasses.replace(opts, query_vector=vector)
        index = self.sync.get(cid, uid)
        if index is None:
            return col, SearchOutcome([], 0)
        started = time.perf_counter()
        outcome = self.searcher.search(index, opts)
        metrics.SEARCH_SECONDS.labels(opts.mode.value).observe(time.perf_counter() - started)
        return col, outcome


def _check_ensemble(models: Sequence[str], main: str, dims: Mapping[str, int]) -> dict[str, int]:
    """The ensemble models with their dimensions.

    Raises:
        InvalidArgument: A model that is not served (the violation names the served ones), the
            main model, or one named twice.
    """
    violations = []
    for i, m in enumerate(models):
        field = f"collection.ensemble_models[{i}]"
        if m not in dims:
            violations.append((field, f"model {m!r} is not served; served: {', '.join(sorted(dims))}"))
        elif m == main:
            violations.append((field, f"{m!r} is the collection's embedding_model; name a different model"))
        elif m in models[:i]:
            violations.append((field, f"{m!r} is named twice"))
    if violations:
        raise InvalidArgument(f"bad collection: {violations[0][0]}: {violations[0][1]}", violations,
                              reason="BAD_ENSEMBLE")  # fmt: skip
    return {m: dims[m] for m in models}
