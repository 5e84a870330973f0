"""What grounding adds to a Generate through Envoy: the same question with and without
``retrieval``, in one interleaved run.

    .venv/bin/python bench/retrieval_generate.py [--pairs 300] [--warmup 30] [--documents 60] [--layout colocated]

Starts, on free loopback ports, the fake OpenAI upstream (no delay) and the stack as ``make run``
starts it, plus the retrieval service (its own process, as in deploy/mesh.yaml) with the real
embedding service (all-MiniLM-L6-v2). Ingests ``--documents`` short support articles into a fresh
collection through UpsertDocument and waits until each is searchable. Then sends pairs of
``POST /v1/generate`` (Server-Sent Events) on two keep-alive connections: ``plain`` asks the
question alone, ``grounded`` asks it with ``retrieval {collection, top_k 8, max_context_tokens
1000}``, so the gateway embeds the question once, runs a hybrid search, fits and orders the sources,
sends a citations event and the longer prompt. Both skip the response cache (``CACHE_MODE_BYPASS``)
so every request is a full pass; the upstream answers the same 20 words to both. The order within
a pair alternates. Prints p50/p90/p99 of the whole request and of the time to the first delta, the
median per-pair difference, and the machine's load (``uptime``) before and after.

Never run it on a machine that serves anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Endpoint, alternating_pairs, percentile  # noqa: E402
from bench.overhead import MODEL, start_upstream  # noqa: E402
from bench.prompt_ref import uptime  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402
from tollway.retrieval.v1 import retrieval_pb2 as pb  # noqa: E402
from tollway.retrieval.v1 import retrieval_pb2_grpc  # noqa: E402

QUESTION = "How long does a refund take to reach my card after I return a kettle?"
TOPICS = (
    "refunds",
    "shipping",
    "warranty",
    "returns",
    "invoices",
    "accounts",
    "discounts",
    "repairs",
    "stores",
    "gifts",
)


def article(i: int) -> tuple[str, str]:
    """A short support article (about 60 words), ten topics with six variants each."""
    topic = TOPICS[i % len(TOPICS)]
    days = 7 + (i * 3) % 28
    text = (
        f"{topic.capitalize()} policy, note {i}. Customers asking about {topic} for kettles, toasters and "
        f"blenders bought online or in one of our stores are helped within {days} days. Keep the order number "
        f"and the receipt; for {topic} the support team may ask for a photo of the product and its serial "
        f"number. Contact support by e-mail or in the app, never by post, and mention note {i}."
    )
    return f"{topic.capitalize()} {i}", text


def ingest(address: str, collection: str, documents: int) -> float:
    """Creates the collection, upserts the articles, waits until all are indexed; returns seconds."""
    start = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id=collection), timeout=30)
        ops = []
        for i in range(documents):
            title, text = article(i)
            ops.append(
                stub.UpsertDocument(
                    pb.UpsertDocumentRequest(
                        parent=f"collections/{collection}",
                        document_id=f"a{i}",
                        document=pb.Document(title=title, text=text),
                    ),
                    timeout=30,
                ).operation.name
            )
        for name in ops:
            while True:
                op = stub.GetOperation(pb.GetOperationRequest(name=name), timeout=30).operation
                if op.done:
                    if op.metadata.state != pb.OPERATION_STATE_SUCCEEDED:
                        raise RuntimeError(f"ingestion of {name} ended in state {op.metadata.state}")
                    break
                time.sleep(0.2)
        while True:
            reply = stub.Search(pb.SearchRequest(collection=f"collections/{collection}", query="refund", top_k=100))
            if len({r.document for r in reply.results}) >= min(documents, 100):
                break
            time.sleep(0.2)
    return time.perf_counter() - start


def endpoints(host: str, port: int, key: str, collection: str) -> tuple[Endpoint, Endpoint]:
    common = {
        "model": MODEL,
        "max_tokens": 32,
        "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
        "messages": [{"role": "user", "content": QUESTION}],
    }
    grounded = {**common, "retrieval": {"collection": collection, "top_k": 8, "max_context_tokens": 1000}}
    headers = (("authorization", f"Bearer {key}"),)
    marker = b'"delta"'
    return (
        Endpoint(
            "plain", host, port, "/v1/generate", common, headers, first_text_marker=marker, ok_marker=b"completed"
        ),
        Endpoint(
            "grounded", host, port, "/v1/generate", grounded, headers, first_text_marker=marker, ok_marker=b"citations"
        ),
    )


async def interleaved(plain: Endpoint, grounded: Endpoint, pairs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per request (and to the first delta) of each endpoint, in alternating order."""
    out: dict[str, list[float]] = {k: [] for k in ("plain", "grounded", "plain_ttft", "grounded_ttft", "diff")}
    for (tp, fp), (tg, fg) in await alternating_pairs(plain, grounded, pairs, warmup):
        out["plain"].append(tp)
        out["grounded"].append(tg)
        out["plain_ttft"].append(fp or tp)
        out["grounded_ttft"].append(fg or tg)
        out["diff"].append(tg - tp)
    return out


def report(
    results: dict[str, list[float]], layout: str, ingest_s: float, documents: int, before: str, after: str
) -> str:
    lines = [
        f"layout {layout}; {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"ingested {documents} documents in {ingest_s:.1f} s",
        f"uptime before: {before}",
        f"uptime after:  {after}",
        "",
        "| request | n | p50 ms | p90 ms | p99 ms | TTFT p50 ms | TTFT p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("plain", "grounded"):
        v, f = results[name], results[f"{name}_ttft"]
        lines.append(
            f"| {name} | {len(v)} | {percentile(v, 50) * 1e3:.2f} | {percentile(v, 90) * 1e3:.2f} "
            f"| {percentile(v, 99) * 1e3:.2f} | {percentile(f, 50) * 1e3:.2f} | {percentile(f, 99) * 1e3:.2f} |"
        )
    diff = results["diff"]
    added = (percentile(results["grounded"], 50) - percentile(results["plain"], 50)) * 1e3
    lines += [
        "",
        f"retrieval adds {added:.2f} ms at p50 (difference of the p50s); median per-pair difference "
        f"{statistics.median(diff) * 1e3:.2f} ms, p90 per-pair difference {percentile(diff, 90) * 1e3:.2f} ms",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--layout", choices=("colocated", "split"), default="colocated")
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="bench-retrieval-generate-"))
    upstream, upstream_port = start_upstream(run)
    try:
        services, env = bench_services(ROOT, run)
        services = (*services, "retrieval")
        names = ["edge", "admin", "mesh", "redis", *services]
        catalog = run / "models.yaml"
        catalog.write_text(
            f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
            f"models:\n  {MODEL}: {{provider: upstream}}\n"
        )
        options = StackOptions(
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", **env},
            layout=args.layout,
            startup_timeout_s=120,
        )
        with Stack(options) as stack:
            key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
            collection = f"bench-{uuid.uuid4().hex[:8]}"
            ingest_s = ingest(stack.address("retrieval"), collection, args.documents)
            edge = stack.mesh.edge.listen
            plain, grounded = endpoints(edge.host, edge.port, key, collection)
            before = uptime()
            results = uvloop.run(interleaved(plain, grounded, args.pairs, args.warmup))
            print(report(results, args.layout, ingest_s, args.documents, before, uptime()))
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
