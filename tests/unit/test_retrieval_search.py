"""The collection index and searches over it, with hand-made vectors (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tollway.retrieval.index import CollectionIndex, IndexParams
from tollway.retrieval.search import Searcher, snippet
from tollway.retrieval.types import Chunk, FieldType, Filter, FusionMethod, Mode, Op, SearchOptions

DIM = 8
FIELDS = {"lang": FieldType.STRING}


def unit(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def chunk(cid: str, doc: str, text: str, vec: np.ndarray, lang: str = "en") -> Chunk:
    return Chunk(cid, doc, text, "", "", {"lang": lang}, vec)


@pytest.fixture
def index() -> CollectionIndex:
    idx = CollectionIndex(DIM, FIELDS, IndexParams(initial_capacity=16, exact_below=0))
    idx.add(
        [
            chunk("a:1", "a", "cats purr and sleep all day", unit(1, 0.1)),
            chunk("a:2", "a", "kittens are young cats", unit(0.9, 0.2)),
            chunk("b:1", "b", "the stock market fell on monday", unit(0, 1)),
            chunk("c:1", "c", "dogs bark at the postman", unit(0.3, 0, 1), lang="de"),
            chunk("d:1", "d", "zebra crossing rules for drivers", unit(0, 0, 0, 1)),
        ]
    )
    idx.rebuild_keyword_now()
    return idx


def ids(outcome) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.chunk.chunk_id for h in outcome.hits]


def test_vector_keyword_and_hybrid(index: CollectionIndex) -> None:
    s = Searcher()
    vec = ids(s.search(index, SearchOptions("q", top_k=2, mode=Mode.VECTOR, query_vector=unit(1, 0))))
    assert vec == ["a:1", "a:2"]
    kw = s.search(index, SearchOptions("stock markets", top_k=3, mode=Mode.KEYWORD))
    assert ids(kw) == ["b:1"]  # stemmed: "markets" finds "market"; nothing else matches
    assert kw.hits[0].keyword_score > 0 and kw.hits[0].vector_score == -1
    # The words point at the zebra chunk, the vector at the dog chunk: fusion weights decide.
    for weight, first in ((0.9, "d:1"), (0.1, "c:1")):
        hy = s.search(
            index,
            SearchOptions(
                "zebra drivers", top_k=5, mode=Mode.HYBRID, keyword_weight=weight, query_vector=unit(0.3, 0, 1)
            ),
        )
        assert ids(hy)[0] == first
    rrf = s.search(
        index,
        SearchOptions("zebra", top_k=5, fusion=FusionMethod.RRF, keyword_weight=0.5, query_vector=unit(0, 0, 0, 1)),
    )
    assert ids(rrf)[0] == "d:1"


def test_filters_group_by_document_and_candidate_count(index: CollectionIndex) -> None:
    s = Searcher()
    out = s.search(
        index, SearchOptions("cats", top_k=5, filters=[Filter("lang", Op.EQ, "de")], query_vector=unit(1, 0))
    )
    assert ids(out) == ["c:1"] and out.candidate_count == 1
    grouped = s.search(index, SearchOptions("cats", top_k=3, group_by_document=True, query_vector=unit(1, 0)))
    docs = [h.chunk.document_id for h in grouped.hits]
    assert docs[0] == "a" and len(docs) == len(set(docs))


def test_mmr_prefers_a_different_document_over_a_near_duplicate(index: CollectionIndex) -> None:
    s = Searcher()
    plain = ids(s.search(index, SearchOptions("cats", top_k=2, mode=Mode.VECTOR, query_vector=unit(1, 0.05))))
    diverse = ids(
        s.search(
            index,
            SearchOptions("cats", top_k=2, mode=Mode.VECTOR, mmr=True, mmr_lambda=0.3, query_vector=unit(1, 0.05)),
        )
    )
    assert plain == ["a:1", "a:2"]
    assert diverse[0] == "a:1" and diverse[1] != "a:2"


def test_removed_rows_vanish_at_once_and_are_reused_only_after_a_keyword_build(index: CollectionIndex) -> None:
    s = Searcher()
    assert index.remove_document("b") == 1
    assert "b:1" not in ids(s.search(index, SearchOptions("stock market", top_k=5, mode=Mode.KEYWORD)))
    index.add([chunk("e:1", "e", "volcanoes erupt lava", unit(0, 0, 0, 0, 1))])
    # The freed row is not reused before a keyword build saw it empty.
    assert index.row_of["e:1"] == 5
    index.rebuild_keyword_now()
    index.add([chunk("f:1", "f", "glaciers melt slowly", unit(0, 0, 0, 0, 0, 1))])
    assert index.row_of["f:1"] == 2
    index.rebuild_keyword_now()
    assert ids(s.search(index, SearchOptions("glacier", top_k=5, mode=Mode.KEYWORD))) == ["f:1"]
    assert ids(s.search(index, SearchOptions("stock", top_k=5, mode=Mode.KEYWORD))) == []


def test_adding_a_present_chunk_is_a_no_op(index: CollectionIndex) -> None:
    before = len(index)
    assert index.add([chunk("a:1", "a", "other text", unit(0, 1))]) == 0
    assert len(index) == before


def test_hnsw_matches_exact_search_and_widens_past_filters() -> None:
    rng = np.random.default_rng(7)
    idx = CollectionIndex(DIM, FIELDS, IndexParams(initial_capacity=16, exact_below=0))
    vectors = rng.normal(size=(600, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx.add([chunk(f"x{i}", f"d{i}", "t", v, lang="en" if i % 10 else "de") for i, v in enumerate(vectors)])
    q = vectors[0]
    allowed = idx.allowed([])
    assert list(idx.vector_top(q, 10, allowed)) == list(idx.vector_top(q, 10, allowed, exact=True))
    de = idx.allowed([Filter("lang", Op.EQ, "de")])
    got = idx.vector_top(q, 10, de)
    assert len(got) == 10 and all(idx.chunks[r].metadata["lang"] == "de" for r in got)  # type: ignore[union-attr]


def test_snapshot_round_trip(index: CollectionIndex, tmp_path: Path) -> None:
    index.remove(["c:1"])
    index.save(tmp_path)
    loaded = CollectionIndex.load(tmp_path, DIM, FIELDS, IndexParams(initial_capacity=16, exact_below=0))
    assert sorted(loaded.row_of) == sorted(index.row_of)
    s = Searcher()
    opts = SearchOptions("cats purr", top_k=5, query_vector=unit(1, 0.1))
    assert ids(s.search(loaded, opts)) == ids(s.search(index, opts))


def test_feedback_round_moves_the_query_towards_what_it_found(index: CollectionIndex) -> None:
    s = Searcher()
    # Alone, the keyword "kittens" finds only a:2; feedback adds the vocabulary of a:2 ("cats").
    plain = ids(s.search(index, SearchOptions("kittens", top_k=5, mode=Mode.KEYWORD)))
    fed = ids(s.search(index, SearchOptions("kittens", top_k=5, mode=Mode.KEYWORD, feedback_count=1)))
    assert plain == ["a:2"]
    assert fed[:2] == ["a:2", "a:1"]


def test_snippet_centres_on_the_query_and_keeps_words_whole() -> None:
    text = (
        " ".join(f"filler{i}" for i in range(100)) + " the answer is here " + " ".join(f"tail{i}" for i in range(100))
    )
    cut = snippet(text, "where is the answer", size=120)
    assert "answer" in cut and cut.startswith("…") and cut.endswith("…")
    assert all(w in text.split() for w in cut.strip("…").split())
    assert snippet("short text", "x") == "short text"


def test_bigrams_rank_a_phrase_match_above_the_same_words_apart() -> None:
    chunks = [
        chunk("apart:1", "apart", "the bank of the river is far from the central square", unit(1)),
        chunk("phrase:1", "phrase", "the central bank raised rates by the river", unit(1)),
    ]
    for bigrams, first in ((True, "phrase:1"), (False, None)):
        idx = CollectionIndex(DIM, FIELDS, IndexParams(initial_capacity=16, bigrams=bigrams))
        idx.add(chunks)
        idx.rebuild_keyword_now()
        out = Searcher().search(idx, SearchOptions("central bank", top_k=2, mode=Mode.KEYWORD))
        scores = {h.chunk.chunk_id: h.keyword_score for h in out.hits}
        if first:
            assert ids(out)[0] == first and scores["phrase:1"] > scores["apart:1"]
        else:
            assert scores["phrase:1"] == pytest.approx(scores["apart:1"], rel=0.2)  # same words, similar lengths


def test_tokenize_gives_the_terms_bm25s_gives() -> None:
    import bm25s
    import Stemmer

    from tollway.retrieval.keyword import tokenize

    texts = [
        "The Running dogs weren't QUICKLY jumping over 3 fences in 2024!",
        "Élan vital — naïve café résumé; e-mail addresses: a.b@example.com",
        "",
        "x y z a an the of",
    ]
    reference = bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False
    )
    assert tokenize(texts) == [list(r) for r in reference]
