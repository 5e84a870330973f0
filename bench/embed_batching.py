"""Micro-batching of the embedding service: throughput and latency with 1, 16 and 64 concurrent callers.

Runs the service's domain (:class:`tollway.embedding.embedder.Embedder`) in-process on the real model, with both
cache tiers off and a distinct short query (~12 words, 16-19 tokens) per call, so every call costs a model run.
Each caller sends one text per call, back to back. Also prints the latency of one short query run directly on
the model (the "embedding p50 <= 5 ms" aim).

    .venv/bin/python bench/embed_batching.py [--seconds 4] [--waits-ms 0,2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import numpy as np

from tollway.embedding.embedder import Embedder
from tollway.embedding.model import DEFAULT_MODEL_ID, ModelRegistry, catalogue, load_model

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


async def run_config(
    registry: ModelRegistry, queries: list[str], *, callers: int, batching: bool, wait_ms: float, seconds: float
) -> dict[str, float]:
    embedder = Embedder(
        registry,
        None,
        lru_max_entries=0,
        batching=batching,
        batch_max_texts=64,
        batch_max_wait_s=wait_ms / 1000,
    )
    await embedder.start()
    await embedder.embed(["warm-up query"])
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
            await embedder.embed([text])
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - began
    await embedder.aclose()
    lat_ms = np.array(latencies) * 1000
    return {
        "texts_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "calls": len(latencies),
    }


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
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per configuration")
    parser.add_argument("--waits-ms", default="0,2", help="batch_max_wait_ms values to try with batching on")
    parser.add_argument("--callers", default="1,16,64", help="concurrent caller counts")
    args = parser.parse_args()
    waits = [float(w) for w in args.waits_ms.split(",")]
    caller_counts = [int(c) for c in args.callers.split(",")]

    p50, p99 = single_query_p50()
    print(f"single short query, model.embed directly: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    registry = ModelRegistry([catalogue()[DEFAULT_MODEL_ID]])
    registry.load_all()
    queries = short_queries(20_000)
    configs = [("off", False, 0.0)] + [(f"on, wait {w:g} ms", True, w) for w in waits]
    print(f"\n{'callers':>7} | {'batching':<15} | {'texts/s':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'calls':>6}")
    print("-" * 67)
    for callers in caller_counts:
        for label, batching, wait in configs:
            r = await run_config(
                registry, queries, callers=callers, batching=batching, wait_ms=wait, seconds=args.seconds
            )
            print(
                f"{callers:>7} | {label:<15} | {r['texts_per_s']:>8.1f} | {r['p50_ms']:>8.2f} | "
                f"{r['p99_ms']:>8.2f} | {r['calls']:>6.0f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
