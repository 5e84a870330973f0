"""Structured output with the local model, through the gateway: with and without grammar enforcement.

    .venv/bin/python bench/structured_gateway.py [--schemas 24] [--max-tokens 64] [--layout colocated]

Starts the stack as ``make run`` starts it, with the local llama.cpp model (SmolLM2-135M-Instruct),
and a catalog naming that one server twice: ``smollm2`` with the "json" capability (the gateway
passes the schema on, and llama.cpp compiles it into a grammar) and ``smollm2-free`` without it
(the gateway puts the schema in a system turn, parses leniently, validates, and retries at most
twice with the errors fed back). For each schema of ``bench/guard.py``'s set it sends one
``POST /v1/complete`` with ``response_format`` json_schema to each model through Envoy, and reads
the outcome from the HTTP status and the call record's ``output:structured=...`` item:

- ``valid``: the first answer was valid JSON of the schema as returned;
- ``repaired``: the first answer needed the lenient parse (fences, extraction, json-repair);
- ``retried xN``: valid after N calls;
- ``failed x3``: still invalid after three calls (500 STRUCTURED_OUTPUT_INVALID).

Prints a line per schema and the table, with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.guard import SCHEMAS  # noqa: E402
from bench.prompt_ref import uptime  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

MODELS = ("smollm2", "smollm2-free")


def outcome(stack: Stack, request_id: str) -> str:
    """The ``output:structured=...`` item of the request's call record."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for _, fields in client.xrevrange("tollway:calls", count=200):
                if fields.get("request_id") == request_id:
                    items = fields.get("guard_decisions", "").split(",")
                    return next((i.split("=", 1)[1] for i in items if i.startswith("output:structured=")), "?")
            time.sleep(0.2)
        return "no record"
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schemas", type=int, default=len(SCHEMAS))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--layout", choices=("colocated", "split"), default="colocated")
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="bench-structured-gateway-"))
    catalog = run / "models.yaml"
    catalog.write_text(
        "providers:\n"
        "  local: {wire: openai_compat, base_url: '${TOLLWAY_LOCAL_MODEL_URL}', timeout_s: 300}\n"
        "models:\n"
        "  smollm2: {provider: local, upstream_model: smollm2, capabilities: [json]}\n"
        "  smollm2-free: {provider: local, upstream_model: smollm2}\n"
    )
    services = ("gateway", "router", "openai_compat", "cache", "embedding")
    names = ["edge", "admin", "mesh", "redis", "local_model", *services]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run,
        catalog=catalog,
        with_model=True,
        services=services,
        env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_GATEWAY_REQUEST_TIMEOUT_S": "600"},
        layout=args.layout,
        startup_timeout_s=180,
    )
    schemas = SCHEMAS[: args.schemas]
    counts: dict[str, Counter[str]] = {m: Counter() for m in MODELS}
    calls: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    with Stack(options) as stack:
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        before = uptime()
        print(f"max_tokens {args.max_tokens}, temperature 0.2; uptime before: {before}", flush=True)
        with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {key}"}, timeout=900) as http:
            for prompt, schema in schemas:
                line = []
                for model in MODELS:
                    rid = uuid.uuid4().hex  # UUID-shaped: llama.cpp's server refuses other x-request-ids
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": args.max_tokens,
                        "temperature": 0.2,
                        "response_format": {
                            "type": "RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
                            "schema_name": "answer",
                            "schema_json": json.dumps(schema),
                        },
                        "request_id": rid,
                    }
                    t0 = time.perf_counter()
                    r = http.post("/v1/complete", json=body)
                    seconds[model] += time.perf_counter() - t0
                    got = outcome(stack, rid)
                    kind = got.split("x")[0]
                    counts[model][kind] += 1
                    calls[model] += int(got.split("x")[1]) if "x" in got else 1
                    if r.status_code == 200:
                        json.loads(r.json()["text"])  # what the client gets is JSON
                    line.append(f"{model}: {r.status_code} {got}")
                print(f"  {prompt[:50]:50s} " + "; ".join(line), flush=True)
        after = uptime()
    n = len(schemas)
    print(f"uptime after: {after}")
    print("| model | valid as returned | + lenient parse | + retries (valid in the end) | failed | model calls | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model in MODELS:
        c = counts[model]
        first = c["valid"]
        repaired = first + c["repaired"]
        final = repaired + c["retried"]
        print(
            f"| {model} | {first}/{n} | {repaired}/{n} | {final}/{n} | {c['failed']}/{n} | {calls[model]} "
            f"| {seconds[model]:.0f} |"
        )


if __name__ == "__main__":
    main()
