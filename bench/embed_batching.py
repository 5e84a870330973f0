"""Micro-batching of the embedding service: throughput and latency with 1, 16 and 64 concurrent callers.

Runs the service's domain (:class:`tollway.embedding.embedder.Embedder`) in-process on the real model, with both
cache tiers off and a distinct short query (~12 words, 16-19 tokens) per call, so every call costs a model run.
Each caller sends one text per call, back to back. Also prints the latency of one short query run directly on
the model (the "embedding p50 <= 5 ms" aim). With --grpc, the same load also goes through the real service
(``python -m tollway.embedding`` in its own process, cache tiers off) from a grpc.aio client.

    .venv/bin/python bench/embed_batching.py [--seconds 4] [--waits-ms 0,2] [--callers 1,16,64] [--rounds 3] [--grpc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tollway.embedding.embedder import Embedder
from tollway.embedding.model import DEFAULT_MODEL_ID, ModelRegistry, catalogue, load_model
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc

SERVICE = "tollway.embedding.v1.EmbeddingService"

WORDS = [
    "account",
    "billing",
    "invoice",
    "refund",
    "password",
    "login",
    "order",
    "shipping",
    "delivery",
    "warranty",
    "price",
    "plan",
    "subscription",
    "cancel",
    "upgrade",
    "discount",
    "coupon",
    "payment",
    "card",
    "bank",
    "transfer",
    "address",
    "email",
    "phone",
    "support",
    "ticket",
    "error",
    "crash",
    "update",
    "install",
    "download",
    "license",
    "key",
    "device",
    "battery",
    "screen",
    "camera",
    "network",
    "wifi",
    "router",
    "cable",
    "printer",
]
STARTERS = ["how do i", "why does my", "can i", "what is the", "where can i find the", "is it possible to"]


def short_queries(n: int, seed: int = 7) -> list[str]:
    """Distinct ~12-word questions (16-19 MiniLM tokens)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        words = [rng.choice(STARTERS), *rng.sample(WORDS, 8)]
        seen.add(" ".join(words) + f" {rng.randint(0, 9999)}?")
    return sorted(seen)


async def measure(
    embed_one: Callable[[str], Awaitable[object]], queries: list[str], *, callers: int, seconds: float
) -> dict[str, float]:
    """Runs ``callers`` back-to-back loops of one-text calls for ``seconds``."""
    await embed_one("warm-up query")
    latencies: list[float] = []
    cursor = 0

    def next_query() -> str:
        nonlocal cursor
        cursor += 1
        return queries[cursor % len(queries)]

    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            text = next_query()
            start = time.perf_counter()
            await embed_one(text)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - began
    lat_ms = np.array(latencies) * 1000
    return {
        "texts_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "calls": len(latencies),
    }


async def run_in_process(
    registry: ModelRegistry, queries: list[str], *, callers: int, batching: bool, wait_ms: float, seconds: float
) -> dict[str, float]:
    embedder = Embedder(
        registry, None, lru_max_entries=0, batching=batching, batch_max_texts=64, batch_max_wait_s=wait_ms / 1000
    )
    await embedder.start()
    try:
        return await measure(lambda t: embedder.embed([t]), queries, callers=callers, seconds=seconds)
    finally:
        await embedder.aclose()


@contextlib.asynccontextmanager
async def grpc_service(batching: bool, wait_ms: float) -> AsyncIterator[embedding_pb2_grpc.EmbeddingServiceStub]:
    """Starts ``python -m tollway.embedding`` (no cache tiers) on a free port and yields a stub."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env.update(
        TOLLWAY_EMBEDDING_PORT=str(port),
        TOLLWAY_EMBEDDING_REDIS_CACHE="false",
        TOLLWAY_EMBEDDING_LRU_MAX_ENTRIES="0",
        TOLLWAY_EMBEDDING_BATCHING=str(batching).lower(),
        TOLLWAY_EMBEDDING_BATCH_MAX_WAIT_MS=str(wait_ms),
        TOLLWAY_LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tollway.embedding", env=env)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError("the embedding service did not become SERVING")
            await asyncio.sleep(0.1)
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


async def run_grpc(
    queries: list[str], *, callers_list: list[int], batching: bool, wait_ms: float, seconds: float
) -> list[dict[str, float]]:
    async with grpc_service(batching, wait_ms) as stub:

        async def embed_one(text: str) -> object:
            return await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]), timeout=30)

        return [await measure(embed_one, queries, callers=c, seconds=seconds) for c in callers_list]


def single_query_p50(reps: int = 300) -> tuple[float, float]:
    model = load_model()
    queries = short_queries(reps, seed=11)
    model.embed(queries[:1])
    lat = []
    for q in queries:
        start = time.perf_counter()
        model.embed([q])
        lat.append(time.perf_counter() - start)
    ms = np.array(lat) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per configuration and round")
    parser.add_argument("--waits-ms", default="0,2", help="batch_max_wait_ms values to try with batching on")
    parser.add_argument("--callers", default="1,16,64", help="concurrent caller counts")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over every configuration; the best is kept")
    parser.add_argument("--grpc", action="store_true", help="also through the real service over gRPC")
    args = parser.parse_args()
    waits = [float(w) for w in args.waits_ms.split(",")]
    caller_counts = [int(c) for c in args.callers.split(",")]
    configs = [("off", False, 0.0)] + [(f"on, wait {w:g} ms", True, w) for w in waits]
    queries = short_queries(20_000)

    # The machine is shared: rounds interleave the configurations, and the best round of each is reported, so
    # that a burst of someone else's work hurts no configuration more than another.
    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    single: list[tuple[float, float]] = []
    registry = ModelRegistry([catalogue()[DEFAULT_MODEL_ID]])
    registry.load_all()
    for _ in range(args.rounds):
        single.append(single_query_p50())
        for callers in caller_counts:
            for label, batching, wait in configs:
                row = await run_in_process(
                    registry, queries, callers=callers, batching=batching, wait_ms=wait, seconds=args.seconds
                )
                results.setdefault(("in-process", callers, label), []).append(row)
        if args.grpc:
            for label, batching, wait in configs:
                rows = await run_grpc(
                    queries, callers_list=caller_counts, batching=batching, wait_ms=wait, seconds=args.seconds
                )
                for callers, row in zip(caller_counts, rows, strict=True):
                    results.setdefault(("gRPC", callers, label), []).append(row)

    p50, p99 = min(single)
    print(f"single short query, model.embed directly: p50 {p50:.2f} ms, p99 {p99:.2f} ms (best of {args.rounds})")
    print(f"\n{'path':<10} | {'callers':>7} | {'batching':<15} | {'texts/s':>8} | {'p50 ms':>8} | {'p99 ms':>8}")
    print("-" * 72)
    for (path, callers, label), rows in sorted(results.items(), key=lambda kv: (kv[0][0] != "in-process", kv[0][1])):
        r = max(rows, key=lambda row: row["texts_per_s"])
        print(
            f"{path:<10} | {callers:>7} | {label:<15} | {r['texts_per_s']:>8.1f} | {r['p50_ms']:>8.2f} | "
            f"{r['p99_ms']:>8.2f}"
        )
    print(f"(best of {args.rounds} round(s) of {args.seconds:g} s per row, by throughput; load {os.getloadavg()})")


if __name__ == "__main__":
    asyncio.run(main())
