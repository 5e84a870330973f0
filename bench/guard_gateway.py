"""What the guards cost a request through Envoy: the same request under three guard policies in one
interleaved run, and the time to first delta with the output guard on and off.

    .venv/bin/python bench/guard_gateway.py [--rounds 300] [--warmup 30] [--layout colocated]

Starts the stack as ``make run`` starts it with the fake OpenAI upstream, and a guard policy file made
from ``deploy/guard.yaml`` plus three tenants, one key each:

- ``off``: every PII type allowed, injection off, no size limits, output guard off;
- ``input``: the defaults on the input (PII scan and redaction, injection scoring, limits), output off;
- ``full``: the defaults, output guard included.

Each round sends one ``POST /v1/generate`` per tenant (order rotating) on keep-alive connections, with
a 60-word support question carrying no PII, so the guards scan and pass. Three upstream scenarios:
``fake-words-20`` (20 words at once); ``fake-prose-gap-20`` (31 words of prose, one chunk per word with
its leading space, 20 ms apart: the output guard holds the last word of what it has until the next chunk
shows it complete); ``fake-gap-20-words-20`` (chunks "tick0 ", "tick1 ", ... 20 ms apart: every token
holds a digit and may continue a number, the guard's worst case, held up to its look-behind). The
response cache is bypassed. Prints p50/p90 of the whole request and of the time to the first delta per tenant and
scenario, and the machine's load before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from pathlib import Path

import uvloop
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Connection, Endpoint, percentile  # noqa: E402
from bench.overhead import start_upstream  # noqa: E402
from bench.prompt_ref import uptime  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

TENANTS = ("off", "input", "full")
SCENARIOS = ("fake-words-20", "fake-prose-gap-20", "fake-gap-20-words-20")
QUESTION = (
    "Our team moved to the annual plan last week and the invoice still shows the monthly price. "
    "Could you explain how the proration works when a plan changes in the middle of a billing period, "
    "whether the difference is refunded to the original payment method or kept as account credit, "
    "and how long it usually takes before the corrected invoice appears in the billing dashboard?"
)
ALLOW_ALL = {t: "allow" for t in ("email", "phone", "card", "iban", "national_id", "secret")}


def policy_file(run: Path) -> Path:
    doc = yaml.safe_load((ROOT / "deploy" / "guard.yaml").read_text())
    doc["tenants"] = {
        "bench-off": {
            "pii": ALLOW_ALL,
            "injection": {"enabled": False},
            "limits": {"max_input_chars": 0, "max_message_chars": 0, "max_messages": 0},
            "output": {"enabled": False},
        },
        "bench-input": {"output": {"enabled": False}},
        "bench-full": {},
    }
    path = run / "guard.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def rounds(endpoints: dict[str, Endpoint], n: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    conns = {name: Connection(ep) for name, ep in endpoints.items()}
    for c in conns.values():
        await c.open()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in endpoints}
    names = list(endpoints)
    try:
        for i in range(warmup + n):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                total, first = await conns[name].send()
                if i >= warmup:
                    out[name].append((total, first if first is not None else total))
    finally:
        for c in conns.values():
            await c.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--layout", choices=("colocated", "split"), default="colocated")
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="bench-guard-gateway-"))
    upstream, upstream_port = start_upstream(run)
    try:
        services, env = bench_services(ROOT, run)
        names = ["edge", "admin", "mesh", "redis", *services]
        catalog = run / "models.yaml"
        catalog.write_text(
            f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
            "models:\n" + "".join(f"  {m}: {{provider: upstream}}\n" for m in SCENARIOS)
        )
        options = StackOptions(
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_GATEWAY_GUARD_POLICY": str(policy_file(run)), **env},
            layout=args.layout,
        )
        with Stack(options) as stack:
            keys = {t: asyncio.run(_create_key(stack.redis_url, f"bench-{t}"))[0] for t in TENANTS}
            edge = stack.mesh.edge.listen
            before = uptime()
            lines = [
                f"layout {args.layout}; {os.cpu_count()} CPUs, Python {platform.python_version()}",
                f"uptime before: {before}",
                "",
                "| upstream | guards | n | p50 ms | p90 ms | first delta p50 ms | first delta p90 ms |",
                "|---|---|---:|---:|---:|---:|---:|",
            ]
            for scenario in SCENARIOS:
                body = {
                    "model": scenario,
                    "max_tokens": 64,
                    "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
                    "messages": [{"role": "user", "content": QUESTION}],
                }
                endpoints = {
                    t: Endpoint(
                        t,
                        edge.host,
                        edge.port,
                        "/v1/generate",
                        body,
                        (("authorization", f"Bearer {keys[t]}"),),
                        first_text_marker=b'"delta"',
                        ok_marker=b"completed",
                    )
                    for t in TENANTS
                }
                results = uvloop.run(rounds(endpoints, args.rounds, args.warmup))
                for t in TENANTS:
                    totals = [a for a, _ in results[t]]
                    firsts = [b for _, b in results[t]]
                    lines.append(
                        f"| {scenario} | {t} | {len(totals)} | {percentile(totals, 50) * 1e3:.2f} "
                        f"| {percentile(totals, 90) * 1e3:.2f} | {percentile(firsts, 50) * 1e3:.2f} "
                        f"| {percentile(firsts, 90) * 1e3:.2f} |"
                    )
            lines.append(f"\nuptime after: {uptime()}")
            print("\n".join(lines))
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
