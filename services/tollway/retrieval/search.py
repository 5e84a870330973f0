"""Search over one :class:`~tollway.retrieval.index.CollectionIndex`: vector, keyword, hybrid.

Hybrid search takes the best ``candidates`` rows of each ranking, scores every row of the
union on *both* (the cosine from the vector matrix, BM25 from the full score array), and
fuses: a weighted sum of z-scores (default) or reciprocal-rank fusion. A collection with
ensemble models has one more vector ranking per model, fused the same way (vector search
then fuses the vector rankings alone); the vector side's weight is shared between the main
model and the ensemble by ``ensemble_weight``. Optional steps:

* pseudo-relevance feedback: the query vector moves towards the mean vector of the top
  results (Rocchio) and the keyword query gains the top results' most telling terms; the
  search then runs again;
* grouping by document: a document scores as its best chunk (max-sim) and appears once;
* MMR: the final list is picked greedily for relevance minus redundancy.

Everything is numpy over at most a few hundred candidates, apart from the BM25 score array
(one sparse sum over the whole collection) and the filter mask.
"""

from __future__ import annotations

import re

import numpy as np

from tollway.mesh.frozen import frozen
from tollway.retrieval.index import CollectionIndex
from tollway.retrieval.keyword import expansion_terms, tokenize
from tollway.retrieval.types import FusionMethod, Hit, Mode, SearchOptions, SearchOutcome

SNIPPET_CHARS = 320
_QUERY_WORD = re.compile(r"\w{3,}")


@frozen
class Tuning:
    """Search constants a deployment may tune (defaults chosen on the dev sets, see
    docs/benchmarks.md).

    Attributes:
        candidates: Rows each ranking contributes to hybrid fusion and re-ranking.
        feedback_vector_weight: Rocchio weight of the feedback centroid added to the query.
        feedback_terms: Expansion terms the keyword query gains from feedback.
        feedback_term_weight: Weight of the expansion terms' BM25 scores.
    """

    candidates: int = 100
    feedback_vector_weight: float = 0.5
    feedback_terms: int = 10
    feedback_term_weight: float = 0.3


