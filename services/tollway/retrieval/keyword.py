"""BM25 over stemmed English words, with bm25s and PyStemmer.

bm25s builds an immutable sparse index over a whole corpus, which is what makes its
queries fast (a query sums a handful of precomputed columns). A collection changes, so
:class:`KeywordIndex` keeps every row's tokens and rebuilds the bm25s index when rows
changed, off the event loop; searches keep using the previous build meanwhile. Rows
added since the last build have no keyword score until the next one (they are still
found by the vector index); removed rows are masked out at once by the caller.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Sequence

import bm25s
import bm25s.stopwords
import numpy as np
import Stemmer

_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


@functools.cache
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


@functools.cache
def _stopwords() -> frozenset[str]:
    return frozenset(bm25s.stopwords.STOPWORDS_EN)


_SPLIT = re.compile(_TOKEN_PATTERN).findall


def tokenize(texts: Sequence[str], *, bigrams: bool = False) -> list[list[str]]:
    """Lower-cased, stop-word-free, Snowball-stemmed words of each text.

    The same terms as ``bm25s.tokenize(texts, stopwords="en", stemmer=...)`` (a unit test
    compares them), without its per-call progress-bar and vocabulary set-up, which cost more
    than the tokenizing itself for a one-line query.

    With ``bigrams``, each pair of neighbouring words (after stop words are dropped) is a
    term too (``a_b``): a query that repeats a phrase of a chunk then scores above one that
    only shares its words.
    """
    stop = _stopwords()
    stem = _stemmer().stemWords
    out = []
    for text in texts:
        words = stem([w for w in _SPLIT(text.lower()) if w not in stop])
        out.append([*words, *(f"{a}_{b}" for a, b in itertools.pairwise(words))] if bigrams else list(words))
    return out


class KeywordModel:
    """One immutable bm25s build over rows ``0..row_count-1``.

    Args:
        rows: Every row's tokens (an empty list for a free row); with ``row_group``, the
            tokens of each *group* instead (a group is scored as one BM25 document).
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        row_group: The group of each index row (-1 for none): :meth:`scores` then gives
            every row its group's score. Sentence-window chunks use it so that BM25 sees
            each parent section once, with the section's own length and document frequencies,
            rather than once per window that points into it.
    """

    def __init__(self, rows: Sequence[Sequence[str]], k1: float, b: float, row_group: np.ndarray | None = None) -> None:
        self.row_count = len(rows)
        self._row_group = row_group
        self._bm25: bm25s.BM25 | None = None
        self._vocab: dict[str, int] = {}
        self._df: np.ndarray = np.zeros(0, np.int64)
        if any(rows):
            bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            bm25.index([list(r) for r in rows], show_progress=False)
            self._bm25 = bm25
            self._vocab = dict(bm25.vocab_dict)
            indptr = np.asarray(bm25.scores["indptr"])
            self._df = np.diff(indptr)

    def scores(self, tokens: Sequence[str], size: int) -> np.ndarray:
        """BM25 scores of every row for the query ``tokens``, padded with 0 to ``size`` rows."""
        out = np.zeros(size, np.float32)
        if self._bm25 is None:
            return out
        ids = [self._vocab[t] for t in tokens if t in self._vocab]
        if not ids:
            return out
        got = np.asarray(self._bm25.get_scores_from_ids(ids), np.float32)
        if self._row_group is not None:
            # Rows outside any group get the appended 0.
            got = np.append(got, np.float32(0.0))[self._row_group]
        n = min(size, len(got))
        out[:n] = got[:n]
        return out

    def idf(self, token: str) -> float:
        """Lucene's BM25 idf of ``token`` in this build (0 when unknown)."""
        i = self._vocab.get(token)
        if i is None or self.row_count == 0:
            return 0.0
        df = float(self._df[i])
        return float(np.log(1.0 + (self.row_count - df + 0.5) / (df + 0.5)))


def expansion_terms(
    model: KeywordModel, feedback: Sequence[Sequence[str]], query: Sequence[str], count: int
) -> list[str]:
    """The ``count`` most telling terms of the feedback rows that are not in the query.

    A term's weight is its frequency across the feedback rows times its idf (RM3-like
    without probabilities): frequent in what the first round found, rare in the collection.
    """
    if count <= 0 or not feedback:
        return []
    tf: Counter[str] = Counter()
    for row in feedback:
        tf.update(row)
    seen = set(query)
    weighted = [(n * model.idf(t), t) for t, n in tf.items() if t not in seen and len(t) > 2]
    weighted.sort(reverse=True)
    return [t for w, t in weighted[:count] if w > 0]
