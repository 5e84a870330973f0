"""The cache service over real gRPC (port 0) and a real redis-server started for this module."""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from tests.support.cache import RunningCache, running_cache
from tests.support.redis_server import local_redis
from tollway.cache import purge
from tollway.cache.cache import Verdict, accept_all
from tollway.cache.v1 import cache_pb2
from tollway.common.v1 import common_pb2

DIM = 384
NAMESPACES = """
namespaces:
  default: {threshold: 0.9, scope: tenant, ttl_s: 60, stale_grace_s: 30, quality_sample_rate: 1.0}
  shared: {threshold: 0.9, scope: global}
  private: {threshold: 0.9, scope: user}
  exact: {threshold: 0.9, semantic: false}
  creative: {threshold: 0.9, allow_nondeterministic: true}
  small_lru: {threshold: 0.9, max_entries: 2, eviction: lru}
  small_oldest: {threshold: 0.9, max_entries: 2, eviction: oldest}
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, eps: float = 0.05, seed: int = 99) -> np.ndarray:
    w = v + eps * unit(seed)
    return w / np.linalg.norm(w)


def fingerprint(text: str, model: str = "m", **kw: Any) -> cache_pb2.RequestFingerprint:
    return cache_pb2.RequestFingerprint(
        model=model,
        messages=[common_pb2.Message(role="system", content="be brief"), common_pb2.Message(role="user", content=text)],
        temperature=kw.pop("temperature", 0.0),
        **kw,
    )


def lookup_req(
    text: str,
    vector: np.ndarray | None = None,
    *,
    namespace: str = "default",
    tenant: str = "t1",
    user: str = "u1",
    model: str = "m",
    embedding_model: str = "minilm",
    fp: dict[str, Any] | None = None,
    **kw: Any,
) -> cache_pb2.LookupRequest:
    return cache_pb2.LookupRequest(
        namespace=namespace,
        tenant_id=tenant,
        user_id=user,
        fingerprint=fingerprint(text, model, **(fp or {})),
        embedding=[] if vector is None else vector.tolist(),
        embedding_model=embedding_model if vector is not None else "",
        **kw,
    )


def store_req(text: str, answer: str, vector: np.ndarray | None = None, **kw: Any) -> cache_pb2.StoreRequest:
    doc_ids = kw.pop("document_ids", [])
    mode = kw.pop("mode", 0)
    req = lookup_req(text, vector, **kw)
    return cache_pb2.StoreRequest(
        namespace=req.namespace,
        tenant_id=req.tenant_id,
        user_id=req.user_id,
        scope=req.scope,
        fingerprint=req.fingerprint,
        embedding=req.embedding,
        embedding_model=req.embedding_model,
        mode=mode,
        text=answer,
        usage=common_pb2.Usage(input_tokens=12, output_tokens=3),
        model="m-large",
        provider="local",
        finish_reason=common_pb2.FINISH_REASON_STOP,
        document_ids=doc_ids,
    )


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


@pytest.fixture
def namespaces_file(tmp_path: Path) -> Path:
    path = tmp_path / "namespaces.yaml"
    path.write_text(NAMESPACES)
    return path


async def _serve(redis_url: str, namespaces_file: Path, **kw: Any) -> AsyncIterator[RunningCache]:
    clock = kw.pop("clock", Clock())
    async with running_cache(
        redis_url,
        clock=clock,
        verifier=kw.pop("verifier", accept_all),
        key_prefix=f"test:{uuid.uuid4().hex[:8]}",
        namespaces_path=str(namespaces_file),
        snapshot_interval_s=0,
        sweep_interval_s=3600,
        namespaces_poll_s=0.05,
        follow_block_ms=50,
        **kw,
    ) as svc:
        svc.clock = clock  # type: ignore[attr-defined]
        yield svc


@pytest.fixture
async def svc(redis_url: str, namespaces_file: Path) -> AsyncIterator[RunningCache]:
    async for s in _serve(redis_url, namespaces_file):
        yield s


async def stats(svc: RunningCache, namespace: str) -> cache_pb2.NamespaceStats:
    resp = await svc.stub.GetStats(cache_pb2.GetStatsRequest(namespace=namespace))
    return resp.namespaces[0]


# --- basics ----------------------------------------------------------------------------


async def test_health_is_serving(svc: RunningCache) -> None:
    stub = health_pb2_grpc.HealthStub(svc.channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service="tollway.cache.v1.CacheService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_exact_store_then_lookup(svc: RunningCache) -> None:
    miss = await svc.stub.Lookup(lookup_req("capital of France?"))
    assert (miss.tier, miss.miss_reason) == (common_pb2.CACHE_TIER_MISS, cache_pb2.MISS_REASON_NOT_FOUND)

    stored = await svc.stub.Store(store_req("capital of France?", "Paris.", document_ids=["doc-1"]))
    assert stored.stored and stored.entry_id and stored.cache_key == miss.cache_key

    hit = await svc.stub.Lookup(lookup_req("capital of France?"))
    assert hit.tier == common_pb2.CACHE_TIER_EXACT
    assert hit.similarity == 1.0 and hit.cache_key == stored.cache_key
    a = hit.answer
    assert (a.text, a.model, a.provider, a.entry_id) == ("Paris.", "m-large", "local", stored.entry_id)
    assert (a.usage.input_tokens, a.usage.output_tokens) == (12, 3)
    assert a.finish_reason == common_pb2.FINISH_REASON_STOP
    assert list(a.document_ids) == ["doc-1"]
    assert a.expire_time.ToMilliseconds() - a.create_time.ToMilliseconds() == 60_000

    other_params = await svc.stub.Lookup(lookup_req("capital of France?", fp={"max_tokens": 5}))
    assert other_params.tier == common_pb2.CACHE_TIER_MISS


async def test_semantic_hit_needs_same_context_and_threshold(svc: RunningCache) -> None:
    v = unit(1)
    await svc.stub.Store(store_req("what is the capital of France", "Paris.", v))

    hit = await svc.stub.Lookup(lookup_req("capital city of France?", near(v)))
    assert hit.tier == common_pb2.CACHE_TIER_SEMANTIC
    assert hit.answer.text == "Paris." and 0.9 <= hit.similarity < 1.0

    for req in (
        lookup_req("capital city of France?", near(v), model="other-model"),
        lookup_req("capital city of France?", near(v), embedding_model="other-embedder"),
        lookup_req("capital city of France?", near(v), fp={"prompt_version": "2"}),
    ):
        resp = await svc.stub.Lookup(req)
        assert (resp.tier, resp.miss_reason) == (common_pb2.CACHE_TIER_MISS, cache_pb2.MISS_REASON_NOT_FOUND)

    far = await svc.stub.Lookup(lookup_req("capital city of Peru?", unit(2)))
    assert (far.tier, far.miss_reason) == (common_pb2.CACHE_TIER_MISS, cache_pb2.MISS_REASON_BELOW_THRESHOLD)


async def test_semantic_only_skips_tier_one_and_counts_no_exact_miss(svc: RunningCache) -> None:
    v = unit(3)
    ns = "shared"
    await svc.stub.Store(store_req("how do I rotate my API key", "Settings > Keys.", v, namespace=ns))
    before = (await svc.stub.GetStats(cache_pb2.GetStatsRequest(namespace=ns))).namespaces[0].exact_miss_count
    # The same text with semantic_only: tier 1 would have hit; tier 2 answers instead.
    req = lookup_req("how do I rotate my API key", near(v), namespace=ns, semantic_only=True)
    assert (await svc.stub.Lookup(req)).tier == common_pb2.CACHE_TIER_SEMANTIC
    # One ordinary lookup that misses tier 1: the only exact miss the stats may show.
    await svc.stub.Lookup(lookup_req("how can I rotate an API key", near(v), namespace=ns))
    for _ in range(100):
        stats = (await svc.stub.GetStats(cache_pb2.GetStatsRequest(namespace=ns))).namespaces[0]
        if stats.exact_miss_count > before:
            break
        await asyncio.sleep(0.05)
    assert stats.exact_miss_count == before + 1


async def test_semantic_tier_off_in_an_exact_namespace(svc: RunningCache) -> None:
    v = unit(3)
    await svc.stub.Store(store_req("q one", "a", v, namespace="exact"))
    assert (await svc.stub.Lookup(lookup_req("q one", v, namespace="exact"))).tier == common_pb2.CACHE_TIER_EXACT
    resp = await svc.stub.Lookup(lookup_req("q two", v, namespace="exact"))
    assert resp.tier == common_pb2.CACHE_TIER_MISS


# --- scope isolation -------------------------------------------------------------------


async def test_tenant_scoped_entries_never_reach_another_tenant(svc: RunningCache) -> None:
    v = unit(4)
    await svc.stub.Store(store_req("my invoice total", "secret: $1,234", v, tenant="acme"))
    for req in (
        lookup_req("my invoice total", v, tenant="globex"),
        lookup_req("my invoice total?", near(v), tenant="globex"),
        lookup_req("my invoice total", v, tenant="globex", allow_stale=True),
    ):
        resp = await svc.stub.Lookup(req)
        assert resp.tier == common_pb2.CACHE_TIER_MISS
        assert resp.miss_reason == cache_pb2.MISS_REASON_NOT_FOUND  # not "below threshold": reveals nothing
        assert not resp.HasField("answer")
    same_tenant_other_user = await svc.stub.Lookup(lookup_req("my invoice total?", near(v), tenant="acme", user="u9"))
    assert same_tenant_other_user.tier == common_pb2.CACHE_TIER_SEMANTIC
    exact = await svc.stub.Lookup(lookup_req("my invoice total", tenant="acme", user="u9"))
    assert exact.tier == common_pb2.CACHE_TIER_EXACT


async def test_user_scoped_entries_never_reach_another_user(svc: RunningCache) -> None:
    v = unit(5)
    await svc.stub.Store(store_req("my salary", "you earn 100k", v, namespace="private", tenant="acme", user="alice"))
    for tenant, user in (("acme", "bob"), ("globex", "alice"), ("globex", "bob")):
        for req in (
            lookup_req("my salary", v, namespace="private", tenant=tenant, user=user),
            lookup_req("what is my salary", near(v), namespace="private", tenant=tenant, user=user),
        ):
            resp = await svc.stub.Lookup(req)
            assert resp.tier == common_pb2.CACHE_TIER_MISS, (tenant, user)
    own = await svc.stub.Lookup(
        lookup_req("what is my salary", near(v), namespace="private", tenant="acme", user="alice")
    )
    assert own.tier == common_pb2.CACHE_TIER_SEMANTIC

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.Lookup(lookup_req("my salary", v, namespace="private", tenant="acme", user=""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in err.value.details()


async def test_global_entries_are_shared_unless_the_request_tightens_the_scope(svc: RunningCache) -> None:
    v = unit(6)
    await svc.stub.Store(store_req("what is HTTP 404", "Not Found", v, namespace="shared", tenant="acme"))
    assert (await svc.stub.Lookup(lookup_req("what is HTTP 404", namespace="shared", tenant="globex"))).tier == (
        common_pb2.CACHE_TIER_EXACT
    )
    resp = await svc.stub.Lookup(lookup_req("HTTP 404 meaning", near(v), namespace="shared", tenant="", user=""))
    assert resp.tier == common_pb2.CACHE_TIER_SEMANTIC

    w = unit(7)
    await svc.stub.Store(
        store_req(
            "our VPN address", "vpn.acme.example", w, namespace="shared", tenant="acme", scope=cache_pb2.SCOPE_TENANT
        )
    )
    for req in (
        lookup_req("our VPN address", w, namespace="shared", tenant="globex"),
        lookup_req("the VPN address?", near(w), namespace="shared", tenant="globex"),
    ):
        assert (await svc.stub.Lookup(req)).tier == common_pb2.CACHE_TIER_MISS
    mine = await svc.stub.Lookup(lookup_req("the VPN address?", near(w), namespace="shared", tenant="acme"))
    assert mine.tier == common_pb2.CACHE_TIER_SEMANTIC


# --- never stale -----------------------------------------------------------------------


async def test_ttl_expiry_stale_fallback_and_sweep(svc: RunningCache) -> None:
    clock: Clock = svc.clock  # type: ignore[attr-defined]
    v = unit(8)
    await svc.stub.Store(store_req("weather today", "sunny", v))
    clock.advance(61)
    expired = await svc.stub.Lookup(lookup_req("weather today", v))
    assert (expired.tier, expired.miss_reason) == (common_pb2.CACHE_TIER_MISS, cache_pb2.MISS_REASON_EXPIRED)
    semantic_expired = await svc.stub.Lookup(lookup_req("today's weather", near(v)))
    assert semantic_expired.tier == common_pb2.CACHE_TIER_MISS

    stale = await svc.stub.Lookup(lookup_req("weather today", v, allow_stale=True))
    assert stale.tier == common_pb2.CACHE_TIER_STALE and stale.answer.text == "sunny"
    stale_semantic = await svc.stub.Lookup(lookup_req("today's weather", near(v), allow_stale=True))
    assert stale_semantic.tier == common_pb2.CACHE_TIER_STALE and stale_semantic.similarity < 1.0

    clock.advance(30)  # past the stale grace period
    assert await svc.cache.sweep() == 1
    gone = await svc.stub.Lookup(lookup_req("weather today", v, allow_stale=True))
    assert (gone.tier, gone.miss_reason) == (common_pb2.CACHE_TIER_MISS, cache_pb2.MISS_REASON_NOT_FOUND)
    s = await stats(svc, "default")
    assert (s.entry_count, s.indexed_count, s.expiry_count, s.stale_hit_count) == (0, 0, 1, 2)


async def test_invalidate_by_document_template_namespace_and_all(svc: RunningCache) -> None:
    async def store(text: str, seed: int, **kw: Any) -> None:
        assert (await svc.stub.Store(store_req(text, "answer", unit(seed), **kw))).stored

    await store("a", 10, document_ids=["doc-1", "doc-2"])
    await store("b", 11, document_ids=["doc-2"])
    await store("c", 12, fp={"prompt_template": "support", "prompt_version": "1"})
    await store("d", 13, fp={"prompt_template": "support", "prompt_version": "2"})
    await store("e", 14, namespace="shared")
    await store("f", 15, namespace="creative")
    assert svc.cache.sync.indexes.count("default") == 4

    async def invalidate(**kw: Any) -> int:
        return (await svc.stub.Invalidate(cache_pb2.InvalidateRequest(**kw))).removed_count

    assert await invalidate(document_ids=["doc-2"]) == 2
    assert await invalidate(document_ids=["doc-2"]) == 0  # idempotent
    assert (await svc.stub.Lookup(lookup_req("a"))).tier == common_pb2.CACHE_TIER_MISS
    assert await invalidate(prompt_template="support", prompt_version="1") == 1
    hit = await svc.stub.Lookup(lookup_req("d", fp={"prompt_template": "support", "prompt_version": "2"}))
    assert hit.tier == common_pb2.CACHE_TIER_EXACT
    assert await invalidate(prompt_template="support") == 1
    assert svc.cache.sync.indexes.count("default") == 0
    assert await invalidate(namespace="shared") == 1
    assert (await svc.stub.Lookup(lookup_req("e", namespace="shared"))).tier == common_pb2.CACHE_TIER_MISS
    assert await invalidate(all=True) == 1
    s = await stats(svc, "default")
    assert (s.entry_count, s.invalidation_count) == (0, 4)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.Invalidate(cache_pb2.InvalidateRequest(namespace="shared", all=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- modes, determinism, eviction --------------------------------------------------------


async def test_bypass_refresh_and_nondeterministic_requests(svc: RunningCache) -> None:
    bypass = await svc.stub.Lookup(lookup_req("q", mode=common_pb2.CACHE_MODE_BYPASS))
    assert (bypass.tier, bypass.miss_reason) == (common_pb2.CACHE_TIER_UNSPECIFIED, cache_pb2.MISS_REASON_BYPASS)
    skipped = await svc.stub.Store(store_req("q", "a", mode=common_pb2.CACHE_MODE_BYPASS))
    assert not skipped.stored and skipped.skip_reason == cache_pb2.STORE_SKIP_REASON_BYPASS

    first = await svc.stub.Store(store_req("q", "old answer", unit(20)))
    refresh = await svc.stub.Lookup(lookup_req("q", mode=common_pb2.CACHE_MODE_REFRESH))
    assert refresh.miss_reason == cache_pb2.MISS_REASON_REFRESH
    second = await svc.stub.Store(store_req("q", "new answer", unit(20), mode=common_pb2.CACHE_MODE_REFRESH))
    assert second.entry_id != first.entry_id
    assert (await svc.stub.Lookup(lookup_req("q"))).answer.text == "new answer"
    assert (await stats(svc, "default")).entry_count == 1
    assert svc.cache.sync.indexes.count("default") == 1

    hot = {"temperature": 0.8}
    resp = await svc.stub.Lookup(lookup_req("poem", fp=hot))
    assert resp.miss_reason == cache_pb2.MISS_REASON_NONDETERMINISTIC
    declined = await svc.stub.Store(store_req("poem", "roses", fp=hot))
    assert declined.skip_reason == cache_pb2.STORE_SKIP_REASON_NONDETERMINISTIC
    assert (await svc.stub.Store(store_req("poem", "roses", fp=hot, namespace="creative"))).stored
    assert (await svc.stub.Lookup(lookup_req("poem", fp=hot, namespace="creative"))).tier == common_pb2.CACHE_TIER_EXACT


async def test_eviction_lru_and_oldest(svc: RunningCache) -> None:
    clock: Clock = svc.clock  # type: ignore[attr-defined]
    for ns in ("small_lru", "small_oldest"):
        for i, text in enumerate(("one", "two")):
            await svc.stub.Store(store_req(text, text, unit(30 + i), namespace=ns))
            clock.advance(1)
        assert (await svc.stub.Lookup(lookup_req("one", namespace=ns))).tier == common_pb2.CACHE_TIER_EXACT
        clock.advance(1)
        await svc.cache.flush_stats()  # last-use times reach Redis
        evicting = await svc.stub.Store(store_req("three", "three", unit(32), namespace=ns))
        assert evicting.evicted_count == 1
    lru_kept = [
        t for t in ("one", "two", "three") if (await svc.stub.Lookup(lookup_req(t, namespace="small_lru"))).answer.text
    ]
    old_kept = [
        t
        for t in ("one", "two", "three")
        if (await svc.stub.Lookup(lookup_req(t, namespace="small_oldest"))).answer.text
    ]
    assert lru_kept == ["one", "three"]  # "two" was least recently used
    assert old_kept == ["two", "three"]  # "one" was oldest
    assert svc.cache.sync.indexes.count("small_lru") == 2
    assert (await stats(svc, "small_lru")).eviction_count == 1


# --- bad input ---------------------------------------------------------------------------


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            out += [v.field for v in br.field_violations]
    return out


async def test_bad_input_is_refused_and_changes_nothing(svc: RunningCache) -> None:
    bad_dim = store_req("q", "a", unit(40)[:100])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.Store(bad_dim)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["embedding"]

    empty = store_req("q", "a")
    del empty.fingerprint.messages[:]
    empty.text = ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.Store(empty)
    assert violations(err.value) == ["text", "fingerprint.messages"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.Store(store_req("q", "a", namespace="no-such-namespace"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-namespace" in err.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.Lookup(lookup_req("q", tenant=""))
    assert violations(err.value) == ["tenant_id"]

    s = await stats(svc, "default")
    assert (s.entry_count, s.store_count, s.indexed_count) == (0, 0, 0)


# --- second check, quality sampling, stats, reload -------------------------------------


@pytest.mark.parametrize("check", [True, False])
async def test_second_check_rejects_near_misses(redis_url: str, namespaces_file: Path, check: bool) -> None:
    rejected: list[tuple[str, str]] = []

    class No:
        accept = False
        reason = "numbers differ: 10 vs 50"

    def reject(query: str, candidate: str, cosine: float, threshold: float) -> Verdict:
        rejected.append((query, candidate))
        return No()

    if not check:
        text = NAMESPACES.replace("quality_sample_rate: 1.0}", "second_check: false}")
        await asyncio.to_thread(namespaces_file.write_text, text)
    async for svc in _serve(redis_url, namespaces_file, verifier=reject):
        v = unit(50)
        await svc.stub.Store(store_req("price of plan 10", "$10", v))
        resp = await svc.stub.Lookup(lookup_req("price of plan 50", near(v)))
        if check:
            assert (resp.tier, resp.miss_reason) == (
                common_pb2.CACHE_TIER_MISS,
                cache_pb2.MISS_REASON_REJECTED_BY_CHECK,
            )
            assert resp.check_reason == "numbers differ: 10 vs 50"
            assert rejected == [("price of plan 50", "price of plan 10")]
            assert (await stats(svc, "default")).check_rejection_count == 1
        else:
            assert resp.tier == common_pb2.CACHE_TIER_SEMANTIC and not rejected
        assert (await svc.stub.Lookup(lookup_req("price of plan 10"))).tier == common_pb2.CACHE_TIER_EXACT


async def test_quality_sampling_is_recorded_per_namespace(svc: RunningCache) -> None:
    v = unit(60)
    await svc.stub.Store(store_req("limit of the free plan", "The limit is 10 GB.", v))
    hit = await svc.stub.Lookup(lookup_req("free plan limit", near(v)))
    assert hit.tier == common_pb2.CACHE_TIER_SEMANTIC and hit.sample_for_quality  # rate 1.0 in "default"
    exact = await svc.stub.Lookup(lookup_req("limit of the free plan"))
    assert not exact.sample_for_quality  # exact hits are never sampled

    before = (
        REGISTRY.get_sample_value(
            "tollway_cache_quality_agreement_count", {"namespace": "default", "method": "token_f1"}
        )
        or 0
    )
    resp = await svc.stub.RecordQualitySample(
        cache_pb2.RecordQualitySampleRequest(
            cached_text=hit.answer.text,
            fresh_text="The limit is 50 GB.",
            cached_embedding=unit(61).tolist(),
            fresh_embedding=unit(61).tolist(),
            entry_id=hit.answer.entry_id,
        )
    )
    assert resp.token_f1 == pytest.approx(0.8)
    assert resp.HasField("embedding_cosine") and resp.embedding_cosine == pytest.approx(1.0)
    after = REGISTRY.get_sample_value(
        "tollway_cache_quality_agreement_count", {"namespace": "default", "method": "token_f1"}
    )
    assert after == before + 1
    await svc.cache.flush_stats()
    s = await stats(svc, "default")
    assert s.quality_sample_count == 1 and s.quality_token_f1_mean == pytest.approx(0.8)
    assert (s.semantic_hit_count, s.exact_hit_count, s.store_count) == (1, 1, 1)

    all_stats = await svc.stub.GetStats(cache_pb2.GetStatsRequest())
    assert [n.namespace for n in all_stats.namespaces][:2] == ["creative", "default"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.GetStats(cache_pb2.GetStatsRequest(namespace="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stats_read_during_a_flush_count_each_store_once(svc: RunningCache) -> None:
    for i in range(3):
        await svc.stub.Store(store_req(f"q{i}", "a", unit(70 + i)))
    store = svc.cache.store
    write, release = store.flush_stats, asyncio.Event()

    async def slow_write(*args: object) -> None:
        await release.wait()  # the counters are taken from the buffer, not yet in Redis
        await write(*args)

    store.flush_stats = slow_write  # type: ignore[method-assign]
    try:
        flush = asyncio.create_task(svc.cache.flush_stats())
        await asyncio.sleep(0)
        reading = asyncio.create_task(svc.cache.stats("default"))
        await asyncio.sleep(0.05)
        release.set()
        during = (await reading)[0].store_count
        await flush
    finally:
        store.flush_stats = write  # type: ignore[method-assign]
    assert during == (await svc.cache.stats("default"))[0].store_count == 3


async def test_namespaces_reload_when_the_file_changes(svc: RunningCache, namespaces_file: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await svc.stub.Lookup(lookup_req("q", namespace="late"))
    await asyncio.to_thread(namespaces_file.write_text, NAMESPACES + "  late: {threshold: 0.5, scope: global}\n")
    os.utime(namespaces_file, (1, 1))
    for _ in range(100):
        try:
            resp = await svc.stub.Lookup(lookup_req("q", namespace="late"))
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the new namespace never appeared")
    assert resp.tier == common_pb2.CACHE_TIER_MISS


async def test_purge_cli_function(svc: RunningCache, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{svc.port}"
    await svc.stub.Store(store_req("a", "x", document_ids=["doc-9"]))
    await svc.stub.Store(store_req("b", "x", fp={"prompt_template": "tpl", "prompt_version": "7"}))
    await svc.stub.Store(store_req("c", "x", namespace="shared"))
    assert await purge.purge_async(target, document_ids=["doc-9"]) == 1
    assert await purge.purge_async(target, prompt_template="tpl", prompt_version="6") == 0
    with pytest.raises(ValueError, match="exactly one"):
        await purge.purge_async(target, namespace="shared", everything=True)

    parser = argparse.ArgumentParser()
    purge.add_arguments(parser)
    code = await asyncio.to_thread(purge.run, parser.parse_args(["--target", target, "--all"]))
    assert code == 0 and capsys.readouterr().out == "removed 2 cache entries\n"
    assert (await stats(svc, "shared")).entry_count == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--all", "--namespace", "x"])
    capsys.readouterr()  # argparse's usage message
    code = await asyncio.to_thread(
        purge.run, parser.parse_args(["--target", "127.0.0.1:1", "--all", "--timeout", "0.5"])
    )
    assert code == 1
    assert capsys.readouterr().err.startswith("tollway cache purge: UNAVAILABLE: ")


async def test_scope_isolation_under_crowding(svc: RunningCache) -> None:
    """Fifteen owners store the same question with nearly the same vector in each namespace
    (more than the 8 neighbours a search starts with); every requester gets only what its
    scope allows: its own user's entry, its tenant's, or anyone's."""
    v = unit(70)
    owners = [(f"t{t}", f"u{u}") for t in range(5) for u in range(3)]
    for ns in ("default", "private", "shared"):
        for i, (tenant, user) in enumerate(owners):
            w = v + 0.01 * unit(1000 + i)
            w /= np.linalg.norm(w)
            await svc.stub.Store(
                store_req(
                    "how do I reset my password", f"{ns}|{tenant}|{user}", w, namespace=ns, tenant=tenant, user=user
                )
            )
    for ns in ("default", "private", "shared"):
        for tenant, user in [*owners, ("t9", "u0"), ("t0", "u9")]:
            resp = await svc.stub.Lookup(
                lookup_req("how can I reset my password", near(v, 0.02), namespace=ns, tenant=tenant, user=user)
            )
            if ns == "shared":
                assert resp.tier == common_pb2.CACHE_TIER_SEMANTIC
                continue
            owner_tenant, owner_user = resp.answer.text.split("|")[1:] if resp.answer.text else ("", "")
            if tenant == "t9" or (ns == "private" and user == "u9"):
                assert resp.tier == common_pb2.CACHE_TIER_MISS, (ns, tenant, user, resp.answer.text)
                continue
            assert resp.tier == common_pb2.CACHE_TIER_SEMANTIC, (ns, tenant, user)
            assert owner_tenant == tenant, (ns, tenant, user, resp.answer.text)
            if ns == "private":
                assert owner_user == user, (ns, tenant, user, resp.answer.text)
