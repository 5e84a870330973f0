"""Ensemble search: a second embedding model's ranking fused with the main model's and BM25's
(hand-made vectors, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tollway.retrieval.index import CollectionIndex, IndexParams
from tollway.retrieval.search import Searcher, fuse
from tollway.retrieval.types import Chunk, FieldType, FusionMethod, Mode, SearchOptions

DIM, E5_DIM = 8, 4
E5 = "e5-small-q4"


def unit(dim: int, *xs: float) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def chunk(cid: str, text: str, main: np.ndarray, e5: np.ndarray) -> Chunk:
    return Chunk(cid, cid.split(":")[0], text, "", "", {}, main, {E5: e5})


# The main model ranks "a" first for the query, the ensemble model ranks "b" first.
QUERY_MAIN, QUERY_E5 = unit(DIM, 1, 0), unit(E5_DIM, 0, 1)


@pytest.fixture
def index() -> CollectionIndex:
    idx = CollectionIndex(
        DIM, {"lang": FieldType.STRING}, IndexParams(initial_capacity=4, exact_below=0), ensemble={E5: E5_DIM}
    )
    idx.add(
        [
            chunk("a:1", "cats purr and sleep", unit(DIM, 1, 0.1), unit(E5_DIM, 1, 0.2)),
            chunk("b:1", "kittens are young cats", unit(DIM, 0.6, 0.8), unit(E5_DIM, 0.1, 1)),
            chunk("c:1", "the stock market fell", unit(DIM, 0, 1), unit(E5_DIM, 0, 0, 1)),
            chunk("d:1", "zebra crossing rules", unit(DIM, 0, 0, 1), unit(E5_DIM, 0, 0, 0, 1)),
            chunk("e:1", "dogs bark at night", unit(DIM, 0.2, 0, 0, 1), unit(E5_DIM, 0.3, 0, 0, 1)),
        ]
    )
    idx.rebuild_keyword_now()
    return idx


def first(index: CollectionIndex, **kw: object) -> str:
    opts = SearchOptions("cats", top_k=3, query_vector=QUERY_MAIN, ensemble_vectors={E5: QUERY_E5}, **kw)  # type: ignore[arg-type]
    return Searcher().search(index, opts).hits[0].chunk.chunk_id


def test_weighted_fusion_of_two_dense_rankings_and_bm25() -> None:
    main, e5, kw = np.array([0.9, 0.5, 0.1]), np.array([0.2, 0.8, 0.3]), np.array([0.0, 4.0, 1.0])

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / x.std()

    got = fuse([(0.3, main), (0.3, e5), (0.4, kw)], FusionMethod.WEIGHTED, 60)
    np.testing.assert_allclose(got, 0.3 * z(main) + 0.3 * z(e5) + 0.4 * z(kw))
    rrf = fuse([(0.5, main), (0.5, e5)], FusionMethod.RRF, 10)
    np.testing.assert_allclose(rrf, 0.5 / (10 + np.array([1, 2, 3])) + 0.5 / (10 + np.array([3, 1, 2])))
    # A ranking whose scores are all equal carries no information and moves nothing.
    np.testing.assert_allclose(fuse([(0.5, main), (0.5, np.ones(3))], FusionMethod.WEIGHTED, 60), 0.5 * z(main))


def test_the_ensemble_weight_decides_between_the_two_models(index: CollectionIndex) -> None:
    assert first(index, mode=Mode.VECTOR, ensemble_weight=0.0) == "a:1"
    assert first(index, mode=Mode.VECTOR, ensemble_weight=1.0) == "b:1"
    # Both models put a and b on top; BM25 ("cats") finds both too: hybrid keeps them first.
    top2 = Searcher().search(
        index, SearchOptions("cats", top_k=2, query_vector=QUERY_MAIN, ensemble_vectors={E5: QUERY_E5})
    )
    assert {h.chunk.chunk_id for h in top2.hits} == {"a:1", "b:1"}
    # The reported vector score is the main model's cosine.
    a = next(h for h in top2.hits if h.chunk.chunk_id == "a:1")
    assert a.vector_score == pytest.approx(float(unit(DIM, 1, 0.1) @ QUERY_MAIN), abs=1e-6)


def test_a_candidate_found_only_by_the_ensemble_model_is_scored_on_every_ranking(index: CollectionIndex) -> None:
    # Only "c" is near this e5 query; the main model's query points at "d".
    opts = SearchOptions(
        "q", top_k=5, mode=Mode.VECTOR, query_vector=unit(DIM, 0, 0, 1),
        ensemble_vectors={E5: unit(E5_DIM, 0, 0, 1)}, ensemble_weight=0.9,
    )  # fmt: skip
    hits = Searcher().search(index, opts).hits
    assert hits[0].chunk.chunk_id == "c:1"
    assert {h.chunk.chunk_id for h in hits} == {"a:1", "b:1", "c:1", "d:1", "e:1"}


def test_without_ensemble_query_vectors_the_main_model_ranks_alone(index: CollectionIndex) -> None:
    out = Searcher().search(
        index, SearchOptions("q", top_k=1, mode=Mode.VECTOR, query_vector=QUERY_MAIN, ensemble_weight=1.0)
    )
    assert out.hits[0].chunk.chunk_id == "a:1" and out.hits[0].score == pytest.approx(out.hits[0].vector_score)


def test_a_chunk_without_the_ensemble_vector_is_refused_and_nothing_changes(index: CollectionIndex) -> None:
    before = len(index)
    bad = Chunk("f:1", "f", "no e5 vector", "", "", {}, unit(DIM, 1))
    with pytest.raises(ValueError, match=E5):
        index.add([bad])
    wrong_dim = Chunk("g:1", "g", "short e5 vector", "", "", {}, unit(DIM, 1), {E5: unit(2, 1)})
    with pytest.raises(ValueError, match="dimension"):
        index.add([wrong_dim])
    assert len(index) == before and "f:1" not in index and "g:1" not in index


def test_removed_chunks_leave_every_vector_space(index: CollectionIndex) -> None:
    index.remove(["b:1"])
    assert first(index, mode=Mode.VECTOR, ensemble_weight=1.0) != "b:1"
    # Its row is reused by a later chunk, in both spaces.
    index.rebuild_keyword_now()
    index.add([chunk("z:1", "zz", unit(DIM, 0, 0, 0, 0, 1), unit(E5_DIM, 0, 1))])
    assert first(index, mode=Mode.VECTOR, ensemble_weight=1.0) == "z:1"


def test_growing_past_the_capacity_keeps_the_ensemble_vectors(index: CollectionIndex) -> None:
    extra = [
        chunk(f"x{i}:1", f"filler {i}", unit(DIM, 0, 0, 0, 0, 0, 1, i), unit(E5_DIM, 0, 0, 1, i)) for i in range(40)
    ]
    index.add(extra)
    assert index.capacity >= 45
    assert first(index, mode=Mode.VECTOR, ensemble_weight=1.0) == "b:1"
    row = index.row_of["x7:1"]
    np.testing.assert_array_equal(index.vectors_of(E5)[row], extra[7].ensemble_vectors[E5])


def test_snapshot_round_trip_keeps_the_ensemble_index(index: CollectionIndex, tmp_path: Path) -> None:
    index.remove(["c:1"])
    index.save(tmp_path)
    loaded = CollectionIndex.load(tmp_path, DIM, {"lang": FieldType.STRING}, index.params, ensemble={E5: E5_DIM})
    assert len(loaded) == len(index)
    for kw in ({"ensemble_weight": 0.0}, {"ensemble_weight": 1.0}):
        assert first(loaded, mode=Mode.VECTOR, **kw) == first(index, mode=Mode.VECTOR, **kw)
    assert set(loaded.chunks[loaded.row_of["b:1"]].ensemble_vectors) == {E5}
    # A snapshot written without the ensemble cannot be loaded as one that has it.
    plain = CollectionIndex(DIM, {}, IndexParams(initial_capacity=4))
    plain.add([Chunk("p:1", "p", "plain", "", "", {}, unit(DIM, 1))])
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain.save(plain_dir)
    with pytest.raises(OSError):
        CollectionIndex.load(plain_dir, DIM, {}, plain.params, ensemble={E5: E5_DIM})
