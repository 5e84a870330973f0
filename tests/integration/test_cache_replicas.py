"""Several cache replicas on one Redis: they see each other's stores and deletes, and each
rebuilds its index at start (from Redis, or from its snapshot plus the stream's tail)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.cache import RunningCache, running_cache
from tests.support.polling import eventually
from tests.support.redis_server import local_redis
from tollway.cache.cache import accept_all
from tollway.cache.v1 import cache_pb2
from tollway.common.v1 import common_pb2

DIM = 384


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray) -> np.ndarray:
    w = v + 0.05 * unit(12345)
    return w / np.linalg.norm(w)


def _fp(text: str) -> cache_pb2.RequestFingerprint:
    return cache_pb2.RequestFingerprint(
        model="m", messages=[common_pb2.Message(role="user", content=text)], temperature=0.0
    )


def lookup(text: str, v: np.ndarray) -> cache_pb2.LookupRequest:
    return cache_pb2.LookupRequest(tenant_id="t", fingerprint=_fp(text), embedding=v.tolist(), embedding_model="e")


def store(text: str, v: np.ndarray, answer: str = "answer", docs: tuple[str, ...] = ()) -> cache_pb2.StoreRequest:
    return cache_pb2.StoreRequest(
        tenant_id="t",
        fingerprint=_fp(text),
        embedding=v.tolist(),
        embedding_model="e",
        text=answer,
        document_ids=list(docs),
    )


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


@pytest.fixture
def replica(redis_url: str, tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[RunningCache]]:
    """Starts replicas sharing one key prefix (one logical cache), each with its own settings."""
    prefix = f"rep:{uuid.uuid4().hex[:8]}"
    namespaces = tmp_path / "namespaces.yaml"
    namespaces.write_text("namespaces:\n  default: {threshold: 0.9, scope: tenant}\n")

    @contextlib.asynccontextmanager
    async def start(**kw: Any) -> AsyncIterator[RunningCache]:
        settings: dict[str, Any] = {
            "key_prefix": prefix,
            "namespaces_path": str(namespaces),
            "snapshot_interval_s": 0,
            "follow_block_ms": 50,
            "index_initial_capacity": 64,
        }
        settings.update(kw)
        async with running_cache(redis_url, verifier=accept_all, **settings) as svc:
            yield svc

    return start


async def tier(svc: RunningCache, req: cache_pb2.LookupRequest) -> int:
    return (await svc.stub.Lookup(req)).tier


async def test_replicas_see_each_others_stores_and_deletes(replica: Callable[..., Any]) -> None:
    async with replica() as a, replica() as b:
        v = unit(1)
        stored = await a.stub.Store(store("refund policy", v, docs=("policy-doc",)))
        # Tier 1 reads Redis directly: consistent at once.
        assert await tier(b, lookup("refund policy", v)) == common_pb2.CACHE_TIER_EXACT
        # Tier 2 needs B's index to hear A's add through the stream.
        await eventually(lambda: b.cache.sync.indexes.count("default") == 1)
        hit = await b.stub.Lookup(lookup("what's the refund policy", near(v)))
        assert hit.tier == common_pb2.CACHE_TIER_SEMANTIC and hit.answer.entry_id == stored.entry_id

        # A store on B replaces A's entry for the same request; A drops the old one.
        replaced = await b.stub.Store(store("refund policy", v, answer="30 days"))
        index_a = a.cache.sync.indexes.get("default")
        assert index_a is not None
        # The add and the removal are two events of the stream: wait for both.
        await eventually(
            lambda: int(replaced.entry_id) in index_a and int(stored.entry_id) not in index_a and len(index_a) == 1
        )

        removed = await b.stub.Invalidate(cache_pb2.InvalidateRequest(document_ids=["policy-doc"]))
        assert removed.removed_count == 0  # the replacing store carried no document ids
        removed = await b.stub.Invalidate(cache_pb2.InvalidateRequest(all=True))
        assert removed.removed_count == 1
        await eventually(lambda: a.cache.sync.indexes.count("default") == 0)
        assert await tier(a, lookup("what's the refund policy", near(v))) == common_pb2.CACHE_TIER_MISS
        assert await tier(a, lookup("refund policy", v)) == common_pb2.CACHE_TIER_MISS


async def test_an_index_that_missed_a_delete_never_serves_the_entry(replica: Callable[..., Any]) -> None:
    async with replica() as a:
        v = unit(2)
        stored = await a.stub.Store(store("shipping time", v))
        assert a.cache.sync.indexes.count("default") == 1
        # The entry vanishes from Redis without a delete event (as if the event were lost):
        # the index still proposes it, and the lookup must not serve it.
        await a.cache.store.redis.delete(f"{a.cache.store.prefix}:e:{stored.entry_id}")
        resp = await a.stub.Lookup(lookup("how long is shipping", near(v)))
        assert (resp.tier, resp.miss_reason) == (common_pb2.CACHE_TIER_MISS, cache_pb2.MISS_REASON_NOT_FOUND)
        assert a.cache.sync.indexes.count("default") == 0  # dropped when Redis said it was gone


async def test_a_new_replica_rebuilds_its_index_from_redis(replica: Callable[..., Any]) -> None:
    vectors = [unit(100 + i) for i in range(150)]  # more than the initial capacity: the index grows
    async with replica() as a:
        for i, v in enumerate(vectors):
            await a.stub.Store(store(f"question {i}", v, answer=f"answer {i}"))
    async with replica() as fresh:
        assert fresh.cache.sync.report is not None and fresh.cache.sync.report.source == "redis"
        assert fresh.cache.sync.indexes.count("default") == 150
        for i in (0, 77, 149):
            resp = await fresh.stub.Lookup(lookup(f"reworded question {i}", near(vectors[i])))
            assert resp.tier == common_pb2.CACHE_TIER_SEMANTIC and resp.answer.text == f"answer {i}"


async def test_restart_from_snapshot_plus_stream_tail(replica: Callable[..., Any], tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    async with replica(snapshot_dir=str(snapshots)) as a:
        for i in range(20):
            await a.stub.Store(store(f"q{i}", unit(200 + i), docs=(f"d{i}",)))
    assert (snapshots / "CURRENT").exists()  # written at stop

    async with replica() as other:
        # While A is down: 5 more entries, and 3 old ones deleted.
        for i in range(20, 25):
            await other.stub.Store(store(f"q{i}", unit(200 + i)))
        removed = await other.stub.Invalidate(cache_pb2.InvalidateRequest(document_ids=["d0", "d1", "d2"]))
        assert removed.removed_count == 3

    async with replica(snapshot_dir=str(snapshots)) as again:
        report = again.cache.sync.report
        assert report is not None and (report.source, report.tail_events) == ("snapshot", 8)
        assert again.cache.sync.indexes.count("default") == 22
        assert await tier(again, lookup("reworded q24", near(unit(224)))) == common_pb2.CACHE_TIER_SEMANTIC
        assert await tier(again, lookup("reworded q1", near(unit(201)))) == common_pb2.CACHE_TIER_MISS
        assert await tier(again, lookup("reworded q10", near(unit(210)))) == common_pb2.CACHE_TIER_SEMANTIC


async def test_snapshot_is_ignored_when_the_stream_was_trimmed_past_it(
    replica: Callable[..., Any], tmp_path: Path
) -> None:
    snapshots = tmp_path / "snapshots"
    async with replica(snapshot_dir=str(snapshots), events_maxlen=10) as a:
        await a.stub.Store(store("first", unit(300)))
    async with replica(events_maxlen=10) as other:
        for i in range(400):  # far past maxlen: the events after the snapshot are trimmed away
            await other.stub.Store(store(f"later {i}", unit(301 + i)))
    async with replica(snapshot_dir=str(snapshots), events_maxlen=10) as again:
        assert again.cache.sync.report is not None and again.cache.sync.report.source == "redis"
        assert again.cache.sync.indexes.count("default") == 401
        assert await tier(again, lookup("later 399 reworded", near(unit(700)))) == common_pb2.CACHE_TIER_SEMANTIC
