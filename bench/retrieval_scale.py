"""Retrieval at scale: hybrid search latency, hnswlib recall against exact search, ingestion rate.

    .venv/bin/python bench/retrieval_scale.py                 # 10k and 100k chunks
    .venv/bin/python bench/retrieval_scale.py --sizes 10000 --queries 300
    .venv/bin/python bench/retrieval_scale.py --ensemble      # a second vector space per chunk

Search latency is measured on the service's own index and search code (``CollectionIndex``
+ ``Searcher``, what the Search RPC runs after it has the query vector), so the query
embedding is excluded, as the figure asks; gRPC adds its own ~0.3 ms per call on top.

Embedding 100k chunks would take hours on two cores, so the corpus is synthetic but shaped
like a real one: 384-d unit vectors drawn around 500 topic centroids (each chunk near one
topic, as sentence embeddings cluster), and ~60-word texts from a Zipf-distributed
vocabulary of 30,000 words whose topic words are frequent in their topic. Queries are
noisy copies of a random chunk's vector and a few of its words.

Recall@10: hnswlib's ten nearest chunks against the exact ten (a matrix product), for the
same queries, at the service's default M and ef.

Ensemble (``--ensemble``): the collection also has an ensemble model, so every chunk has a
second 384-d vector in its own hnswlib space and hybrid and vector searches rank in both
(ensemble weight 0.5, keyword weight 0.3: the service's defaults for such a collection).
The second vectors are derived from the first (see ``Corpus.second_space``); recall@10 is
reported for both spaces.

Ingestion: the pipeline rate (chunk, commit to Redis, follow the event stream, index) with
an embedder that returns precomputed vectors, so the figure is the service's own cost; the
end-to-end rate with the real model is the one bench/retrieval_eval.py prints while it
ingests (the model dominates it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import local_redis  # noqa: E402
from tollway.mesh.config import MeshConfig  # noqa: E402
from tollway.retrieval.__main__ import build  # noqa: E402
from tollway.retrieval.config import RetrievalConfig  # noqa: E402
from tollway.retrieval.index import CollectionIndex, IndexParams  # noqa: E402
from tollway.retrieval.search import Searcher  # noqa: E402
from tollway.retrieval.types import Chunk, Chunking, Mode, SearchOptions, Strategy  # noqa: E402

DIM = 384
TOPICS = 500
VOCAB = 30_000
ENSEMBLE_MODEL = "second-model"
# Per-coordinate noise added in the second space: about 0.4 in norm, a third of the chunks' spread
# around their topic (0.06 a coordinate), so neighbours mostly agree across the spaces but not in order.
ENSEMBLE_NOISE = 0.02


class Corpus:
    """A synthetic clustered corpus (see the module docstring)."""

    def __init__(self, seed: int = 20251206) -> None:
        self.rng = np.random.default_rng(seed)
        centroids = self.rng.normal(size=(TOPICS, DIM)).astype(np.float32)
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        ranks = np.arange(1, VOCAB + 1)
        self.p = (1.0 / ranks) / (1.0 / ranks).sum()
        self.words = np.asarray([f"w{i}" for i in range(VOCAB)])
        self.topic_words = self.rng.integers(200, VOCAB, size=(TOPICS, 20))
        # A generator of its own for the second space, so that the first space's corpus and queries
        # are the same draws with or without --ensemble (the two runs compare like for like).
        self.ensemble_rng = np.random.default_rng(seed + 1)
        q, r = np.linalg.qr(self.ensemble_rng.normal(size=(DIM, DIM)))
        # Sign-fixing makes the rotation uniformly random (QR alone is biased by its sign convention).
        self.rotation = (q * np.sign(np.diag(r))).astype(np.float32)

    def second_space(self, vectors: np.ndarray) -> np.ndarray:
        """Unit vectors of a second embedding model for ``vectors`` (rows, unit norm).

        A real second model ranks much like the first but not identically. A fixed orthogonal
        rotation keeps every distance (the clustering, hence hnswlib's difficulty, is the same),
        and independent noise per vector makes the two spaces' near neighbours differ a little, so
        the fusion and the second graph do real work instead of repeating the first space.
        """
        rows = np.atleast_2d(vectors).astype(np.float32) @ self.rotation
        rows = rows + self.ensemble_rng.normal(size=rows.shape).astype(np.float32) * ENSEMBLE_NOISE
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def with_second_space(self, chunks: Sequence[Chunk]) -> list[Chunk]:
        second = self.second_space(np.stack([np.asarray(c.vector) for c in chunks]))
        return [
            dataclasses.replace(c, ensemble_vectors={ENSEMBLE_MODEL: v}) for c, v in zip(chunks, second, strict=True)
        ]

    def chunks(self, n: int) -> tuple[list[Chunk], np.ndarray]:
        topics = self.rng.integers(0, TOPICS, size=n)
        noise = self.rng.normal(size=(n, DIM)).astype(np.float32) * 0.06
        vectors = self.centroids[topics] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out = []
        common = self.rng.choice(VOCAB, size=(n, 50), p=self.p)
        special = self.topic_words[topics][:, :10]
        for i in range(n):
            text = " ".join(self.words[np.concatenate([common[i], special[i]])])
            out.append(Chunk(f"c{i}", f"d{i // 4}", text, "", "", {}, vectors[i]))
        return out, topics

    def topic_queries(self, count: int) -> list[np.ndarray]:
        """Vectors near a topic's centre, not near any one chunk: many chunks are almost as close,
        which is where an approximate index loses neighbours."""
        topics = self.rng.integers(0, TOPICS, size=count)
        v = self.centroids[topics] + self.rng.normal(size=(count, DIM)).astype(np.float32) * 0.03
        return list(v / np.linalg.norm(v, axis=1, keepdims=True))

    def queries(self, chunks: Sequence[Chunk], count: int) -> list[tuple[str, np.ndarray]]:
        out = []
        for i in self.rng.integers(0, len(chunks), size=count):
            v = np.asarray(chunks[i].vector) + self.rng.normal(size=DIM).astype(np.float32) * 0.03
            words = chunks[i].text.split()
            picked = self.rng.choice(len(words), size=4, replace=False)
            out.append((" ".join(words[j] for j in picked), v / np.linalg.norm(v)))
        return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def search_figures(
    n: int,
    queries: int,
    corpus: Corpus,
    bigrams: bool = True,
    bigram_weights: Sequence[float] = (0.25,),
    ensemble: bool = False,
) -> dict[str, float]:
    """Build time, latency per mode (hybrid and keyword once per bigram weight) and hnswlib recall;
    with ``ensemble``, every chunk and query also has a vector in a second space."""
    chunks, _ = corpus.chunks(n)
    if ensemble:
        chunks = corpus.with_second_space(chunks)
    started = time.perf_counter()
    index = CollectionIndex(
        DIM, {}, IndexParams(bigrams=bigrams), capacity=n, ensemble={ENSEMBLE_MODEL: DIM} if ensemble else None
    )
    for start in range(0, n, 5000):
        index.add(chunks[start : start + 5000], num_threads=2)
    index.rebuild_keyword_now()
    build_s = time.perf_counter() - started
    searcher = Searcher()
    qs = corpus.queries(chunks, queries)
    # The query's second vector is made like a chunk's, from its first, as a second model would embed it.
    second = corpus.second_space(np.stack([v for _, v in qs])) if ensemble else None
    # The service's defaults for a collection with ensemble models (empty: the one-model runs as before).
    extra: dict[str, float] = {"keyword_weight": 0.3, "ensemble_weight": 0.5} if ensemble else {}
    figures: dict[str, float] = {"chunks": n, "build_s": build_s}
    runs = [(Mode.VECTOR, 0.0, "vector")]
    for w in bigram_weights:
        runs += [(Mode.HYBRID, w, f"hybrid@{w}"), (Mode.KEYWORD, w, f"keyword@{w}")]
    for mode, weight, key in runs:
        # The second query vectors by query; empty for one-model runs, which search as they always did.
        seconds = [{ENSEMBLE_MODEL: v} for v in second] if second is not None else [{} for _ in qs]
        times = []
        for (text, vec), ev in zip(qs[:20], seconds[:20], strict=True):  # warm-up
            searcher.search(index, SearchOptions(text, top_k=10, mode=mode, query_vector=vec, bigram_weight=weight,
                                                 ensemble_vectors=ev, **extra))  # type: ignore[arg-type]  # fmt: skip
        for (text, vec), ev in zip(qs, seconds, strict=True):
            t = time.perf_counter()
            searcher.search(index, SearchOptions(text, top_k=10, mode=mode, query_vector=vec, bigram_weight=weight,
                                                 ensemble_vectors=ev, **extra))  # type: ignore[arg-type]  # fmt: skip
            times.append((time.perf_counter() - t) * 1000)
        figures[f"{key}_p50_ms"] = statistics.median(times)
        figures[f"{key}_p99_ms"] = percentile(times, 0.99)
    figures["recall_at_10"] = recall_at_10(index, [v for _, v in qs])
    topic = corpus.topic_queries(len(qs))
    figures["recall_at_10_topic"] = recall_at_10(index, topic)
    if second is not None:
        figures["ensemble_recall_at_10"] = recall_at_10(index, list(second), ENSEMBLE_MODEL)
        figures["ensemble_recall_at_10_topic"] = recall_at_10(
            index, list(corpus.second_space(np.stack(topic))), ENSEMBLE_MODEL
        )
    return figures


def recall_at_10(index: CollectionIndex, queries: Sequence[np.ndarray], model: str | None = None) -> float:
    """Share of the exact ten nearest chunks that hnswlib also returns (in ``model``'s space;
    None: the main model's)."""
    allowed = index.allowed([])
    hits = 0
    for vec in queries:
        approx = set(index.vector_top(vec, 10, allowed, model=model).tolist())
        exact = set(index.vector_top(vec, 10, allowed, exact=True, model=model).tolist())
        hits += len(approx & exact)
    return hits / (10 * len(queries))


async def real_recall(redis_url: str, collection: str, dataset: str) -> tuple[int, float]:
    """hnswlib recall@10 on a collection indexed by bench/retrieval_eval.py (real MiniLM chunk
    vectors), with that data set's dev queries embedded by the same model."""
    from bench.retrieval_eval import DATA, load
    from tollway.embedding.model import load_model
    from tollway.mesh import redis as mesh_redis
    from tollway.retrieval.store import RetrievalStore

    client = mesh_redis.connect(redis_url)
    store = RetrievalStore(client)
    stored = await store.get_collection(collection)
    assert stored is not None, f"no collection {collection!r} in {redis_url}"
    col = stored.collection
    index = CollectionIndex(col.dimension, {}, IndexParams(), capacity=col.chunk_count)
    async for batch in store.scan_chunks(stored.uid, col.dimension, col.embedding_model):
        index.add(batch, num_threads=2)
    await client.aclose()
    ds = load(dataset, DATA)
    vectors = load_model().embed(list(ds.queries.values())).vectors
    return len(index), recall_at_10(index, list(vectors))


class PrecomputedEmbedder:
    """Answers with a fixed random unit vector per text: the pipeline's cost without a model."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(1)

    async def embed(self, texts: Sequence[str], model: str, input_type: str = "document") -> np.ndarray:
        v = self.rng.normal(size=(len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    async def models(self) -> tuple[dict[str, int], str]:
        return {"minilm-l6-v2-int8": DIM}, "minilm-l6-v2-int8"


async def ingest_figures(documents: int, corpus: Corpus) -> dict[str, float]:
    chunks, _ = corpus.chunks(documents * 3)
    texts = ["\n\n".join(c.text for c in chunks[i * 3 : i * 3 + 3]) for i in range(documents)]
    with local_redis() as redis_server:
        embedder = PrecomputedEmbedder()
        cfg = RetrievalConfig(port=0, key_prefix="tw:scale", follow_block_ms=100)
        spec, retrieval = build(cfg, MeshConfig(redis_url=redis_server.url), embedder=embedder, catalog=embedder)
        await retrieval.store.redis.ping()
        await retrieval.start()
        try:
            await retrieval.create_collection(
                "scale", embedding_model="", chunking=Chunking(Strategy.RECURSIVE, 80), fields={}
            )
            started = time.perf_counter()
            ops = [await retrieval.upsert("collections/scale", f"d{i}", text=t) for i, t in enumerate(texts)]
            while True:
                col = await retrieval.get_collection("collections/scale")
                index = retrieval.sync.get("scale", retrieval.sync.entries["scale"].uid) if (
                    "scale" in retrieval.sync.entries) else None  # fmt: skip
                done = [await retrieval.get_operation(op.name) for op in ops[-5:]]
                if all(o.state.done for o in done) and index is not None and len(index) == col.chunk_count:
                    break
                await asyncio.sleep(0.2)
            seconds = time.perf_counter() - started
        finally:
            await spec.on_stop()  # type: ignore[misc]
    return {"documents": documents, "chunks": col.chunk_count, "seconds": seconds,
            "chunks_per_s": col.chunk_count / seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=500, help="queries per size")
    parser.add_argument("--ingest-documents", type=int, default=1000, help="documents for the ingestion rate (0: skip)")
    parser.add_argument("--real-redis", help="also measure recall@10 on a collection retrieval_eval.py indexed here")
    parser.add_argument(
        "--real-collection", default="eval-scifact-200", help="that collection (default eval-scifact-200)"
    )
    parser.add_argument("--real-dataset", default="scifact", help="whose dev queries to embed (scifact or squad)")
    parser.add_argument(
        "--no-bigrams", action="store_true", help="index words only (the service indexes word pairs too)"
    )
    parser.add_argument(
        "--bigram-weights", default="0.25", help="comma-separated weights of word-pair matches to time searches at"
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="give every chunk and query a second vector (an ensemble model)"
    )
    args = parser.parse_args()
    weights = [float(x) for x in args.bigram_weights.split(",")]
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    corpus = Corpus()
    for n in (int(x) for x in args.sizes.split(",")):
        f = search_figures(n, args.queries, corpus, not args.no_bigrams, weights, args.ensemble)
        timed = " ".join(
            f"{k.removesuffix('_p50_ms')} p50 {f[k]:.2f} p99 {f[k.replace('p50', 'p99')]:.2f} ms "
            for k in f
            if k.endswith("_p50_ms")
        )
        print(
            f"{n:>7} chunks (word pairs {'off' if args.no_bigrams else 'on'})  build {f['build_s']:.1f}s  {timed} "
            f"hnsw recall@10 {f['recall_at_10']:.4f} (topic queries {f['recall_at_10_topic']:.4f})"
            + (
                f"  ensemble space recall@10 {f['ensemble_recall_at_10']:.4f} "
                f"(topic queries {f['ensemble_recall_at_10_topic']:.4f})"
                if args.ensemble
                else ""
            ),
            flush=True,
        )
    if args.real_redis:
        n, r = asyncio.run(real_recall(args.real_redis, args.real_collection, args.real_dataset))
        print(f"real MiniLM vectors: {n} chunks of {args.real_collection}, hnsw recall@10 {r:.4f}", flush=True)
    if args.ingest_documents:
        g = asyncio.run(ingest_figures(args.ingest_documents, corpus))
        print(
            f"ingestion pipeline (model excluded): {g['documents']} documents, {g['chunks']} chunks "
            f"in {g['seconds']:.1f}s = {g['chunks_per_s']:.0f} chunks/s",
            flush=True,
        )
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
