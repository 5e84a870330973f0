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
    term too (``"a b"``, joined by a space, which no word contains, so :func:`is_bigram` tells
    the two kinds apart): a query that repeats a phrase of a chunk then scores above one that
    only shares its words.
    """
    stop = _stopwords()
    stem = _stemmer().stemWords
    out = []
    for text in texts:
        words = stem([w for w in _SPLIT(text.lower()) if w not in stop])
        out.append([*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))] if bigrams else list(words))
    return out


def is_bigram(term: str) -> bool:
    """Whether a term of :func:`tokenize` is a word pair."""
    return " " in term


def _split(terms: Sequence[str]) -> tuple[list[str], list[str]]:
    words = [t for t in terms if not is_bigram(t)]
    pairs = [t for t in terms if is_bigram(t)]
    return words, pairs


class _Bm25:
    """One bm25s build over one kind of term."""

    def __init__(self, rows: Sequence[Sequence[str]], k1: float, b: float) -> None:
        self.row_count = len(rows)
        self.bm25: bm25s.BM25 | None = None
        self.vocab: dict[str, int] = {}
        self.df: np.ndarray = np.zeros(0, np.int64)
        if any(rows):
            bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            bm25.index([list(r) for r in rows], show_progress=False)
            self.bm25 = bm25
            self.vocab = dict(bm25.vocab_dict)
            self.df = np.diff(np.asarray(bm25.scores["indptr"]))

    def scores(self, tokens: Sequence[str]) -> np.ndarray | None:
        """Scores of every build row, or None when no token is known."""
        if self.bm25 is None:
            return None
        ids = [self.vocab[t] for t in tokens if t in self.vocab]
        if not ids:
            return None
        return np.asarray(self.bm25.get_scores_from_ids(ids), np.float32)

    def idf(self, token: str) -> float:
        i = self.vocab.get(token)
        if i is None or self.row_count == 0:
            return 0.0
        df = float(self.df[i])
        return float(np.log(1.0 + (self.row_count - df + 0.5) / (df + 0.5)))


class KeywordModel:
    """One immutable BM25 build over rows ``0..row_count-1``.

    Words and word pairs (bigrams) are two separate BM25 fields: each has its own document
    lengths and frequencies, and a pair's score is added to the words' score with a weight
    the search chooses. Mixed into one bag, pairs doubled every row's length and counted a
    phrase match twice at full weight; kept apart, BM25 over words alone is what it was, and
    a phrase match is a bonus on top (docs/benchmarks.md, issue 15, third pass).

    Args:
        rows: Every row's terms from :func:`tokenize` (an empty list for a free row); with
            ``row_group``, the terms of each *group* instead (a group is scored as one BM25
            document).
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
        split = [_split(r) for r in rows]
        self._words = _Bm25([w for w, _ in split], k1, b)
        self._pairs = _Bm25([p for _, p in split], k1, b)

    def scores(self, tokens: Sequence[str], size: int, bigram_weight: float = 1.0) -> np.ndarray:
        """BM25 scores of every row for the query ``tokens``, padded with 0 to ``size`` rows.

        A row's score is its words' BM25 plus ``bigram_weight`` times its word pairs' BM25.
        """
        out = np.zeros(size, np.float32)
        words, pairs = _split(tokens)
        got = self._words.scores(words)
        if bigram_weight > 0:
            paired = self._pairs.scores(pairs)
            if paired is not None:
                got = bigram_weight * paired if got is None else got + np.float32(bigram_weight) * paired
        if got is None:
            return out
        if self._row_group is not None:
            # Rows outside any group get the appended 0.
            got = np.append(got, np.float32(0.0))[self._row_group]
        n = min(size, len(got))
        out[:n] = got[:n]
        return out

    def idf(self, token: str) -> float:
        """Lucene's BM25 idf of ``token`` (a word or a word pair) in this build (0 when unknown)."""
        return (self._pairs if is_bigram(token) else self._words).idf(token)


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
