"""The retrieval service's domain values: collections, documents, chunks, operations, searches.

No gRPC, no Redis. Metadata values are JSON values (``str``, ``float``, ``bool``, ``None``,
lists and dicts), exactly what a ``google.protobuf.Struct`` holds.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tollway.mesh.frozen import frozen

# Ids end up in Redis key names and resource names: no "/" (a name separator), no whitespace,
# no braces (Redis hash tags).
COLLECTION_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
DOCUMENT_ID = re.compile(r"^[^/\s{}]{1,128}$")
FIELD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OPERATION_ID = re.compile(r"^[0-9a-f]{32}$")

MAX_TITLE_CHARS = 1024
MAX_FILTERABLE_FIELDS = 32
# Each ensemble model costs a vector per chunk in Redis, an hnswlib graph per replica and a query
# embedding per search: two are the most that the measured gain (one model) justifies trying.
MAX_ENSEMBLE_MODELS = 2


class Strategy(enum.Enum):
    """How a collection's documents are cut into chunks (values are stored in Redis)."""

    FIXED = "fixed"
    RECURSIVE = "recursive"
    HIERARCHICAL = "hierarchical"


class EnsembleUnit(enum.Enum):
    """What an ensemble model embeds of a sentence window (values are stored in Redis)."""

    # The window, as the main model does: on the SQuAD tune half E5 over windows ranked alone
    # 0.906 against 0.849 over sections, and 0.931 against 0.926 fused (docs/benchmarks.md).
    WINDOW = "window"
    # The whole parent section: what collections stored before the choice existed embed.
    SECTION = "section"


class FieldType(enum.Enum):
    """The type of a filterable metadata field (values are stored in Redis)."""

    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"


class DocState(enum.Enum):
    """Whether a document's latest content is indexed (values are stored in Redis)."""

    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


class OpState(enum.Enum):
    """The stage of an indexing operation (values are stored in Redis)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"

    @property
    def done(self) -> bool:
        return self in (OpState.SUCCEEDED, OpState.FAILED, OpState.SUPERSEDED)


class Mode(enum.Enum):
    """Which indexes a search uses."""

    VECTOR = "vector"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


class FusionMethod(enum.Enum):
    """How hybrid search combines the vector and keyword rankings."""

    RRF = "rrf"
    WEIGHTED = "weighted"


class Op(enum.Enum):
    """Metadata filter operators."""

    EQ = "eq"
    NE = "ne"
    IN = "in"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"


@frozen
class Chunking:
    """A collection's chunking settings, with defaults already applied.

    Attributes:
        strategy: The strategy.
        max_tokens: The most tokens in an indexed chunk.
        overlap_tokens: For FIXED: tokens repeated from the previous window.
        parent_max_tokens: For HIERARCHICAL: the most tokens in a parent section.
        sentence_window: For HIERARCHICAL: 0 cuts children by ``max_tokens``; 1 to
            :data:`MAX_SENTENCE_WINDOW` makes every window of 1 up to this many sentences
            a child, and BM25 then scores parent sections, not children.
    """

    strategy: Strategy = Strategy.RECURSIVE
    max_tokens: int = 200
    overlap_tokens: int = 0
    parent_max_tokens: int = 0
    sentence_window: int = 0

    @property
    def keyword_on_parent(self) -> bool:
        """Whether BM25 scores a chunk by its parent section (sentence-window children are
        too short for term statistics: most query words are in a neighbouring sentence)."""
        return self.strategy is Strategy.HIERARCHICAL and self.sentence_window > 0


MAX_SENTENCE_WINDOW = 4


@frozen
class Collection:
    """A collection as stored.

    Attributes:
        collection_id: The id (``collections/{collection_id}`` is its name).
        embedding_model: The model of every vector in it.
        dimension: That model's vector length.
        chunking: How its documents are cut.
        fields: Filterable metadata fields and their types.
        description: A note for people.
        created_ms: Creation time, Unix ms.
        document_count: Documents held (filled in when read).
        chunk_count: Chunks indexed (filled in when read).
        next_model: The model a migration moves to ("" when none runs).
        next_dimension: Its vector length.
        backfilled_count: Chunks with a vector of ``next_model`` so far.
        backfill_total: Chunks indexed when the migration started.
        migration_started_ms: When it started.
        ensemble: Further embedding models (id -> dimension) whose vector rankings vector and
            hybrid search fuse with ``embedding_model``'s. Fixed at creation.
        ensemble_unit: What the ensemble models embed of a sentence window; None in any
            collection without both ensemble models and sentence windows. Fixed at creation.
    """

    collection_id: str
    embedding_model: str
    dimension: int
    chunking: Chunking
    fields: Mapping[str, FieldType]
    description: str = ""
    created_ms: int = 0
    document_count: int = 0
    chunk_count: int = 0
    next_model: str = ""
    next_dimension: int = 0
    backfilled_count: int = 0
    backfill_total: int = 0
    migration_started_ms: int = 0
    ensemble: Mapping[str, int] = dataclasses.field(default_factory=dict)
    ensemble_unit: EnsembleUnit | None = None

    @property
    def name(self) -> str:
        return f"collections/{self.collection_id}"

    @property
    def ensemble_embeds_sections(self) -> bool:
        """Whether the ensemble models embed each window's parent section rather than the window."""
        return self.chunking.keyword_on_parent and self.ensemble_unit is EnsembleUnit.SECTION

    def ensemble_text(self, chunk: Chunk) -> str:
        """What an ensemble model embeds of ``chunk``: the section or the chunk's own text."""
        return chunk.section_text() if self.ensemble_embeds_sections else chunk.indexed_text()

    @property
    def models(self) -> list[str]:
        """The models every new chunk needs a vector of: the active one, a migration's target and
        the ensemble's."""
        active = [self.embedding_model, self.next_model] if self.next_model else [self.embedding_model]
        return active + list(self.ensemble)


