"""What a ``prompt_ref`` adds to a request through Envoy: the same request with its messages
written out, and with them named by a prompt_ref, in one interleaved run.

    .venv/bin/python bench/prompt_ref.py [--pairs 2000] [--warmup 200] [--layout colocated] [--colocate-prompts]

Starts, on free loopback ports, the fake OpenAI upstream (no delay) and the stack as ``make run``
starts it (Envoy, gateway, router, openai_compat, cache, embedding, budget, and prompts as its own
process), publishes one template, then sends pairs of ``POST /v1/complete`` on two keep-alive
connections: ``plain`` carries the rendered messages itself, ``prompt_ref`` names the template
with two variables (label ``production``: the label's Redis read, the schema check, the sandboxed
render and the token count all happen). The provider receives byte-identical requests. Both skip
the response cache (``CACHE_MODE_BYPASS``) so every request reaches the provider: the difference
is the prompt store's round trip, the render, and the gateway's work around them. The order
within a pair alternates so drift and warm-up favour neither. Prints p50/p90/p99 of each, the
median of the per-pair differences, and the machine's load (``uptime``).

``--colocate-prompts`` runs the prompts service inside the gateway's process group (a copy of
mesh.yaml with ``prompts`` added to the group holding the gateway): the gateway then calls it
in-process, with no socket and no serialisation, which is what the hop itself costs.

Never run it on a machine that serves anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Endpoint, alternating_pairs, percentile  # noqa: E402
from bench.overhead import MODEL, start_upstream  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc  # noqa: E402

SYSTEM = (
    "You sort customer support tickets into a queue (billing, technical, account or other) with a "
    "priority (low, normal or urgent), and answer with one short sentence."
)
USER = "Product area: {{ product }}. Ticket: {{ ticket }}"
VARIABLES = {"product": "api", "ticket": "Our API calls have returned 500 since this morning."}
SCHEMA = {
    "type": "object",
    "required": ["ticket"],
    "properties": {"ticket": {"type": "string", "maxLength": 8000}, "product": {"type": "string"}},
}


def uptime() -> str:
    """``uptime``'s line (the load averages the figure was taken under)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def publish(address: str) -> str:
    """Publishes the bench template on ``production``; returns its id."""
    template = f"bench-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(address) as channel:
        stub = prompts_pb2_grpc.PromptsServiceStub(channel)
        stub.CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id=template, description="bench", actor="b"))
        content = prompts_pb2.PromptContent(
            messages=[
                prompts_pb2.MessageTemplate(role="system", content=SYSTEM),
                prompts_pb2.MessageTemplate(role="user", content=USER),
            ],
            variables_schema_json=json.dumps(SCHEMA),
        )
        version = stub.PublishVersion(
            prompts_pb2.PublishVersionRequest(template_id=template, content=content, author="bench"), timeout=10
        ).version.version
        stub.SetLabel(prompts_pb2.SetLabelRequest(template_id=template, label="production", version=version, actor="b"))
    return template


def mesh_with_prompts_colocated(run: Path) -> Path:
    """A copy of deploy/mesh.yaml whose gateway process group also runs the prompts service."""
    import yaml

    doc = yaml.safe_load((ROOT / "deploy" / "mesh.yaml").read_text())
    group = next(name for name, members in doc["processes"].items() if "gateway" in members)
    doc["processes"][group].append("prompts")
    # The copy lives elsewhere: its relative paths must still point at this checkout.
    doc["edge"]["descriptor_set"] = str((ROOT / "deploy" / doc["edge"]["descriptor_set"]).resolve())
    path = run / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def endpoints(host: str, port: int, key: str, template: str) -> tuple[Endpoint, Endpoint]:
    common = {"model": MODEL, "max_tokens": 32, "cache_policy": {"mode": "CACHE_MODE_BYPASS"}}
    rendered = USER.replace("{{ product }}", VARIABLES["product"]).replace("{{ ticket }}", VARIABLES["ticket"])
    plain = {**common, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": rendered}]}
    named = {**common, "prompt_ref": {"template": template, "variables": VARIABLES}}
    headers = (("authorization", f"Bearer {key}"),)
    return (
        Endpoint("plain", host, port, "/v1/complete", plain, headers, ok_marker=b'"text"'),
        Endpoint("prompt_ref", host, port, "/v1/complete", named, headers, ok_marker=template.encode()),
    )


async def interleaved(plain: Endpoint, named: Endpoint, pairs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per request of each endpoint, sent in alternating order, one request at a time."""
    out: dict[str, list[float]] = {"plain": [], "prompt_ref": [], "diff": []}
    for (t_plain, _), (t_named, _) in await alternating_pairs(plain, named, pairs, warmup):
        out["plain"].append(t_plain)
        out["prompt_ref"].append(t_named)
        out["diff"].append(t_named - t_plain)
    return out


def report(results: dict[str, list[float]], layout: str, load_before: str, load_after: str) -> str:
    lines = [
        f"layout {layout}; {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"uptime before: {load_before}",
        f"uptime after:  {load_after}",
        "",
        "| request | n | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("plain", "prompt_ref"):
        v = results[name]
        lines.append(
            f"| {name} | {len(v)} | {percentile(v, 50) * 1e3:.2f} | {percentile(v, 90) * 1e3:.2f} "
            f"| {percentile(v, 99) * 1e3:.2f} |"
        )
    added = (percentile(results["prompt_ref"], 50) - percentile(results["plain"], 50)) * 1e3
    diff = results["diff"]
    lines += [
        "",
        f"prompt_ref adds {added:.2f} ms at p50 (difference of the p50s); "
        f"median per-pair difference {statistics.median(diff) * 1e3:.2f} ms, "
        f"p90 per-pair difference {percentile(diff, 90) * 1e3:.2f} ms",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--layout", choices=("colocated", "split"), default="colocated")
    parser.add_argument("--colocate-prompts", action="store_true", help="run prompts in the gateway's process")
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="bench-prompt-ref-"))
    upstream, upstream_port = start_upstream(run)
    try:
        services, env = bench_services(ROOT, run)
        services = (*services, "prompts")
        names = ["edge", "admin", "mesh", "redis", *services]
        catalog = run / "models.yaml"
        catalog.write_text(
            f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
            f"models:\n  {MODEL}: {{provider: upstream}}\n"
        )
        mesh = mesh_with_prompts_colocated(run) if args.colocate_prompts else ROOT / "deploy" / "mesh.yaml"
        options = StackOptions(
            mesh_path=mesh,
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", **env},
            layout=args.layout,
        )
        with Stack(options) as stack:
            key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
            template = publish(stack.address("prompts"))
            edge = stack.mesh.edge.listen
            plain, named = endpoints(edge.host, edge.port, key, template)
            before = uptime()
            results = uvloop.run(interleaved(plain, named, args.pairs, args.warmup))
            layout = args.layout + (", prompts in the gateway's process" if args.colocate_prompts else "")
            print(report(results, layout, before, uptime()))
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
