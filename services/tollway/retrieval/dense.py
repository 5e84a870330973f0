"""One embedding model's vectors of a collection's rows: an hnswlib graph plus the same vectors in
a numpy matrix (exact search over small filtered subsets, fusion scores of any candidate, MMR).

A collection index holds one of these for its embedding model and one per ensemble model; all
of them share the index's row numbers, so a row is the same chunk in every space.
"""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np


class VectorSpace:
    """Vectors of one model, addressed by row. Use from one thread (hnswlib's ``add_items`` is
    not safe against a concurrent ``knn_query``)."""

    def __init__(self, dim: int, capacity: int, *, m: int, ef_construction: int, ef_search: int) -> None:
        self.dim = dim
        self.ef_search = ef_search
        self._hnsw = hnswlib.Index(space="ip", dim=dim)
        self._hnsw.init_index(max_elements=capacity, M=m, ef_construction=ef_construction)
        self._hnsw.set_ef(ef_search)
        self.vectors = np.zeros((capacity, dim), np.float32)

    def grow(self, capacity: int) -> None:
        """Makes room for ``capacity`` rows (never shrinks)."""
        if capacity <= len(self.vectors):
            return
        self._hnsw.resize_index(capacity)
        vectors = np.zeros((capacity, self.dim), np.float32)
        vectors[: len(self.vectors)] = self.vectors
        self.vectors = vectors

    def add(self, matrix: np.ndarray, rows: np.ndarray, num_threads: int = 1) -> None:
        """Sets the vectors of ``rows`` (unit norm, one row of ``matrix`` each)."""
        if matrix.shape[1] != self.dim:
            raise ValueError(f"vector dimension {matrix.shape[1]} differs from the index's {self.dim}")
        self.vectors[rows] = matrix
        self._hnsw.add_items(matrix, rows, num_threads=num_threads, replace_deleted=False)

    def delete(self, row: int) -> None:
        """Hides a row from approximate search (its row number is reused later)."""
        self._hnsw.mark_deleted(row)

    def top(self, query: np.ndarray, n: int, allowed: np.ndarray, *, exact: bool, live: int) -> np.ndarray:
        """Up to ``n`` allowed rows nearest to ``query``, best first: exact over the allowed rows
        when asked, else hnswlib widened until ``n`` allowed rows are found or all ``live`` rows
        were seen. ``n`` must not exceed the allowed count."""
        if exact:
            rows = np.nonzero(allowed)[0]
            sims = self.vectors[rows] @ query
            top = np.argpartition(-sims, n - 1)[:n] if n < len(rows) else np.arange(len(rows))
            return rows[top[np.argsort(-sims[top])]]
        everything = int(allowed.sum()) == live
        k = min(live, n if everything else n * 4)
        q = query.reshape(1, -1)
        while True:
            self._hnsw.set_ef(max(self.ef_search, k))
            labels, _ = self._hnsw.knn_query(q, k=k, num_threads=1)
            rows = labels[0].astype(np.int64)
            rows = rows[allowed[rows]]
            if len(rows) >= n or k >= live:
                return rows[:n]
            k = min(live, k * 4)

    def save(self, graph: Path, vectors: Path, rows: int) -> None:
        """Writes the graph and the first ``rows`` vectors to these two files."""
        self._hnsw.save_index(str(graph))
        np.save(vectors, self.vectors[:rows])

    def load(self, graph: Path, vectors: Path) -> int:
        """Reads what :meth:`save` wrote into this (empty) space; returns the rows read.

        Raises:
            OSError: A file is missing.
            ValueError: The saved vectors have another dimension, or more rows than the capacity.
        """
        saved = np.load(vectors)
        if saved.ndim != 2 or saved.shape[1] != self.dim or len(saved) > len(self.vectors):
            raise ValueError(f"{vectors.name} holds vectors of shape {saved.shape}, expected dimension {self.dim}")
        self._hnsw = hnswlib.Index(space="ip", dim=self.dim)
        self._hnsw.load_index(str(graph), max_elements=len(self.vectors))
        self._hnsw.set_ef(self.ef_search)
        self.vectors[: len(saved)] = saved
        return len(saved)