@frozen
class Document:
    """A document as stored.

    Attributes:
        collection_id: Its collection.
        document_id: Its id in the collection.
        text: The latest content's text (empty when listed).
        title: The title.
        metadata: JSON metadata.
        source_version: The caller's version string.
        content_hash: Hash of the latest title, text and metadata.
        indexed_hash: Hash of the indexed content ("" before the first indexing).
        state: Whether the latest content is indexed.
        chunk_count: Chunks of the indexed content.
        updated_ms: When the latest content was upserted.
        indexed_ms: When the indexed content was indexed (0 never).
        operation_id: The operation indexing the latest content.
    """

    collection_id: str
    document_id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source_version: str = ""
    content_hash: str = ""
    indexed_hash: str = ""
    state: DocState = DocState.PENDING
    chunk_count: int = 0
    updated_ms: int = 0
    indexed_ms: int = 0
    operation_id: str = ""

    @property
    def name(self) -> str:
        return document_name(self.collection_id, self.document_id)


def document_name(collection_id: str, document_id: str) -> str:
    """The resource name of a document; also the id cache entries record for grounding."""
    return f"collections/{collection_id}/documents/{document_id}"


def content_hash(title: str, text: str, metadata: Mapping[str, Any]) -> str:
    """SHA-256 hex of what indexing depends on: title, text and metadata (keys sorted).

    Metadata is part of it because filters read the indexed copy of it: a metadata-only
    change must reach the indexes too.
    """
    canonical = json.dumps([title, text, metadata], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@frozen(slots=True)
class ChunkText:
    """One chunk as the chunker cuts it.

    Attributes:
        text: The chunk's text (indexed).
        parent: For hierarchical chunking, the index of its parent section in the
            chunker's parent list; -1 otherwise.
        section: The heading path of the section it came from ("" outside any section).
    """

    text: str
    parent: int = -1
    section: str = ""


@frozen(slots=True)
class Chunk:
    """One indexed chunk as stored in Redis and held by the indexes.

    Attributes:
        chunk_id: ``{document_id}:{hash12}:{n}``: unique in the collection, stable while the
            document's content is unchanged, so re-indexing the same content is a no-op.
        document_id: Its document.
        text: The chunk's text.
        title: The document's title (indexed with the chunk).
        parent_text: The parent section (hierarchical collections), else "".
        metadata: The document's metadata at indexing time.
        vector: Its embedding (unit norm), float32.
        ensemble_vectors: Its vectors of the collection's ensemble models, by model id.
    """

    chunk_id: str
    document_id: str
    text: str
    title: str
    parent_text: str
    metadata: Mapping[str, Any]
    vector: Any  # np.ndarray; typed loosely so this module needs no numpy
    ensemble_vectors: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def indexed_text(self) -> str:
        """What is embedded and keyword-indexed: the title gives every chunk its context."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    def section_text(self) -> str:
        """The parent section with the title (the chunk itself when it has no parent): what BM25
        reads for a sentence window, and what an ensemble model embeds for one when the
        collection's ``ensemble_unit`` is SECTION (see :meth:`Chunking.keyword_on_parent`)."""
        body = self.parent_text or self.text
        return f"{self.title}\n{body}" if self.title else body


def chunk_id(document_id: str, digest: str, n: int) -> str:
    """The id of the ``n``-th chunk of a document's content with hash ``digest``."""
    return f"{document_id}:{digest[:12]}:{n}"


@frozen
class Operation:
    """The progress of one upsert's indexing.

    Attributes:
        operation_id: Its id (``operations/{operation_id}``).
        collection_id: The document's collection.
        document_id: The document.
        content_hash: The content being indexed.
        state: The stage.
        chunk_count: Chunks cut (0 before chunking).
        embedded_count: Chunks embedded so far.
        attempts: Tries so far.
        unchanged: Nothing had to be done.
        created_ms: When the upsert was accepted.
        updated_ms: When the progress last changed.
        error_code: google.rpc.Code number of a failure (0 when none).
        error_reason: Stable reason of a failure.
        error_message: Failure text for people.
    """

    operation_id: str
    collection_id: str
    document_id: str
    content_hash: str
    state: OpState
    chunk_count: int = 0
    embedded_count: int = 0
    attempts: int = 0
    unchanged: bool = False
    created_ms: int = 0
    updated_ms: int = 0
    error_code: int = 0
    error_reason: str = ""
    error_message: str = ""

    @property
    def name(self) -> str:
        return f"operations/{self.operation_id}"


@frozen
class Filter:
    """One metadata condition of a search (already checked against the collection)."""

    field: str
    op: Op
    value: Any = None
    values: Sequence[Any] = ()


@frozen
class SearchOptions:
    """A search, with every default applied.

    Attributes:
        query: The query text.
        top_k: Results wanted.
        mode: Indexes used.
        fusion: Fusion method for hybrid search.
        keyword_weight: Weight of the keyword ranking in the fusion (0 to 1); None takes the
            collection's default (the service's, or its ensemble collections' when it has ensemble models).
        rrf_k: RRF's rank offset.
        filters: Conditions every result meets.
        mmr: Whether MMR re-ranks the fused candidates.
        mmr_lambda: MMR's relevance weight.
        feedback_count: Top results the pseudo-relevance feedback round uses (0: none).
        group_by_document: One result per document (its best chunk).
        query_vector: The query embedding (None for keyword search).
        bigram_weight: Weight of word-pair (phrase) matches in BM25, added to the words' score.
        ensemble_weight: The share of the vector side of the fusion given to the collection's
            ensemble models (split evenly among them); the main model gets the rest. 0 to 1.
        ensemble_vectors: The query embedded by each ensemble model, by model id.
    """

    query: str
    top_k: int = 10
    mode: Mode = Mode.HYBRID
    fusion: FusionMethod = FusionMethod.WEIGHTED
    keyword_weight: float | None = 0.4
    rrf_k: int = 60
    filters: Sequence[Filter] = ()
    mmr: bool = False
    mmr_lambda: float = 0.7
    feedback_count: int = 0
    group_by_document: bool = False
    query_vector: Any = None
    bigram_weight: float = 0.25
    ensemble_weight: float = 0.5
    ensemble_vectors: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@frozen(slots=True)
class Hit:
    """One search result.

    Attributes:
        chunk: The chunk (its vector included).
        score: The ranking score.
        vector_score: Cosine similarity to the query (-1 when not computed).
        keyword_score: BM25 score (0 when not computed or no match).
    """

    chunk: Chunk
    score: float
    vector_score: float
    keyword_score: float


@frozen
class SearchOutcome:
    """What a search found: the hits, best first, and how many chunks passed the filters."""

    hits: list[Hit]
    candidate_count: int
