"""BM25 with words and word pairs as two fields (keyword.KeywordModel) and the search's bigram weight."""

from __future__ import annotations

import itertools

import bm25s
import numpy as np
import pytest

from tollway.retrieval.index import CollectionIndex, IndexParams
from tollway.retrieval.keyword import KeywordModel, expansion_terms, is_bigram, tokenize
from tollway.retrieval.search import Searcher
from tollway.retrieval.types import Chunk, Mode, SearchOptions

TEXTS = [
    "the central bank raised interest rates again",
    "a river bank in the central valley floods every spring, and the bank erodes",
    "interest in central heating rose as rates of heating oil fell",
    "snake_case names keep their underscore",
    "",
]


def _reference(rows: list[list[str]], query: list[str]) -> np.ndarray:
    """Scores of a plain bm25s build over exactly these rows (what one field should give)."""
    model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    model.index(rows, show_progress=False)
    vocab = model.vocab_dict
    ids = [vocab[t] for t in query if t in vocab]
    return np.asarray(model.get_scores_from_ids(ids), np.float32) if ids else np.zeros(len(rows), np.float32)


def test_pairs_are_spelled_apart_from_words() -> None:
    (terms,) = tokenize(["Central banks raised snake_case rates"], bigrams=True)
    words = [t for t in terms if not is_bigram(t)]
    pairs = [t for t in terms if is_bigram(t)]
    assert words == tokenize(["Central banks raised snake_case rates"])[0]
    assert "snake_cas" in words  # an underscore is part of a word (stemmed here), not a pair
    assert pairs == [f"{a} {b}" for a, b in itertools.pairwise(words)]


def test_words_score_as_if_there_were_no_pairs() -> None:
    rows = tokenize(TEXTS, bigrams=True)
    query = tokenize(["central bank rates"], bigrams=True)[0]
    with_pairs = KeywordModel(rows, 1.2, 0.75).scores(query, len(TEXTS), bigram_weight=0.0)
    words_only = KeywordModel(tokenize(TEXTS), 1.2, 0.75).scores(tokenize(["central bank rates"])[0], len(TEXTS))
    # The pairs do not lengthen the rows or change the words' frequencies.
    assert np.allclose(with_pairs, words_only)
    assert np.allclose(words_only, _reference(tokenize(TEXTS), tokenize(["central bank rates"])[0]))


@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_pairs_add_their_own_bm25_times_the_weight(weight: float) -> None:
    rows = tokenize(TEXTS, bigrams=True)
    query = tokenize(["central bank rates"], bigrams=True)[0]
    got = KeywordModel(rows, 1.2, 0.75).scores(query, len(TEXTS) + 2, bigram_weight=weight)
    words = _reference([[t for t in r if not is_bigram(t)] for r in rows], [t for t in query if not is_bigram(t)])
    pairs = _reference([[t for t in r if is_bigram(t)] for r in rows], [t for t in query if is_bigram(t)])
    assert pairs[0] > 0 and pairs[1] == 0  # only the first text has "central bank" as a phrase
    assert np.allclose(got[: len(TEXTS)], words + weight * pairs, atol=1e-6)
    assert got[len(TEXTS) :].tolist() == [0.0, 0.0]  # padded rows


def test_a_query_of_pairs_only_or_unknown_terms() -> None:
    model = KeywordModel(tokenize(TEXTS, bigrams=True), 1.2, 0.75)
    assert model.scores(["central bank"], 5, bigram_weight=0.5)[0] > 0
    assert not model.scores(["central bank"], 5, bigram_weight=0.0).any()
    assert not model.scores(["zzz", "zzz yyy"], 5).any()
    assert not KeywordModel([], 1.2, 0.75).scores(["central"], 3).any()


def test_idf_of_words_and_pairs_comes_from_their_own_field() -> None:
    model = KeywordModel(tokenize(TEXTS, bigrams=True), 1.2, 0.75)
    # "central" is in three of five rows, the pair "central bank" in one: the rarer term weighs more.
    assert model.idf("central bank") > model.idf("central") > 0
    assert model.idf("absent") == 0.0
    feedback = tokenize([TEXTS[0]], bigrams=True)
    terms = expansion_terms(model, feedback, tokenize(["central"], bigrams=True)[0], 20)
    assert "central bank" in terms and "central" not in terms


def _index(bigrams: bool = True) -> CollectionIndex:
    def chunk(cid: str, text: str) -> Chunk:
        return Chunk(cid, cid.split(":")[0], text, "", "", {}, np.eye(4, dtype=np.float32)[0])

    idx = CollectionIndex(4, {}, IndexParams(initial_capacity=16, bigrams=bigrams))
    idx.add(
        [
            chunk("apart:1", "the bank of the river is far from the central square"),
            chunk("phrase:1", "the central bank raised rates by the river"),
            chunk("other:1", "nothing in common here at all"),
        ]
    )
    idx.rebuild_keyword_now()
    return idx


def test_the_search_option_sets_how_much_a_phrase_match_counts() -> None:
    idx = _index()
    scores = {}
    for weight in (0.0, 0.25, 1.0):
        out = Searcher().search(idx, SearchOptions("central bank", top_k=3, mode=Mode.KEYWORD, bigram_weight=weight))
        scores[weight] = {h.chunk.chunk_id: h.keyword_score for h in out.hits}
    assert "other:1" not in scores[0.0]
    # The words alone score both chunks about the same; the phrase adds to one only, in proportion.
    assert scores[0.0]["phrase:1"] == pytest.approx(scores[0.0]["apart:1"], rel=0.2)
    bonus = {w: s["phrase:1"] - scores[0.0]["phrase:1"] for w, s in scores.items()}
    assert bonus[1.0] > 0 and bonus[0.25] == pytest.approx(bonus[1.0] / 4, rel=1e-4)
    assert all(s["apart:1"] == pytest.approx(scores[0.0]["apart:1"]) for s in scores.values())


def test_without_indexed_pairs_the_weight_changes_nothing() -> None:
    idx = _index(bigrams=False)
    got = [idx.keyword_scores(tokenize(["central bank"], bigrams=False)[0], weight).tolist() for weight in (0.0, 1.0)]
    assert got[0] == got[1] and max(got[0]) > 0


def test_the_default_weight_comes_from_config_and_is_checked() -> None:
    from tollway.mesh.config import load_config
    from tollway.retrieval.config import RetrievalConfig

    cfg = load_config(RetrievalConfig, "retrieval", env={"TOLLWAY_RETRIEVAL_BM25_BIGRAM_WEIGHT": "0.5"})
    assert cfg.bm25_bigram_weight == 0.5
    assert RetrievalConfig().bm25_bigram_weight == SearchOptions("q").bigram_weight == 0.25
    with pytest.raises(ValueError, match=r"TOLLWAY_RETRIEVAL_BM25_BIGRAM_WEIGHT' has value 1\.5"):
        load_config(RetrievalConfig, "retrieval", env={"TOLLWAY_RETRIEVAL_BM25_BIGRAM_WEIGHT": "1.5"})
