"""Sentence-window hierarchical chunking: windows as children, BM25 over parent sections."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tollway.retrieval.chunking import chunk_text
from tollway.retrieval.index import CollectionIndex, IndexParams
from tollway.retrieval.keyword import KeywordModel, tokenize
from tollway.retrieval.search import Searcher
from tollway.retrieval.types import Chunk, Chunking, Mode, SearchOptions, Strategy

DIM = 4


def unit(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def windows(
    text: str, size: int, max_tokens: int = 64, parent_max: int = 256
) -> tuple[list[str], list[int], list[str]]:
    chunks, parents = chunk_text(text, Chunking(Strategy.HIERARCHICAL, max_tokens, 0, parent_max, size))
    return [c.text for c in chunks], [c.parent for c in chunks], parents


def test_every_sentence_alone_and_with_its_followers() -> None:
    texts, parent, parents = windows("One fish. Two fish! Red fish? Blue fish.", 2)
    assert texts == [
        "One fish.", "One fish. Two fish!", "Two fish!", "Two fish! Red fish?", "Red fish?",
        "Red fish? Blue fish.", "Blue fish.",
    ]  # fmt: skip
    assert parent == [0] * 7 and parents == ["One fish. Two fish! Red fish? Blue fish."]
    texts, _, _ = windows("One fish. Two fish! Red fish? Blue fish.", 1)
    assert texts == ["One fish.", "Two fish!", "Red fish?", "Blue fish."]


def test_windows_stay_inside_their_parent_and_the_token_limit() -> None:
    para = " ".join(f"Sentence number {i} is here." for i in range(12))
    text = f"# A\n{para}\n\n# B\n{para}"
    texts, parent, parents = windows(text, 3, max_tokens=16, parent_max=80)
    assert len(parents) >= 2
    for t, p in zip(texts, parent, strict=True):
        assert t in parents[p]
    # Sentences of 6-7 tokens: two fit under 16 tokens, three never do.
    assert not [t for t in texts if t.count("Sentence") > 2]
    assert [t for t in texts if t.count("Sentence") == 2]


def test_a_sentence_over_the_limit_is_cut_between_words_and_code_is_whole() -> None:
    long = " ".join(["word"] * 40) + "."
    code = "```\nx = 1. Y = 2.\n```"
    texts, _, _ = windows(f"Short one. {long}\n\n{code}", 1, max_tokens=16)
    assert texts[0] == "Short one."
    assert all(t.split()[0] == "word" for t in texts[1:-1]) and len(texts) > 3
    assert texts[-1] == code


def test_window_zero_keeps_size_cut_children() -> None:
    text = "One fish. Two fish! Red fish? Blue fish."
    got = chunk_text(text, Chunking(Strategy.HIERARCHICAL, 64, 0, 256, 0))
    assert [c.text for c in got[0]] == [text]


def chunk(cid: str, doc: str, text: str, parent: str, vec: np.ndarray) -> Chunk:
    return Chunk(cid, doc, text, "", parent, {}, vec)


A = "Alpha is the first letter. Gamma comes third."
B = "Alpha, beta. Nothing else is here."
C = "Delta is a river mouth. Epsilon is small."


def sentence_index(keyword_on_parent: bool) -> CollectionIndex:
    idx = CollectionIndex(DIM, {}, IndexParams(initial_capacity=16, exact_below=0), keyword_on_parent=keyword_on_parent)
    chunks = []
    for doc, parent, vecs in (
        ("a", A, (unit(1, 0.5), unit(1, 0.6))),
        ("b", B, (unit(1, 0.5), unit(1, 0.6))),
        ("c", C, (unit(1, 0.5), unit(1, 0.6))),
    ):
        sentences = parent.split(". ")
        chunks += [chunk(f"{doc}:{i}", doc, s, parent, v) for i, (s, v) in enumerate(zip(sentences, vecs, strict=True))]
    idx.add(chunks)
    idx.rebuild_keyword_now()
    return idx


def test_keyword_scores_come_from_the_parent_section_once() -> None:
    idx = sentence_index(keyword_on_parent=True)
    query = tokenize(["alpha gamma"])[0]
    got = idx.keyword_scores(query)
    # The reference: a plain BM25 over the three sections, one row each.
    ref = KeywordModel(tokenize([A, B, C]), 1.2, 0.75).scores(query, 3)
    expected = np.repeat(ref, 2)
    assert np.allclose(got, expected)
    assert got[0] == got[1] > got[2] == got[3] > got[4] == got[5] == 0


def test_hybrid_ranks_a_section_whose_sentences_share_the_query_words() -> None:
    # Both words are in document a, but in different sentences; b has one of them.
    # Vectors are the same per position in every document, so the keyword side decides.
    opts = SearchOptions(
        "alpha gamma", top_k=3, mode=Mode.HYBRID, keyword_weight=0.5, query_vector=unit(1, 0.5),
        group_by_document=True,
    )  # fmt: skip
    parent_level = Searcher().search(sentence_index(keyword_on_parent=True), opts)
    assert [h.chunk.document_id for h in parent_level.hits] == ["a", "b", "c"]
    assert parent_level.hits[0].chunk.parent_text == A
    assert parent_level.hits[0].score > parent_level.hits[1].score
    # Scored per sentence, each holds at most one query word, and b's is the shorter: b wins.
    row_level = Searcher().search(sentence_index(keyword_on_parent=False), opts)
    assert [h.chunk.document_id for h in row_level.hits][:2] == ["b", "a"]


def test_the_vector_score_is_the_best_window_of_a_document() -> None:
    idx = CollectionIndex(DIM, {}, IndexParams(initial_capacity=16, exact_below=0), keyword_on_parent=True)
    idx.add([
        chunk("x:0", "x", "Off topic.", "Off topic. Right on.", unit(0, 1)),
        chunk("x:1", "x", "Right on.", "Off topic. Right on.", unit(1, 0)),
        chunk("y:0", "y", "Near it.", "Near it.", unit(1, 0.4)),
    ])  # fmt: skip
    idx.rebuild_keyword_now()
    out = Searcher().search(idx, SearchOptions("q", top_k=2, mode=Mode.VECTOR, query_vector=unit(1, 0),
                                               group_by_document=True))  # fmt: skip
    assert [h.chunk.chunk_id for h in out.hits] == ["x:1", "y:0"]


def test_removal_and_snapshot_keep_parent_scoring(tmp_path: Path) -> None:
    idx = sentence_index(keyword_on_parent=True)
    query = tokenize(["alpha"])[0]
    idx.remove_document("a")
    idx.rebuild_keyword_now()
    got = idx.keyword_scores(query)
    assert got[0] == got[1] == 0 and got[2] == got[3] > 0
    ref = KeywordModel(tokenize([B, C]), 1.2, 0.75).scores(query, 2)
    assert np.isclose(got[2], ref[0])  # a's section no longer counts in the statistics
    idx.save(tmp_path)
    loaded = CollectionIndex.load(tmp_path, DIM, {}, idx.params, keyword_on_parent=True)
    assert np.allclose(loaded.keyword_scores(query), got)
