"""One collection's in-memory indexes on this replica: hnswlib vectors, BM25, metadata columns.

Chunks live in *rows*. A row holds the chunk, its vector (in a :class:`~.dense.VectorSpace`:
hnswlib plus a numpy matrix, for exact search over a small filtered subset, for fusion scores
of any candidate and for MMR), its vectors of the collection's ensemble models (a space each),
its stemmed tokens, and its filterable metadata. Rows are reused after deletion, but only
once a keyword rebuild has seen them empty, so a BM25 build never scores one chunk's words
for another chunk.

hnswlib's ``add_items`` is not safe against a concurrent ``knn_query``: every mutation and
search runs on the event loop thread; only the BM25 rebuild runs in a worker thread, on a
copy of the token lists, and is swapped in on the loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tollway.mesh.frozen import frozen
from tollway.retrieval.dense import VectorSpace
from tollway.retrieval.filters import Columns
from tollway.retrieval.keyword import KeywordModel, tokenize
from tollway.retrieval.types import Chunk, FieldType, Filter


@frozen
class IndexParams:
    """Index settings shared by every collection.

    Attributes:
        m: hnswlib graph degree.
        ef_construction: hnswlib candidate list while inserting.
        ef_search: hnswlib candidate list while searching (never below the k asked for).
        initial_capacity: Rows allocated for a new index; it doubles when full.
        exact_below: A filtered vector search over at most this many rows is exact (a
            matrix product), since an approximate search would mostly find filtered-out rows.
        bm25_k1: BM25 k1.
        bm25_b: BM25 b.
        bigrams: Whether neighbouring word pairs are BM25 terms too.
    """

    m: int = 16
    ef_construction: int = 100
    ef_search: int = 96
    initial_capacity: int = 1024
    exact_below: int = 4096
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    bigrams: bool = False


@frozen
class KeywordRows:
    """What a BM25 build reads, taken on the loop: token lists and, when BM25 scores parent
    sections, the group (parent section) of every row; ``tokens`` then holds one list per group."""

    tokens: list[list[str]]
    row_group: np.ndarray | None = None


class CollectionIndex:
    """The indexes of one collection and embedding model (plus its ensemble models).

    With ``keyword_on_parent`` (sentence-window collections), a row's BM25 tokens are its parent
    section's (with the title), and BM25 is built over the distinct parent sections, each
    chunk taking its section's score; vectors stay per chunk.
    """

    def __init__(
        self,
        dim: int,
        fields: Mapping[str, FieldType],
        params: IndexParams,
        capacity: int = 0,
        *,
        keyword_on_parent: bool = False,
        ensemble: Mapping[str, int] | None = None,
    ) -> None:
        self.dim = dim
        self.params = params
        self.keyword_on_parent = keyword_on_parent
        capacity = max(16, capacity or params.initial_capacity)
        self.space = self._space(dim, capacity)
        # Ensemble models, by id, in a fixed order (the snapshot's file names follow it).
        self.ensemble = {m: self._space(d, capacity) for m, d in sorted((ensemble or {}).items())}
        self.live = np.zeros(capacity, bool)
        self.columns = Columns(fields, capacity)
        self.chunks: list[Chunk | None] = [None] * capacity
        self.tokens: list[list[str]] = [[] for _ in range(capacity)]
        self.row_of: dict[str, int] = {}
        self.doc_rows: dict[str, set[int]] = {}
        self.next_row = 0
        self._free: list[int] = []
        self._pending_free: list[int] = []
        self.keyword = KeywordModel([], params.bm25_k1, params.bm25_b)
        self.keyword_dirty = False

    def _space(self, dim: int, capacity: int) -> VectorSpace:
        p = self.params
        return VectorSpace(dim, capacity, m=p.m, ef_construction=p.ef_construction, ef_search=p.ef_search)

    @property
    def vectors(self) -> np.ndarray:
        """The main model's vectors by row."""
        return self.space.vectors

    def vectors_of(self, model: str | None) -> np.ndarray:
        """The vectors by row of an ensemble model (None: the main model)."""
        return self.space.vectors if model is None else self.ensemble[model].vectors

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def capacity(self) -> int:
        return len(self.live)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self.row_of

    def document_chunk_ids(self, document_id: str) -> list[str]:
        rows = self.doc_rows.get(document_id, ())
        return [c.chunk_id for r in rows if (c := self.chunks[r]) is not None]

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new = max(needed, self.capacity * 2)
        for space in (self.space, *self.ensemble.values()):
            space.grow(new)
        live = np.zeros(new, bool)
        live[: self.capacity] = self.live
        self.chunks += [None] * (new - self.capacity)
        self.tokens += [[] for _ in range(new - self.capacity)]
        self.live = live
        self.columns.grow(new)

    def add(self, chunks: Sequence[Chunk], tokens: Sequence[list[str]] | None = None, num_threads: int = 1) -> int:
        """Indexes chunks not yet present (re-adding a present id is a no-op). Returns how many.

        Args:
            chunks: The chunks, each with a unit-norm vector of this index's dimension, and one of
                every ensemble model.
            tokens: Their BM25 tokens when already computed (a snapshot); else tokenized here.
            num_threads: hnswlib insertion threads (start-up rebuilds only).

        Raises:
            ValueError: A vector of the wrong dimension, or a chunk without an ensemble model's vector.
        """
        fresh_pairs = []
        seen: set[str] = set()
        for i, c in enumerate(chunks):
            if c.chunk_id not in self.row_of and c.chunk_id not in seen:
                fresh_pairs.append(i)
                seen.add(c.chunk_id)
        if not fresh_pairs:
            return 0
        fresh = [chunks[i] for i in fresh_pairs]
        matrix = np.stack([np.asarray(c.vector, np.float32).reshape(-1) for c in fresh])
        if matrix.shape[1] != self.dim:
            raise ValueError(f"vector dimension {matrix.shape[1]} differs from the index's {self.dim}")
        extra = {}
        for model, space in self.ensemble.items():
            lacking = [c.chunk_id for c in fresh if model not in c.ensemble_vectors]
            if lacking:
                raise ValueError(f"chunk {lacking[0]!r} has no vector of the ensemble model {model!r}")
            extra[model] = np.stack([np.asarray(c.ensemble_vectors[model], np.float32).reshape(-1) for c in fresh])
            if extra[model].shape[1] != space.dim:
                raise ValueError(f"{model!r} vectors have dimension {extra[model].shape[1]}, expected {space.dim}")
        toks = [tokens[i] for i in fresh_pairs] if tokens is not None else self._tokenize(fresh)
        reuse = min(len(fresh), len(self._free))
        rows = [self._free.pop() for _ in range(reuse)]
        added = len(fresh) - reuse
        rows += list(range(self.next_row, self.next_row + added))
        self._grow(self.next_row + added)
        self.next_row += added
        rows_arr = np.asarray(rows, np.int64)
        for c, row, t in zip(fresh, rows, toks, strict=True):
            self.chunks[row] = c
            self.tokens[row] = t
            self.columns.set_row(row, c.metadata)
            self.row_of[c.chunk_id] = row
            self.doc_rows.setdefault(c.document_id, set()).add(row)
        self.space.add(matrix, rows_arr, num_threads)
        for model, space in self.ensemble.items():
            space.add(extra[model], rows_arr, num_threads)
        self.live[rows_arr] = True
        self.keyword_dirty = True
        return len(fresh)

    def _tokenize(self, chunks: Sequence[Chunk]) -> list[list[str]]:
        if not self.keyword_on_parent:
            return tokenize([c.indexed_text() for c in chunks], bigrams=self.params.bigrams)
        # Siblings share one parent: tokenize each section once and share the list.
        texts = {_parent_key(c): c.section_text() for c in chunks}
        keys = list(texts)
        done = dict(zip(keys, tokenize([texts[k] for k in keys], bigrams=self.params.bigrams), strict=True))
        return [done[_parent_key(c)] for c in chunks]

    def remove(self, chunk_ids: Iterable[str]) -> int:
        """Drops chunks (absent ids are ignored). Returns how many were present."""
        removed = 0
        for cid in chunk_ids:
            row = self.row_of.pop(cid, None)
            if row is None:
                continue
            chunk = self.chunks[row]
            if chunk is not None:
                rows = self.doc_rows.get(chunk.document_id)
                if rows is not None:
                    rows.discard(row)
                    if not rows:
                        del self.doc_rows[chunk.document_id]
            for space in (self.space, *self.ensemble.values()):
                space.delete(row)
            self.live[row] = False
            self.chunks[row] = None
            self.tokens[row] = []
            self.columns.clear_row(row)
            self._pending_free.append(row)
            removed += 1
        if removed:
            self.keyword_dirty = True
        return removed

    def remove_document(self, document_id: str) -> int:
        """Drops every chunk of a document. Returns how many."""
        return self.remove(self.document_chunk_ids(document_id))

    # --- keyword -----------------------------------------------------------------------

    def keyword_snapshot(self) -> tuple[KeywordRows, list[int]]:
        """What a rebuild needs, taken on the loop: the token lists and the rows it frees."""
        self.keyword_dirty = False
        freed = list(self._pending_free)
        if not self.keyword_on_parent:
            return KeywordRows(list(self.tokens[: self.next_row])), freed
        row_group = np.full(self.next_row, -1, np.int64)
        groups: dict[tuple[str, str], int] = {}
        tokens: list[list[str]] = []
        for row in range(self.next_row):
            chunk = self.chunks[row]
            if chunk is None:
                continue
            key = _parent_key(chunk)
            group = groups.get(key)
            if group is None:
                group = groups[key] = len(tokens)
                tokens.append(self.tokens[row])
            row_group[row] = group
        return KeywordRows(tokens, row_group), freed

    def build_keyword(self, rows: KeywordRows) -> KeywordModel:
        """Builds a BM25 model over ``rows`` (safe in a worker thread)."""
        return KeywordModel(rows.tokens, self.params.bm25_k1, self.params.bm25_b, rows.row_group)

    def swap_keyword(self, model: KeywordModel, freed: Sequence[int]) -> None:
        """Installs a build; rows that were free when it was taken may now be reused."""
        self.keyword = model
        released = set(freed)
        self._pending_free = [r for r in self._pending_free if r not in released]
        self._free += [r for r in freed if not self.live[r]]

    def rebuild_keyword_now(self) -> None:
        """Rebuilds BM25 on this thread (tests, benches, start-up)."""
        rows, freed = self.keyword_snapshot()
        self.swap_keyword(self.build_keyword(rows), freed)

    def keyword_scores(self, tokens: Sequence[str], bigram_weight: float = 1.0) -> np.ndarray:
        """BM25 score of every row ``0..next_row-1`` (0 for rows the last build lacks); word
        pairs count ``bigram_weight`` times their own BM25 (see :class:`KeywordModel`)."""
        return self.keyword.scores(tokens, self.next_row, bigram_weight)

    # --- vector ------------------------------------------------------------------------

    def allowed(self, filters: Sequence[Filter]) -> np.ndarray:
        """Rows that hold a chunk and meet every filter."""
        keep = self.live[: self.next_row].copy()
        if filters:
            keep &= self.columns.mask(filters, self.next_row)
        return keep

    def vector_top(
        self, query: np.ndarray, n: int, allowed: np.ndarray, *, exact: bool = False, model: str | None = None
    ) -> np.ndarray:
        """Up to ``n`` allowed rows nearest to ``query`` (unit norm), best first, in the main
        model's space or an ensemble ``model``'s.

        Exact when asked, or when few rows are allowed; otherwise hnswlib, widened until
        ``n`` allowed rows are found or every row was seen.
        """
        count = int(allowed.sum())
        if count == 0 or n <= 0:
            return np.zeros(0, np.int64)
        n = min(n, count)
        live = len(self.row_of)
        exact = exact or (count != live and count <= self.params.exact_below)
        space = self.space if model is None else self.ensemble[model]
        return space.top(query, n, allowed, exact=exact, live=live)

    # --- snapshots ---------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Writes the index under ``directory`` (which must exist)."""
        n = self.next_row
        self.space.save(directory / "hnsw.bin", directory / "vectors.npy", n)
        for i, space in enumerate(self.ensemble.values()):
            space.save(directory / f"ensemble-{i}.bin", directory / f"ensemble-{i}.npy", n)
        np.save(directory / "live.npy", self.live[:n])
        with (directory / "rows.jsonl").open("w") as out:
            for row in range(n):
                c = self.chunks[row]
                if c is None:
                    out.write("null\n")
                    continue
                record = {
                    "id": c.chunk_id,
                    "doc": c.document_id,
                    "text": c.text,
                    "title": c.title,
                    "parent": c.parent_text,
                    "meta": c.metadata,
                    "tok": self.tokens[row],
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")

    @classmethod
    def load(
        cls,
        directory: Path,
        dim: int,
        fields: Mapping[str, FieldType],
        params: IndexParams,
        *,
        keyword_on_parent: bool = False,
        ensemble: Mapping[str, int] | None = None,
    ) -> CollectionIndex:
        """Reads what :meth:`save` wrote and rebuilds BM25 from the saved tokens.

        Raises:
            OSError: A file is missing (an ensemble model's among them).
            ValueError: Saved vectors of another dimension.
        """
        live = np.load(directory / "live.npy")
        index = cls(dim, fields, params, capacity=max(len(live), 16), keyword_on_parent=keyword_on_parent,
                    ensemble=ensemble)  # fmt: skip
        index.space.load(directory / "hnsw.bin", directory / "vectors.npy")
        for i, space in enumerate(index.ensemble.values()):
            space.load(directory / f"ensemble-{i}.bin", directory / f"ensemble-{i}.npy")
        n = len(live)
        vectors = index.vectors
        index.next_row = n
        with (directory / "rows.jsonl").open() as rows:
            for row, line in enumerate(rows):
                record = json.loads(line)
                if record is None or not live[row]:
                    index._free.append(row)
                    continue
                chunk = Chunk(
                    record["id"],
                    record["doc"],
                    record["text"],
                    record["title"],
                    record["parent"],
                    record["meta"],
                    vectors[row],
                    {m: space.vectors[row] for m, space in index.ensemble.items()},
                )
                index.chunks[row] = chunk
                index.tokens[row] = record["tok"]
                index.columns.set_row(row, chunk.metadata)
                index.row_of[chunk.chunk_id] = row
                index.doc_rows.setdefault(chunk.document_id, set()).add(row)
                index.live[row] = True
        index.rebuild_keyword_now()
        return index


def _parent_key(chunk: Chunk) -> tuple[str, str]:
    return chunk.document_id, chunk.parent_text
