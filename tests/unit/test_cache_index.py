"""Index bookkeeping: rows reused after deletes, growth, filters, crowding, snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tollway.cache.index import IndexParams, IndexRecord, IndexSet, Interner, SemanticIndex
from tollway.cache.scope import Scope

DIM = 16


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def record(entry_id: int, vector: np.ndarray, **kw: object) -> IndexRecord:
    fields: dict[str, object] = dict(
        context=1, scope=Scope.GLOBAL, tenant_id="t", user_id="u", expires_ms=1_000, stale_until_ms=2_000
    )
    fields.update(kw)
    return IndexRecord(entry_id=entry_id, vector=vector, **fields)  # type: ignore[arg-type]


def search(index: SemanticIndex, vector: np.ndarray, **kw: object) -> list[int]:
    args: dict[str, object] = dict(
        context=1,
        lookup_scope=Scope.GLOBAL,
        tenant_id="t",
        user_id="u",
        now_ms=0,
        allow_stale=False,
        threshold=0.9,
    )
    args.update(kw)
    return [c.entry_id for c in index.search(vector, **args).candidates]  # type: ignore[arg-type]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1)


def small_index(**kw: object) -> SemanticIndex:
    return SemanticIndex(IndexParams(dim=DIM, initial_capacity=16, **kw), Interner())  # type: ignore[arg-type]


def test_add_is_idempotent_and_remove_frees_rows(rng: np.random.Generator) -> None:
    index = small_index()
    vs = unit(rng, 3)
    assert index.add([record(1, vs[0]), record(2, vs[1]), record(2, vs[1])]) == 2
    assert index.add([record(1, vs[0])]) == 0
    assert len(index) == 2 and 1 in index
    assert search(index, vs[0]) == [1]
    assert index.remove([1, 99]) == 1
    assert search(index, vs[0]) == []
    # The freed row is reused: the graph does not grow with churn.
    assert index.add([record(3, vs[2])]) == 1
    assert index._next_row == 2
    assert search(index, vs[2]) == [3]
    assert search(index, vs[1]) == [2]


def test_churn_keeps_capacity_bounded(rng: np.random.Generator) -> None:
    index = small_index()
    next_id = 1
    for _ in range(20):
        batch = [record(next_id + i, v) for i, v in enumerate(unit(rng, 10))]
        index.add(batch)
        index.remove([r.entry_id for r in batch])
        next_id += 10
    assert len(index) == 0
    assert index.capacity == 16


def test_grows_past_initial_capacity(rng: np.random.Generator) -> None:
    index = small_index()
    vs = unit(rng, 100)
    index.add([record(i + 1, v) for i, v in enumerate(vs[:10])])
    for i in range(10, 100):
        index.add([record(i + 1, vs[i])])
    assert len(index) == 100
    assert index.capacity >= 100
    for i in (0, 15, 16, 99):
        assert search(index, vs[i])[0] == i + 1


def test_filters_context_threshold_and_expiry(rng: np.random.Generator) -> None:
    index = small_index()
    v = unit(rng)[0]
    index.add(
        [
            record(1, v, context=1, expires_ms=100, stale_until_ms=200),
            record(2, v, context=2, expires_ms=100, stale_until_ms=200),
        ]
    )
    assert search(index, v, context=1) == [1]
    assert search(index, v, context=2) == [2]
    assert search(index, v, context=3) == []
    assert search(index, v, now_ms=150) == []  # expired
    assert search(index, v, now_ms=150, allow_stale=True) == [1]  # within grace
    assert search(index, v, now_ms=250, allow_stale=True) == []  # past grace
    other = unit(rng)[0]
    result = index.search(
        other,
        context=1,
        lookup_scope=Scope.GLOBAL,
        tenant_id="",
        user_id="",
        now_ms=0,
        allow_stale=False,
        threshold=0.99,
    )
    assert result.candidates == [] and result.best_similarity < 0.99


def test_fresh_candidates_come_before_stale_ones(rng: np.random.Generator) -> None:
    index = small_index()
    v = unit(rng)[0]
    near = v + 0.01 * unit(rng)[0]
    index.add([record(1, v, expires_ms=10, stale_until_ms=1_000), record(2, near, expires_ms=1_000)])
    assert search(index, v, now_ms=50, allow_stale=True, threshold=0.5) == [2, 1]


def test_search_widens_when_other_tenants_crowd_the_top(rng: np.random.Generator) -> None:
    index = small_index(k=4, max_k=256, ef_search=64)
    v = unit(rng)[0]
    crowd = [record(i, v + 0.001 * unit(rng)[0], scope=Scope.TENANT, tenant_id=f"other{i}") for i in range(1, 60)]
    mine = record(100, v + 0.02 * unit(rng)[0], scope=Scope.TENANT, tenant_id="me")
    index.add([*crowd, mine])
    result = index.search(
        v, context=1, lookup_scope=Scope.TENANT, tenant_id="me", user_id="", now_ms=0, allow_stale=False, threshold=0.9
    )
    assert [c.entry_id for c in result.candidates] == [100]
    assert result.searched_k > 4


def test_search_survives_more_deletions_than_k(rng: np.random.Generator) -> None:
    index = small_index(k=8)
    vs = unit(rng, 20)
    index.add([record(i + 1, v) for i, v in enumerate(vs)])
    index.remove(range(1, 19))
    assert len(index) == 2
    assert search(index, vs[19], threshold=0.99) == [20]


def test_snapshot_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    params = IndexParams(dim=DIM, initial_capacity=16)
    indexes = IndexSet(params)
    vs = unit(rng, 30)
    indexes.ensure("a").add(
        [record(i + 1, v, scope=Scope.USER, tenant_id="t", user_id=f"u{i}") for i, v in enumerate(vs)]
    )
    indexes.ensure("b").add([record(100, vs[0])])
    indexes.remove("a", [5, 6])
    indexes.save(tmp_path)

    loaded = IndexSet.load(tmp_path, params)
    assert loaded.namespaces() == ["a", "b"]
    assert loaded.count("a") == 28 and loaded.count("b") == 1
    a = loaded.get("a")
    assert a is not None
    assert search(a, vs[9], lookup_scope=Scope.USER, user_id="u9") == [10]
    assert search(a, vs[9], lookup_scope=Scope.USER, user_id="u8") == []
    assert search(a, vs[4], lookup_scope=Scope.USER, user_id="u4") == []  # deleted before the save
    # Freed rows survive the round trip and are reused.
    a.add([record(200, vs[4])])
    assert a._next_row == 30
