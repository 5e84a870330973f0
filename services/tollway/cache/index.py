"""The tier-2 vector index: one hnswlib graph per namespace, plus compact metadata.

Labels in the hnswlib graph are *rows* local to this replica, reused after deletion,
so the graph stays as large as the live entries rather than growing with every store
(a deleted label is ``mark_deleted`` and re-added later through hnswlib's update path).
Entry ids (global, from Redis) map to rows through one dict; the metadata the search
filters on (context tag, scope, tenant, user, expiry) lives in numpy arrays indexed by
row, about 40 bytes an entry.

hnswlib's ``add_items`` is not safe against a concurrent ``knn_query`` and
``resize_index`` against anything, so callers mutate and search from one thread (the
event loop); only the start-up rebuild, before the service reports SERVING, adds from
several threads.

The pre-filter here is an optimisation, not the safety check: the cache re-checks every
candidate against the entry it reads from Redis before serving it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import hnswlib
import numpy as np

from tollway.cache.scope import Scope
from tollway.mesh.frozen import frozen

_NO_ID = -2  # a tenant or user id that matches nothing


@frozen
class IndexParams:
    """hnswlib settings shared by every namespace's index.

    Attributes:
        dim: Vector dimension.
        m: Graph degree (memory grows with it; recall too).
        ef_construction: Candidate list size while inserting (build time grows with it).
        ef_search: Candidate list size while searching (never below the k asked for).
        initial_capacity: Rows allocated for a new namespace; the index doubles when full.
        k: Neighbours fetched per search before filtering.
        max_k: The most neighbours a search widens to when every near neighbour was
            filtered out (other tenants' or other contexts' entries crowding the top).
    """

    dim: int = 384
    m: int = 12
    ef_construction: int = 64
    ef_search: int = 64
    initial_capacity: int = 1024
    k: int = 8
    max_k: int = 256


@frozen(slots=True)
class IndexRecord:
    """What the index keeps about one entry."""

    entry_id: int
    context: int
    scope: Scope
    tenant_id: str
    user_id: str
    expires_ms: int
    stale_until_ms: int
    vector: np.ndarray


@frozen(slots=True)
class Candidate:
    """A neighbour that passed the pre-filter, best first in a SearchResult."""

    entry_id: int
    similarity: float
    stale: bool


@frozen(slots=True)
class SearchResult:
    """Candidates above the threshold that pass the filter, and what was seen at all.

    Attributes:
        candidates: Passing neighbours, fresh before stale, then by similarity.
        best_similarity: The highest similarity among every neighbour returned, passing or
            not (-1 when the index is empty); tells "below threshold" from "filtered out".
        searched_k: How many neighbours the search finally asked for.
    """

    candidates: list[Candidate]
    best_similarity: float
    searched_k: int


class Interner:
    """Maps tenant and user ids to small integers for the metadata arrays.

    The empty id maps to -1 when stored; looking up an unknown or empty id gives -2, so
    neither can ever equal a stored id.
    """

    def __init__(self, strings: Iterable[str] = ()) -> None:
        self._ids: dict[str, int] = {}
        self._strings: list[str] = []
        for s in strings:
            self.intern(s)

    def intern(self, s: str) -> int:
        """The id of ``s``, adding it if new; -1 for the empty string."""
        if not s:
            return -1
        found = self._ids.get(s)
        if found is None:
            found = self._ids[s] = len(self._strings)
            self._strings.append(s)
        return found

    def lookup(self, s: str) -> int:
        """The id of ``s`` without adding it; -2 when empty or unknown."""
        if not s:
            return _NO_ID
        return self._ids.get(s, _NO_ID)

    @property
    def strings(self) -> list[str]:
        return list(self._strings)


def normalise(vector: np.ndarray) -> np.ndarray:
    """A float32 unit vector (hnswlib's cosine space normalises too; the cache stores unit vectors)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class SemanticIndex:
    """One namespace's hnswlib graph and row metadata."""

    _ARRAYS = ("entry", "context", "scope", "tenant", "user", "expires", "stale_until")

    def __init__(self, params: IndexParams, interner: Interner, capacity: int | None = None) -> None:
        self.params = params
        self.interner = interner
        capacity = max(16, capacity or params.initial_capacity)
        self._hnsw = hnswlib.Index(space="cosine", dim=params.dim)
        self._hnsw.init_index(max_elements=capacity, M=params.m, ef_construction=params.ef_construction)
        self._hnsw.set_ef(params.ef_search)
        self._row_of: dict[int, int] = {}
        self._free: list[int] = []
        self._next_row = 0
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.entry = np.zeros(capacity, np.int64)  # 0: free row (entry ids start at 1)
        self.context = np.zeros(capacity, np.int64)
        self.scope = np.zeros(capacity, np.int8)
        self.tenant = np.full(capacity, _NO_ID, np.int32)
        self.user = np.full(capacity, _NO_ID, np.int32)
        self.expires = np.zeros(capacity, np.int64)
        self.stale_until = np.zeros(capacity, np.int64)

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._row_of

    @property
    def capacity(self) -> int:
        return int(self._hnsw.get_max_elements())

    @property
    def entry_ids(self) -> list[int]:
        return list(self._row_of)

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        if needed <= capacity:
            return
        new = max(needed, capacity * 2)
        self._hnsw.resize_index(new)
        for name in self._ARRAYS:
            old = getattr(self, name)
            fill = _NO_ID if name in ("tenant", "user") else 0
            grown = np.full(new, fill, old.dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)

    def add(self, records: Sequence[IndexRecord], num_threads: int = 1) -> int:
        """Adds entries not yet present. Returns how many were added.

        Re-adding a present entry id is a no-op, which makes replaying the event stream
        (or hearing back one's own store) harmless.
        """
        fresh: list[IndexRecord] = []
        seen: set[int] = set()
        for r in records:
            if r.entry_id not in self._row_of and r.entry_id not in seen:
                fresh.append(r)
                seen.add(r.entry_id)
        if not fresh:
            return 0
        reuse = min(len(fresh), len(self._free))
        rows = [self._free.pop() for _ in range(reuse)]
        extra = len(fresh) - reuse
        rows += list(range(self._next_row, self._next_row + extra))
        self._grow(self._next_row + extra)
        self._next_row += extra
        rows_arr = np.asarray(rows, dtype=np.int64)
        # Metadata first: a search that meets the new point already sees its filter fields.
        self.entry[rows_arr] = [r.entry_id for r in fresh]
        self.context[rows_arr] = [r.context for r in fresh]
        self.scope[rows_arr] = [int(r.scope) for r in fresh]
        self.tenant[rows_arr] = [self.interner.intern(r.tenant_id) for r in fresh]
        self.user[rows_arr] = [self.interner.intern(r.user_id) for r in fresh]
        self.expires[rows_arr] = [r.expires_ms for r in fresh]
        self.stale_until[rows_arr] = [r.stale_until_ms for r in fresh]
        vectors = np.stack([np.asarray(r.vector, dtype=np.float32).reshape(-1) for r in fresh])
        self._hnsw.add_items(vectors, rows_arr, num_threads=num_threads)
        for r, row in zip(fresh, rows, strict=True):
            self._row_of[r.entry_id] = row
        return len(fresh)

    def remove(self, entry_ids: Iterable[int]) -> int:
        """Marks entries deleted and frees their rows. Returns how many were present."""
        removed = 0
        for entry_id in entry_ids:
            row = self._row_of.pop(entry_id, None)
            if row is None:
                continue
            self._hnsw.mark_deleted(row)
            self.entry[row] = 0
            self.context[row] = 0
            self._free.append(row)
            removed += 1
        return removed

    def _query(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        # hnswlib raises when it cannot find k live points (deletions); ask for fewer.
        while k > 0:
            self._hnsw.set_ef(max(self.params.ef_search, k))
            try:
                labels, distances = self._hnsw.knn_query(vector, k=k, num_threads=1)
                return labels[0].astype(np.int64), 1.0 - distances[0].astype(np.float64), k
            except RuntimeError:
                k //= 2
        return np.zeros(0, np.int64), np.zeros(0, np.float64), 0

    def search(
        self,
        vector: np.ndarray,
        *,
        context: int,
        lookup_scope: Scope,
        tenant_id: str,
        user_id: str,
        now_ms: int,
        allow_stale: bool,
        threshold: float,
    ) -> SearchResult:
        """Nearest entries above ``threshold`` that this requester may be served.

        Starts with ``params.k`` neighbours; when all of them reach the threshold but every
        one is filtered out (a popular question cached by many other tenants, say), it asks
        for four times as many, up to ``params.max_k``, so crowding costs a wider search
        rather than a lost hit.
        """
        live = len(self._row_of)
        if live == 0:
            return SearchResult([], -1.0, 0)
        query = normalise(vector).reshape(1, -1)
        tenant = self.interner.lookup(tenant_id)
        user = self.interner.lookup(user_id)
        k = min(self.params.k, live)
        while True:
            labels, sims, got = self._query(query, k)
            if got == 0:
                return SearchResult([], -1.0, 0)
            effective = np.maximum(self.scope[labels], np.int8(lookup_scope))
            effective = np.where(effective == Scope.UNSPECIFIED, np.int8(Scope.USER), effective)
            same_tenant = (self.tenant[labels] == tenant) & (tenant >= 0)
            same_user = same_tenant & (self.user[labels] == user) & (user >= 0)
            seen = (
                (effective == Scope.GLOBAL)
                | ((effective == Scope.TENANT) & same_tenant)
                | ((effective == Scope.USER) & same_user)
            )
            fresh = now_ms < self.expires[labels]
            alive = (now_ms < self.stale_until[labels]) if allow_stale else fresh
            ok = (sims >= threshold) & (self.entry[labels] != 0) & (self.context[labels] == context) & seen & alive
            if ok.any() or got >= live or sims[-1] < threshold or got >= self.params.max_k:
                break
            k = min(got * 4, live, self.params.max_k)
        candidates = [
            Candidate(int(self.entry[row]), float(sim), not bool(is_fresh))
            for row, sim, is_fresh, keep in zip(labels, sims, fresh, ok, strict=True)
            if keep
        ]
        candidates.sort(key=lambda c: (c.stale, -c.similarity))
        return SearchResult(candidates, float(sims.max()), got)

    def save(self, directory: Path) -> None:
        """Writes the graph and metadata under ``directory`` (which must exist)."""
        self._hnsw.save_index(str(directory / "hnsw.bin"))
        np.savez(
            directory / "meta.npz",
            free=np.asarray(self._free, np.int64),
            next_row=np.asarray([self._next_row], np.int64),
            **{name: getattr(self, name)[: self._next_row] for name in self._ARRAYS},
        )

    @classmethod
    def load(cls, directory: Path, params: IndexParams, interner: Interner) -> SemanticIndex:
        """Reads what :meth:`save` wrote; the interner must be the one saved alongside."""
        meta = np.load(directory / "meta.npz")
        index = cls.__new__(cls)
        index.params = params
        index.interner = interner
        index._hnsw = hnswlib.Index(space="cosine", dim=params.dim)
        index._hnsw.load_index(str(directory / "hnsw.bin"))
        index._hnsw.set_ef(params.ef_search)
        capacity = index.capacity
        index._alloc(capacity)
        index._next_row = int(meta["next_row"][0])
        for name in cls._ARRAYS:
            getattr(index, name)[: index._next_row] = meta[name]
        index._free = [int(x) for x in meta["free"]]
        rows = np.nonzero(index.entry[: index._next_row])[0]
        index._row_of = dict(zip(index.entry[rows].tolist(), rows.tolist(), strict=True))
        return index


class IndexSet:
    """Every namespace's index on this replica, created on first use."""

    def __init__(self, params: IndexParams, interner: Interner | None = None) -> None:
        self.params = params
        self.interner = interner or Interner()
        self._indexes: dict[str, SemanticIndex] = {}

    def get(self, namespace: str) -> SemanticIndex | None:
        return self._indexes.get(namespace)

    def ensure(self, namespace: str, capacity: int | None = None) -> SemanticIndex:
        """The namespace's index, created empty (with room for ``capacity``) if missing."""
        index = self._indexes.get(namespace)
        if index is None:
            index = self._indexes[namespace] = SemanticIndex(self.params, self.interner, capacity)
        return index

    def namespaces(self) -> list[str]:
        return sorted(self._indexes)

    def count(self, namespace: str) -> int:
        index = self._indexes.get(namespace)
        return len(index) if index else 0

    def remove(self, namespace: str, entry_ids: Iterable[int]) -> int:
        index = self._indexes.get(namespace)
        return index.remove(entry_ids) if index else 0

    def clear(self) -> None:
        self._indexes.clear()

    def save(self, directory: Path) -> None:
        """Writes every index under ``directory`` (one sub-directory each) and the interner."""
        names = self.namespaces()
        for i, name in enumerate(names):
            sub = directory / f"ns{i}"
            sub.mkdir()
            self._indexes[name].save(sub)
        (directory / "indexes.json").write_text(json.dumps({"namespaces": names, "strings": self.interner.strings}))

    @classmethod
    def load(cls, directory: Path, params: IndexParams) -> IndexSet:
        """Reads what :meth:`save` wrote."""
        layout = json.loads((directory / "indexes.json").read_text())
        out = cls(params, Interner(layout["strings"]))
        for i, name in enumerate(layout["namespaces"]):
            out._indexes[name] = SemanticIndex.load(directory / f"ns{i}", params, out.interner)
        return out