def _zscore(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    return (x - float(x.mean())) / std if std > 1e-9 else np.zeros_like(x)


def _ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _top(scores: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` allowed rows with the highest positive scores, best first."""
    masked = np.where(allowed, scores, 0.0)
    positive = int((masked > 0).sum())
    n = min(n, positive)
    if n <= 0:
        return np.zeros(0, np.int64)
    top = np.argpartition(-masked, n - 1)[:n]
    return top[np.argsort(-masked[top], kind="stable")].astype(np.int64)


def fuse(rankings: list[tuple[float, np.ndarray]], method: FusionMethod, rrf_k: int) -> np.ndarray:
    """One score per candidate from several rankings' scores of the same candidates.

    Args:
        rankings: (weight, scores) per ranking, every ``scores`` over the same candidates.
        method: A weighted sum of each ranking's z-scores, or reciprocal-rank fusion
            (the sum of weight / (rrf_k + rank)).
        rrf_k: RRF's rank offset.
    """
    if method is FusionMethod.RRF:
        return sum((w / (rrf_k + _ranks(x)) for w, x in rankings), np.zeros(len(rankings[0][1])))
    return sum((w * _zscore(x) for w, x in rankings), np.zeros(len(rankings[0][1])))


class Searcher:
    """Runs searches over a collection index with fixed tuning."""

    def __init__(self, tuning: Tuning | None = None) -> None:
        self.tuning = tuning or Tuning()

    def search(self, index: CollectionIndex, opts: SearchOptions) -> SearchOutcome:
        """Runs ``opts`` over ``index`` (filters already checked against the collection)."""
        allowed = index.allowed(opts.filters)
        count = int(allowed.sum())
        if count == 0:
            return SearchOutcome([], 0)
        want = max(self.tuning.candidates, opts.top_k * (4 if opts.group_by_document or opts.mmr else 1))
        query_tokens = tokenize([opts.query], bigrams=index.params.bigrams)[0] if opts.mode is not Mode.VECTOR else []
        # The query vector of each vector space: None is the main model, then the ensemble's.
        vectors: dict[str | None, np.ndarray] = {}
        if opts.mode is not Mode.KEYWORD:
            vectors[None] = np.asarray(opts.query_vector, np.float32).reshape(-1)
            for model in index.ensemble:
                if model in opts.ensemble_vectors:
                    vectors[model] = np.asarray(opts.ensemble_vectors[model], np.float32).reshape(-1)
        rows, fused, vsims, kscores = self._round(index, opts, allowed, vectors, query_tokens, None, want)
        if opts.feedback_count > 0 and len(rows):
            top_rows = self._group(index, rows, fused, opts.group_by_document)[: opts.feedback_count]
            for model, vector in vectors.items():
                centroid = index.vectors_of(model)[top_rows].mean(axis=0)
                moved = vector + self.tuning.feedback_vector_weight * centroid
                vectors[model] = moved / max(float(np.linalg.norm(moved)), 1e-12)
            extra = None
            if query_tokens:
                terms = expansion_terms(
                    index.keyword, [index.tokens[r] for r in top_rows], query_tokens, self.tuning.feedback_terms
                )
                extra = terms or None
            rows, fused, vsims, kscores = self._round(index, opts, allowed, vectors, query_tokens, extra, want)
        order = self._group(index, rows, fused, opts.group_by_document)
        position = {int(r): i for i, r in enumerate(rows)}
        if opts.mmr and len(order) > 1:
            order = self._mmr(index, order, np.asarray([fused[position[r]] for r in order]), opts)
        hits = []
        for r in order[: opts.top_k]:
            i = position[int(r)]
            chunk = index.chunks[int(r)]
            if chunk is None:
                continue
            hits.append(Hit(chunk, float(fused[i]), float(vsims[i]), float(kscores[i])))
        return SearchOutcome(hits, count)

    def _round(
        self,
        index: CollectionIndex,
        opts: SearchOptions,
        allowed: np.ndarray,
        vectors: dict[str | None, np.ndarray],
        query_tokens: list[str],
        extra_terms: list[str] | None,
        want: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One retrieval round: candidate rows best first, with fused, vector and BM25 scores."""
        keyword_all = None
        if opts.mode is not Mode.VECTOR:
            keyword_all = index.keyword_scores(query_tokens, opts.bigram_weight)
            if extra_terms:
                extra = index.keyword_scores(extra_terms, opts.bigram_weight)
                keyword_all = keyword_all + self.tuning.feedback_term_weight * extra
        if opts.mode is Mode.KEYWORD:
            assert keyword_all is not None
            rows = _top(keyword_all, allowed, want)
            scores = keyword_all[rows].astype(np.float64)
            return rows, scores, np.full(len(rows), -1.0), scores
        vector = vectors[None]
        vrows = index.vector_top(vector, want, allowed)
        if opts.mode is Mode.VECTOR and len(vectors) == 1:
            sims = (index.vectors[vrows] @ vector).astype(np.float64)
            return vrows, sims, sims, np.zeros(len(vrows))
        candidates = [vrows] + [index.vector_top(q, want, allowed, model=m) for m, q in vectors.items() if m]
        if keyword_all is not None:
            candidates.append(_top(keyword_all, allowed, want))
        rows = np.unique(np.concatenate(candidates))
        # Each ranking's scores over the union, with its weight in the fusion.
        w = (opts.keyword_weight or 0.0) if keyword_all is not None else 0.0
        share = opts.ensemble_weight if len(vectors) > 1 else 0.0
        rankings = [((1 - w) * (1 - share), (index.vectors[rows] @ vector).astype(np.float64))]
        rankings += [
            ((1 - w) * share / (len(vectors) - 1), (index.vectors_of(m)[rows] @ q).astype(np.float64))
            for m, q in vectors.items()
            if m
        ]
        kw = keyword_all[rows].astype(np.float64) if keyword_all is not None else np.zeros(len(rows))
        if keyword_all is not None:
            rankings.append((w, kw))
        fused = fuse(rankings, opts.fusion, opts.rrf_k)
        order = np.argsort(-fused, kind="stable")
        return rows[order], fused[order], rankings[0][1][order], kw[order]

    @staticmethod
    def _group(index: CollectionIndex, rows: np.ndarray, scores: np.ndarray, by_document: bool) -> list[int]:
        """Rows best first; with ``by_document`` only each document's best row (max-sim)."""
        if not by_document:
            return [int(r) for r in rows]
        seen: set[str] = set()
        out = []
        for r in rows:
            chunk = index.chunks[int(r)]
            if chunk is None or chunk.document_id in seen:
                continue
            seen.add(chunk.document_id)
            out.append(int(r))
        return out

    @staticmethod
    def _mmr(index: CollectionIndex, order: list[int], relevance: np.ndarray, opts: SearchOptions) -> list[int]:
        """Greedy maximal marginal relevance over ``order`` (relevance scaled to [0, 1])."""
        lo, hi = float(relevance.min()), float(relevance.max())
        rel = (relevance - lo) / (hi - lo) if hi > lo else np.ones_like(relevance)
        vectors = index.vectors[np.asarray(order)]
        sims = vectors @ vectors.T
        picked: list[int] = []
        left = list(range(len(order)))
        redundancy = np.full(len(order), -np.inf)
        while left and len(picked) < opts.top_k:
            scores = [
                opts.mmr_lambda * rel[i] - (1 - opts.mmr_lambda) * (redundancy[i] if picked else 0.0) for i in left
            ]
            best = left.pop(int(np.argmax(scores)))
            picked.append(best)
            redundancy = np.maximum(redundancy, sims[best])
        return [order[i] for i in picked]


def snippet(text: str, query: str, size: int = SNIPPET_CHARS) -> str:
    """Up to ``size`` characters of ``text`` around the first query word it contains.

    Cut at spaces, so no word is split; marked with "…" where text was left out.
    """
    if len(text) <= size:
        return text
    lowered = text.lower()
    positions = [p for w in _QUERY_WORD.findall(query.lower()) if (p := lowered.find(w)) >= 0]
    centre = min(positions) if positions else 0
    start = max(0, min(centre - size // 4, len(text) - size))
    end = start + size
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < centre else start
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    body = text[start:end].strip()
    return ("…" if start > 0 else "") + body + ("…" if end < len(text) else "")
