"""Cache lookup latency, memory and start-up time at 10k, 100k and 1M entries.

Two levels, embedding excluded everywhere (vectors are given, as the gateway gives them):

* index: the tier-2 index alone (``tollway.cache.index.SemanticIndex``): build rate, memory per
  entry (process RSS growth / entries: graph + vectors + metadata), search p50/p99 with the
  tenant filter on, snapshot write and load time (the restart path).
* cache: the domain object (``tollway.cache.cache.Cache``) over a private redis-server, no
  gRPC: tier-1 lookup p50/p99 (hash + one Redis round trip), tier-2 lookup p50/p99 (tier-1
  miss, index search, candidate read from Redis, the second check), Redis memory per entry,
  and the index rebuild at start, from Redis and from a snapshot plus the stream's tail.

Vectors are synthetic, not embeddings, which is fine for latency and memory; recall depends on
the data, so read the recall column as a property of this data only. The default ``subspace``
data are random unit vectors near a random 32-dimensional subspace (plus isotropic noise), like
sentence embeddings, whose intrinsic dimension is low: the nearest other entry of a query sits
at cosine ~0.7. Each query is a stored vector plus noise (cosine ~0.97 to it). ``--data
uniform`` (uniformly random unit vectors) and ``--data clusters`` (tight, mutually equidistant
clusters of 50) are needle-in-a-haystack cases for any graph index: every other entry is
equally far, nothing guides the search, recall@8 falls to ~0.6 at 1M and builds run 2-4x
slower. Entries are spread over 1000 tenants, tenant-scoped; every lookup is filtered to its
tenant. Lookups are sequential (one caller), timed with perf_counter.

    .venv/bin/python bench/cache_scale.py [--sizes 10000,100000,1000000] [--redis-sizes 10000,100000]
        [--queries 2000] [--m 12] [--ef-construction 64] [--ef 64] [--data subspace|clusters|uniform]

Run time on 2 shared cores with the defaults: about 8 minutes (the 1M index build is 3-5 of them).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The private redis-server helper lives with the tests (production code does not import tests).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.redis_server import local_redis
from tollway.cache.cache import Cache, CacheSettings
from tollway.cache.entries import Answer, Entry, LookupQuery, Requester
from tollway.cache.index import IndexParams, IndexRecord, Interner, SemanticIndex
from tollway.cache.keys import CacheKeyInput, Fingerprint, context_key, exact_key
from tollway.cache.namespaces import NamespaceRegistry
from tollway.cache.scope import Scope
from tollway.cache.store import CacheStore
from tollway.cache.sync import IndexSync
from tollway.common.caching import CacheTier
from tollway.common.chat import ChatMessage
from tollway.mesh.redis import connect

DIM = 384
TENANTS = 1000
PER_CLUSTER = 50


def rss_bytes() -> int:
    """Resident memory after handing freed heap pages back to the OS (else a new allocation
    that reuses freed temporaries would not show up as growth)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def make_vectors(n: int, rng: np.random.Generator, data: str) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    basis = rng.standard_normal((32, DIM)).astype(np.float32) / np.sqrt(32)
    centres = unit(rng.standard_normal((max(1, n // PER_CLUSTER), DIM)).astype(np.float32))
    for start in range(0, n, 50_000):  # chunks keep the temporaries small at 1M
        m = min(50_000, n - start)
        noise = unit(rng.standard_normal((m, DIM)).astype(np.float32))
        if data == "uniform":
            out[start : start + m] = noise
        elif data == "clusters":
            out[start : start + m] = unit(centres[rng.integers(0, len(centres), m)] + 0.9 * noise)
        else:
            out[start : start + m] = unit(rng.standard_normal((m, 32)).astype(np.float32) @ basis + 0.3 * noise)
    return out


def near(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return unit(v + 0.25 * unit(rng.standard_normal(v.shape).astype(np.float32)))


def pct(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def fingerprint(i: int, reworded: bool = False) -> Fingerprint:
    text = (
        f"how do I configure feature {i} for my account"
        if not reworded
        else f"how can I configure feature {i} on my account"
    )
    return Fingerprint(model="m", messages=(ChatMessage("user", text),), temperature=0.0)


def tenant_of(i: int) -> str:
    return f"tenant-{i % TENANTS}"


# --- index level -------------------------------------------------------------------------


def bench_index(n: int, params: IndexParams, queries: int, data: str, scratch: Path) -> dict[str, float]:
    rng = np.random.default_rng(n)
    vectors = make_vectors(n, rng, data)
    gc.collect()
    before = rss_bytes()
    index = SemanticIndex(params, Interner(), capacity=n)
    started = time.perf_counter()
    for start in range(0, n, 20_000):
        batch = [
            IndexRecord(i + 1, 7, Scope.TENANT, tenant_of(i), "", 2**62, 2**62, vectors[i])
            for i in range(start, min(n, start + 20_000))
        ]
        index.add(batch, num_threads=2)
    build_s = time.perf_counter() - started
    gc.collect()
    per_entry = (rss_bytes() - before) / n

    picks = rng.integers(0, n, queries)
    hit_lat, miss_lat, found = [], [], 0
    for i in picks:
        q = near(vectors[i], rng)
        t = time.perf_counter()
        result = index.search(
            q,
            context=7,
            lookup_scope=Scope.TENANT,
            tenant_id=tenant_of(int(i)),
            user_id="",
            now_ms=0,
            allow_stale=False,
            threshold=0.9,
        )
        hit_lat.append(time.perf_counter() - t)
        found += bool(result.candidates) and result.candidates[0].entry_id == i + 1
    for _ in range(queries):
        q = unit(rng.standard_normal(DIM).astype(np.float32))
        t = time.perf_counter()
        index.search(
            q,
            context=7,
            lookup_scope=Scope.TENANT,
            tenant_id="tenant-1",
            user_id="",
            now_ms=0,
            allow_stale=False,
            threshold=0.9,
        )
        miss_lat.append(time.perf_counter() - t)

    snap = scratch / f"index-{n}"
    snap.mkdir()
    t = time.perf_counter()
    index.save(snap)
    save_s = time.perf_counter() - t
    size = sum(f.stat().st_size for f in snap.iterdir())
    del index
    gc.collect()
    t = time.perf_counter()
    loaded = SemanticIndex.load(snap, params, Interner(tenant_of(i) for i in range(TENANTS)))
    load_s = time.perf_counter() - t
    assert len(loaded) == n
    del loaded, vectors
    shutil.rmtree(snap)
    gc.collect()
    hp50, hp99 = pct(hit_lat)
    mp50, mp99 = pct(miss_lat)
    return {
        "n": n,
        "build_s": build_s,
        "inserts_per_s": n / build_s,
        "bytes_per_entry": per_entry,
        "hit_p50_ms": hp50,
        "hit_p99_ms": hp99,
        "recall": found / queries,
        "miss_p50_ms": mp50,
        "miss_p99_ms": mp99,
        "snapshot_mb": size / 1e6,
        "save_s": save_s,
        "load_s": load_s,
    }


# --- cache level (Redis) -------------------------------------------------------------------


def entry_for(i: int, vector: np.ndarray, now_ms: int) -> Entry:
    fp = fingerprint(i)
    key_input = CacheKeyInput.build(
        namespace="bench", scope=Scope.TENANT, tenant_id=tenant_of(i), user_id="", fingerprint=fp
    )
    return Entry(
        entry_id=0,
        namespace="bench",
        key=exact_key(key_input),
        context=context_key(key_input, "minilm"),
        scope=Scope.TENANT,
        tenant_id=tenant_of(i),
        user_id="",
        prompt_template="",
        prompt_version="",
        query=fp.query,
        embedding_model="minilm",
        created_ms=now_ms,
        expires_ms=now_ms + 86_400_000,
        stale_until_ms=now_ms + 2 * 86_400_000,
        document_ids=(f"doc-{i % 5000}",),
        answer=Answer(
            text=f"To configure feature {i}, open Settings, then Features, and switch it on. " * 3,
            model="m",
            input_tokens=20,
            output_tokens=60,
        ),
        vector=vector,
    )


async def fill(store: CacheStore, vectors: np.ndarray) -> float:
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for start in range(0, len(vectors), 1000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(len(vectors), start + 1000)):
                e = entry_for(i, vectors[i], now)
                await store._put(  # the store's own script, pipelined: the same writes as Cache.put
                    args=[
                        store.prefix, store.events_maxlen, e.key, e.namespace, e.created_ms, e.stale_until_ms, 0, "lru",
                        f'["{e.document_ids[0]}"]', "",
                        "ns", e.namespace, "key", e.key, "ctx", e.context, "scope", int(e.scope), "tenant", e.tenant_id,
                        "user", "", "tpl", "", "ver", "", "query", e.query, "emb_model", e.embedding_model,
                        "created", e.created_ms, "expires", e.expires_ms, "stale_until", e.stale_until_ms,
                        "docs", f'["{e.document_ids[0]}"]', "text", e.answer.text, "model", "m", "provider", "",
                        "finish", 1, "in_tok", 20, "out_tok", 60, "cached_tok", 0, "vec", vectors[i].tobytes(),
                    ],
                    client=pipe,
                )  # fmt: skip
            await pipe.execute()
    return time.perf_counter() - started


async def bench_cache(n: int, params: IndexParams, queries: int, data: str, scratch: Path) -> dict[str, float]:
    rng = np.random.default_rng(n + 1)
    vectors = make_vectors(n, rng, data)
    ns_file = scratch / "namespaces.yaml"
    ns_file.write_text("namespaces:\n  bench: {preset: default, scope: tenant, max_entries: 0}\n")
    with local_redis() as server:
        client = connect(server.url)
        store = CacheStore(client, prefix="bench")
        base = int((await client.info("memory"))["used_memory"])
        fill_s = await fill(store, vectors)
        redis_per_entry = (int((await client.info("memory"))["used_memory"]) - base) / n

        snapshots = scratch / f"snapshots-{n}"
        sync = IndexSync(store, params, snapshot_dir=snapshots)
        cache = Cache(store, NamespaceRegistry(ns_file), sync, settings=CacheSettings(dim=DIM))
        t = time.perf_counter()
        await cache.start()
        rebuild_s = time.perf_counter() - t
        assert cache.sync.indexes.count("bench") == n

        picks = rng.integers(0, n, queries)
        exact_lat, semantic_lat, semantic_hits = [], [], 0
        for i in picks:
            i = int(i)
            q = LookupQuery(Requester("bench", tenant_of(i)), fingerprint(i))
            t = time.perf_counter()
            out = await cache.lookup(q)
            exact_lat.append(time.perf_counter() - t)
            assert out.tier == CacheTier.EXACT
        for i in picks:
            i = int(i)
            q = LookupQuery(
                Requester("bench", tenant_of(i)),
                fingerprint(i, reworded=True),
                embedding=near(vectors[i], rng),
                embedding_model="minilm",
            )
            t = time.perf_counter()
            out = await cache.lookup(q)
            semantic_lat.append(time.perf_counter() - t)
            semantic_hits += out.tier == CacheTier.SEMANTIC

        t = time.perf_counter()
        await cache.stop()  # writes the snapshot
        snapshot_s = time.perf_counter() - t
        # The restart path: snapshot, plus 1000 entries stored meanwhile by "another replica".
        more = make_vectors(1000, rng, data)
        now = int(time.time() * 1000)
        for j in range(1000):
            await store.put(entry_for(n + j, more[j], now), max_entries=0, eviction="lru")
        again = IndexSync(store, params, snapshot_dir=snapshots)
        t = time.perf_counter()
        report = await again.start()
        restart_s = time.perf_counter() - t
        assert report.source == "snapshot" and again.indexes.count("bench") == n + 1000
        await client.aclose()
    e50, e99 = pct(exact_lat)
    s50, s99 = pct(semantic_lat)
    return {
        "n": n,
        "fill_s": fill_s,
        "redis_bytes_per_entry": redis_per_entry,
        "rebuild_s": rebuild_s,
        "exact_p50_ms": e50,
        "exact_p99_ms": e99,
        "semantic_p50_ms": s50,
        "semantic_p99_ms": s99,
        "semantic_hit_rate": semantic_hits / queries,
        "snapshot_write_s": snapshot_s,
        "restart_from_snapshot_s": restart_s,
    }


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="index-level sizes")
    parser.add_argument("--redis-sizes", default="10000,100000", help="cache-level sizes (entries in Redis)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--m", type=int, default=IndexParams.m)
    parser.add_argument("--ef-construction", type=int, default=IndexParams.ef_construction)
    parser.add_argument("--ef", type=int, default=IndexParams.ef_search)
    parser.add_argument("--data", choices=("subspace", "clusters", "uniform"), default="subspace")
    args = parser.parse_args()
    params = IndexParams(dim=DIM, m=args.m, ef_construction=args.ef_construction, ef_search=args.ef)
    print(
        f"hnswlib M={params.m} ef_construction={params.ef_construction} ef={params.ef_search} k={params.k}; "
        f"{args.data} random unit vectors, {DIM}-d; "
        f"{args.queries} sequential lookups per figure; cpus={os.cpu_count()}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="cache-scale-"))
    try:
        if sizes(args.sizes):
            print("\n## tier-2 index (SemanticIndex, tenant filter on)\n")
            print(
                "| entries | build s | inserts/s | bytes/entry (RSS) | hit p50 ms | hit p99 ms | recall@1 | "
                "miss p50 ms | miss p99 ms | snapshot MB | save s | load s |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for n in sizes(args.sizes):
                r = bench_index(n, params, args.queries, args.data, scratch)
                print(
                    f"| {n:,} | {r['build_s']:.1f} | {r['inserts_per_s']:,.0f} | {r['bytes_per_entry']:,.0f} | "
                    f"{r['hit_p50_ms']:.3f} | {r['hit_p99_ms']:.3f} | {r['recall']:.3f} | {r['miss_p50_ms']:.3f} | "
                    f"{r['miss_p99_ms']:.3f} | {r['snapshot_mb']:,.0f} | {r['save_s']:.2f} | {r['load_s']:.2f} |",
                    flush=True,
                )
        if sizes(args.redis_sizes):
            print("\n## cache (Cache over a private redis-server, no gRPC)\n")
            print(
                "| entries | fill s | Redis bytes/entry | rebuild at start s | tier-1 p50 ms | tier-1 p99 ms | "
                "tier-2 p50 ms | tier-2 p99 ms | tier-2 hit rate | snapshot write s | restart (snapshot + 1k tail) s |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for n in sizes(args.redis_sizes):
                r = await bench_cache(n, params, args.queries, args.data, scratch)
                print(
                    f"| {n:,} | {r['fill_s']:.1f} | {r['redis_bytes_per_entry']:,.0f} | {r['rebuild_s']:.1f} | "
                    f"{r['exact_p50_ms']:.3f} | {r['exact_p99_ms']:.3f} | {r['semantic_p50_ms']:.3f} | "
                    f"{r['semantic_p99_ms']:.3f} | {r['semantic_hit_rate']:.3f} | {r['snapshot_write_s']:.2f} | "
                    f"{r['restart_from_snapshot_s']:.2f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
