"""The prompts service under load: ResolvePrompt latency, publish throughput, the A/B split.

Everything runs against real processes: a private redis-server and one ``python -m
tollway.prompts`` (seeded from deploy/prompts), driven over gRPC from this process.

* resolve: ``ResolvePrompt`` of ``support-triage`` by label (one Redis round trip for the
  label, its split and the tenant's pin; version cache; schema check; sandboxed render; token
  count) p50 / p99 and calls/s at 1 and 64 concurrent callers, every call a different user.
* render only: the same render in this process, without gRPC or Redis (what the service adds
  on top of the hop).
* publish: distinct versions published by 16 concurrent callers, per second (each one Lua
  script; the number is taken atomically).
* A/B: ``production`` split 90/10 between two versions; 10,000 users resolved, the share of
  each arm against its weight, then all 10,000 again: how many changed arm (must be 0).

    .venv/bin/python bench/prompts.py [--seconds 5] [--callers 1,64]

Never run it on a machine that serves anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.redis_server import local_redis
from tollway.launcher.processes import free_port
from tollway.prompts.config import PromptsConfig
from tollway.prompts.files import load_prompt_dir
from tollway.prompts.render import Renderer
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc
from tollway.prompts.variables import check_variables, declared_names, parse_schema

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "support-triage"
SCHEMA_Q = '{"type": "object", "required": ["q"], "properties": {"q": {"type": "string"}}}'
TICKET = "Our API calls have returned 500 since this morning and checkout is down for every customer."


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def variables(**kw: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def resolve_load(stub: prompts_pb2_grpc.PromptsServiceStub, callers: int, seconds: float) -> str:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def caller() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            req = prompts_pb2.ResolvePromptRequest(
                template_id=TEMPLATE,
                label="production",
                tenant_id="acme",
                user_id=f"user-{i}",
                variables=variables(ticket=f"{TICKET} #{i}", product="api", customer_tier="pro"),
            )
            t0 = time.perf_counter()
            await stub.ResolvePrompt(req)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - started
    return (
        f"| {callers} | {len(latencies) / elapsed:,.0f} | {statistics.median(latencies):.2f} | "
        f"{pct(latencies, 0.99):.2f} |"
    )


def render_only(iterations: int = 5000) -> str:
    [f] = [f for f in load_prompt_dir(ROOT / "deploy" / "prompts") if f.template_id == TEMPLATE]
    cfg = PromptsConfig(seed_dir="")
    renderer = Renderer(
        cache_size=64, max_range=cfg.max_range, max_rendered_chars=cfg.max_rendered_chars, encoding=cfg.token_encoding
    )
    schema = parse_schema(f.content.schema_json, cfg.max_schema_chars)
    prefix = renderer.check(f.content, declared_names(schema)).static_prefix_count
    samples = []
    for i in range(iterations):
        t0 = time.perf_counter()
        filled = check_variables(schema, {"ticket": f"{TICKET} #{i}", "product": "api"}, cfg.max_variables_chars)
        renderer.render(f.content, filled, prefix)
        samples.append((time.perf_counter() - t0) * 1000)
    return (
        "render only (schema check + render + token count, in process): "
        f"p50 {statistics.median(samples):.3f} ms, p99 {pct(samples, 0.99):.3f} ms"
    )


async def publish_load(stub: prompts_pb2_grpc.PromptsServiceStub, total: int = 2000, callers: int = 16) -> str:
    await stub.CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id="bench-publish", actor="bench"))
    todo = iter(range(total))

    async def caller() -> None:
        for i in todo:
            await stub.PublishVersion(
                prompts_pb2.PublishVersionRequest(
                    template_id="bench-publish",
                    author="bench",
                    content=prompts_pb2.PromptContent(
                        messages=[
                            prompts_pb2.MessageTemplate(role="system", content=f"Rule number {i}."),
                            prompts_pb2.MessageTemplate(role="user", content="{{ q }}"),
                        ],
                        variables_schema_json=SCHEMA_Q,
                    ),
                )
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - t0
    latest = (
        await stub.GetTemplate(prompts_pb2.GetTemplateRequest(template_id="bench-publish"))
    ).template.latest_version
    return (
        f"publish: {total} distinct versions by {callers} callers in {elapsed:.2f} s = {total / elapsed:,.0f}/s; "
        f"latest version {latest} (gap-free: {latest == total})"
    )


async def ab_split(stub: prompts_pb2_grpc.PromptsServiceStub, users: int = 10_000) -> str:
    v2 = await stub.PublishVersion(
        prompts_pb2.PublishVersionRequest(
            template_id=TEMPLATE,
            author="bench",
            change_note="B arm",
            content=(
                await stub.GetVersion(prompts_pb2.GetVersionRequest(template_id=TEMPLATE, version=1))
            ).version.content,
            example_variables=variables(ticket="x"),
        )
    )
    content = v2.version.content
    if not v2.created:  # identical content is the same version: make the B arm differ
        content.messages[0].content += "\nBe concise."
        v2 = await stub.PublishVersion(
            prompts_pb2.PublishVersionRequest(
                template_id=TEMPLATE, author="bench", change_note="B arm", content=content
            )
        )
    a, b = 1, v2.version.version
    await stub.SetVariants(
        prompts_pb2.SetVariantsRequest(
            template_id=TEMPLATE,
            label="production",
            actor="bench",
            variants=[prompts_pb2.Variant(version=a, weight=90), prompts_pb2.Variant(version=b, weight=10)],
        )
    )

    async def assign(user: int) -> int:
        r = await stub.ResolvePrompt(
            prompts_pb2.ResolvePromptRequest(
                template_id=TEMPLATE, tenant_id="acme", user_id=f"ab-user-{user}", variables=variables(ticket="t")
            )
        )
        return r.version

    first: list[int] = []
    second: list[int] = []
    for out in (first, second):
        for start in range(0, users, 500):
            out += await asyncio.gather(*(assign(u) for u in range(start, min(users, start + 500))))
    counts = collections.Counter(first)
    changed = sum(x != y for x, y in zip(first, second, strict=True))
    share_a, share_b = counts[a] / users, counts[b] / users
    await stub.SetVariants(prompts_pb2.SetVariantsRequest(template_id=TEMPLATE, label="production", actor="bench"))
    return (
        f"A/B 90/10 over {users:,} users: version {a} {share_a:.2%} (error {abs(share_a - 0.9):.2%}), "
        f"version {b} {share_b:.2%} (error {abs(share_b - 0.1):.2%}); changed arm on the second pass: {changed}"
    )


async def run(url: str, seconds: float, callers: list[int]) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")},
        "TOLLWAY_REDIS_URL": url,
        "TOLLWAY_PROMPTS_PORT": str(port),
        "TOLLWAY_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tollway.prompts", env=env, cwd=ROOT)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = prompts_pb2_grpc.PromptsServiceStub(channel)
            for _ in range(300):  # SERVING comes after the seed; the seed's label is what we resolve
                try:
                    await stub.ResolvePrompt(
                        prompts_pb2.ResolvePromptRequest(template_id=TEMPLATE, variables=variables(ticket="warm"))
                    )
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            print(machine())
            print(render_only())
            print("| callers | resolves/s | p50 ms | p99 ms |")
            print("|---|---|---|---|")
            for n in callers:
                await resolve_load(stub, n, 1.0)  # warm-up
                print(await resolve_load(stub, n, seconds))
            print(await publish_load(stub))
            print(await ab_split(stub))
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", default="1,64")
    args = parser.parse_args()
    with local_redis(appendonly=True) as server:
        asyncio.run(run(server.url, args.seconds, [int(c) for c in args.callers.split(",")]))


if __name__ == "__main__":
    main()
