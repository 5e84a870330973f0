"""The cache's domain values: stored entries, and the questions and answers of each operation."""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from tollway.cache.index import IndexRecord
from tollway.cache.keys import Fingerprint, context_tag
from tollway.cache.scope import Scope
from tollway.common.caching import CacheMode, CacheTier
from tollway.mesh.frozen import frozen


class MissReason(enum.IntEnum):
    """Why a lookup missed (numbers are tollway.cache.v1.MissReason's)."""

    NONE = 0
    NOT_FOUND = 1
    BYPASS = 2
    REFRESH = 3
    NONDETERMINISTIC = 4
    BELOW_THRESHOLD = 5
    REJECTED_BY_CHECK = 6
    EXPIRED = 7


class SkipReason(enum.IntEnum):
    """Why a store was declined (numbers are tollway.cache.v1.StoreSkipReason's)."""

    NONE = 0
    BYPASS = 1
    NONDETERMINISTIC = 2


@frozen(slots=True)
class Answer:
    """A complete model answer and what producing it cost."""

    text: str
    model: str = ""
    provider: str = ""
    finish_reason: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


@frozen(slots=True)
class Entry:
    """One cached answer as stored in Redis.

    Attributes:
        entry_id: Global id from Redis (0 before the entry is stored).
        namespace: The namespace it lives in.
        key: Its tier-1 key.
        context: Its tier-2 context key (see :func:`tollway.cache.keys.context_key`).
        scope: The effective scope it was stored with.
        tenant_id: The tenant that stored it (recorded whatever the scope).
        user_id: The user that stored it (recorded whatever the scope).
        prompt_template: The template it was rendered from, for invalidation.
        prompt_version: The template version.
        query: The last message's text, for the second check.
        embedding_model: The model that made ``vector``.
        created_ms: When it was stored (Unix ms).
        expires_ms: When it stops being served fresh (Unix ms).
        stale_until_ms: When it is deleted; served stale until then on request (Unix ms).
        document_ids: Documents that grounded the answer.
        answer: The answer.
        vector: The unit query embedding, or None (tier 1 only).
    """

    entry_id: int
    namespace: str
    key: str
    context: str
    scope: Scope
    tenant_id: str
    user_id: str
    prompt_template: str
    prompt_version: str
    query: str
    embedding_model: str
    created_ms: int
    expires_ms: int
    stale_until_ms: int
    document_ids: tuple[str, ...]
    answer: Answer
    vector: np.ndarray | None = None

    def fresh_at(self, now_ms: int) -> bool:
        return now_ms < self.expires_ms

    def servable_stale_at(self, now_ms: int) -> bool:
        return self.expires_ms <= now_ms < self.stale_until_ms

    def index_record(self) -> IndexRecord:
        """What the tier-2 index keeps about this entry (it must have a vector)."""
        assert self.vector is not None
        return IndexRecord(
            entry_id=self.entry_id,
            context=context_tag(self.context),
            scope=self.scope,
            tenant_id=self.tenant_id,
            user_id=self.user_id,
            expires_ms=self.expires_ms,
            stale_until_ms=self.stale_until_ms,
            vector=self.vector,
        )


@frozen(slots=True)
class Requester:
    """Who asks, and how strictly they want their answers kept."""

    namespace: str
    tenant_id: str = ""
    user_id: str = ""
    scope: Scope = Scope.UNSPECIFIED


@frozen(slots=True)
class LookupQuery:
    """A lookup: who asks, what they ask, and how."""

    requester: Requester
    fingerprint: Fingerprint
    embedding: np.ndarray | None = None
    embedding_model: str = ""
    mode: CacheMode = CacheMode.NORMAL
    allow_stale: bool = False
    semantic_only: bool = False


@frozen(slots=True)
class Rejection:
    """A semantic candidate the second check turned down, and which check did.

    Attributes:
        entry_id: The candidate entry.
        similarity: Its cosine with the query.
        check: The check that rejected it (a rule name, ``learned_check`` or ``false_hit_guard``).
        detail: The evidence, e.g. ``"5 vs 10"``.
        score: The learned check's probability, when it ran.
    """

    entry_id: int
    similarity: float
    check: str
    detail: str = ""
    score: float | None = None


@frozen(slots=True)
class LookupOutcome:
    """The result of a lookup; ``entry`` is set exactly when ``tier`` is a hit tier."""

    tier: CacheTier
    key: str
    entry: Entry | None = None
    similarity: float = 0.0
    miss_reason: MissReason = MissReason.NONE
    sample_for_quality: bool = False
    check_reason: str = ""
    rejections: tuple[Rejection, ...] = ()


@frozen(slots=True)
class StoreCommand:
    """A complete answer to store for a request."""

    requester: Requester
    fingerprint: Fingerprint
    answer: Answer
    embedding: np.ndarray | None = None
    embedding_model: str = ""
    mode: CacheMode = CacheMode.NORMAL
    document_ids: tuple[str, ...] = ()


@frozen(slots=True)
class StoreOutcome:
    """The result of a store."""

    stored: bool
    key: str
    entry_id: int = 0
    expires_ms: int = 0
    skip_reason: SkipReason = SkipReason.NONE
    evicted_count: int = 0


@frozen(slots=True)
class InvalidateTarget:
    """What to remove; exactly one field is set (the cache validates that)."""

    document_ids: tuple[str, ...] = ()
    prompt_template: str = ""
    prompt_version: str = ""
    namespace: str = ""
    everything: bool = False


@frozen(slots=True)
class NamespaceStats:
    """Figures for one namespace (see tollway.cache.v1.NamespaceStats)."""

    namespace: str
    entry_count: int
    indexed_count: int
    exact_hit_count: int = 0
    exact_miss_count: int = 0
    semantic_hit_count: int = 0
    semantic_miss_count: int = 0
    stale_hit_count: int = 0
    check_rejection_count: int = 0
    skip_count: int = 0
    store_count: int = 0
    eviction_count: int = 0
    invalidation_count: int = 0
    expiry_count: int = 0
    quality_sample_count: int = 0
    quality_token_f1_mean: float = 0.0
    quality_embedding_cosine_mean: float = 0.0
    check_rejection_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    false_hit_threshold: float = 0.0


@frozen(slots=True)
class QualitySample:
    """A semantic hit's cached answer next to a fresh answer to the same request."""

    namespace: str
    cached_text: str
    fresh_text: str
    cached_embedding: np.ndarray | None = None
    fresh_embedding: np.ndarray | None = None
    entry_id: str = ""


@frozen(slots=True)
class QualityResult:
    """Agreement between a cached and a fresh answer."""

    token_f1: float
    embedding_cosine: float | None = None
