"""What budgets add to a request through Envoy: the same request on a stack with the budget
service and on one without it, in one interleaved run.

    .venv/bin/python bench/budget_overhead.py [--pairs 1500] [--warmup 200] [--layout colocated]
        [--surface native|openai] [--lease-requests N] [--prompt-words N] [--first on|off]

Starts the fake OpenAI upstream (no delay) and two stacks as ``make run`` starts them (Envoy,
gateway, router, openai_compat, cache, embedding; ``on`` adds the budget service with
bench/checkout_stack.py's plan of six quotas nobody reaches, so every request reserves against
every tenant and key counter and commits; ``off`` has no budget service, so the gateway reserves
nothing). Sends pairs of ``POST /v1/complete``, one to each stack, one request at a time, the
order alternating within pairs so drift and warm-up favour neither. Both skip the response
cache, so every request reaches the provider. Prints p50/p90/p99 of each, the difference of the
p50s with its 95 % bootstrap interval over the pairs, the median per-pair difference, the
machine's load (``uptime``) before and after, each process's CPU per request in each stack (from
/proc: what load inflates less than latency) and how the budget admitted (its ledger's entries by
kind: one ``lease`` serves many ``reserve``).
``--prompt-words N`` puts N words before the prompt, for what a long prompt costs.

Which stack starts first matters: two identical stacks measured this way (``bench/stack_ab.py``
with no setting apart) differ by +0.015 to +0.04 ms at p50, the one started first slower. The
budget-on stack starts first unless ``--first off``; a figure to quote is the mean of runs in
both orders.

Never run it on a machine that serves anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Endpoint, alternating_pairs, percentile  # noqa: E402
from bench.overhead import CHAT, MODEL, start_upstream  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher import runfile  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

BODY = {
    "model": MODEL,
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def stack_options(
    run: Path, upstream_port: int, with_budget: bool, layout: str, lease_requests: int | None = None
) -> StackOptions:
    run.mkdir(parents=True, exist_ok=True)
    services, env = bench_services(ROOT, run)
    if lease_requests is not None:
        env = {**env, "TOLLWAY_BUDGET_LEASE_REQUESTS": str(lease_requests)}
    if not with_budget:
        services = tuple(s for s in services if s != "budget")
        env = {}
    assert with_budget == ("budget" in services), "this checkout's gateway does not call the budget service"
    names = ["edge", "admin", "mesh", "redis", *services]
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    return StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run,
        catalog=catalog,
        with_model=False,
        services=services,
        env={"TOLLWAY_LOG_LEVEL": "WARNING", **env},
        layout=layout,  # type: ignore[arg-type]
    )


def with_prompt_words(body: dict, words: int) -> dict:
    """``body`` with ``words`` more words before its user message (a longer prompt to count)."""
    if not words:
        return body
    text = " ".join(f"word{i % 97}" for i in range(words))
    messages = [{**m, "content": f"{text}\n{m['content']}"} for m in body["messages"]]
    return {**body, "messages": messages}


def endpoint(label: str, stack: Stack, surface: str, prompt_words: int = 0) -> Endpoint:
    """A new API key on ``stack`` and the request the bench sends it through Envoy: ``POST
    /v1/complete`` (native) or ``/v1/chat/completions`` (openai), the response cache bypassed;
    ``prompt_words`` lengthens its prompt."""
    key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
    edge = stack.mesh.edge.listen
    headers = (("authorization", f"Bearer {key}"),)
    if surface == "openai":
        openai = (*headers, ("x-tollway-cache-mode", "bypass"))
        chat = with_prompt_words(CHAT, prompt_words)
        return Endpoint(label, edge.host, edge.port, "/v1/chat/completions", chat, openai, ok_marker=b'"choices"')
    body = with_prompt_words(BODY, prompt_words)
    return Endpoint(label, edge.host, edge.port, "/v1/complete", body, headers, ok_marker=b'"text"')


async def interleaved(on: Endpoint, off: Endpoint, pairs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per request of each stack, alternating which goes first, one request at a time."""
    out: dict[str, list[float]] = {"on": [], "off": [], "diff": []}
    for (t_on, _), (t_off, _) in await alternating_pairs(on, off, pairs, warmup):
        out["on"].append(t_on)
        out["off"].append(t_off)
        out["diff"].append(t_on - t_off)
    return out


def report(results: dict[str, list[float]], layout: str, before: str, after: str) -> str:
    lines = [
        f"layout {layout}; {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"uptime before: {before}",
        f"uptime after:  {after}",
        "",
        "| stack | n | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (("off", "budget off"), ("on", "budget on")):
        v = results[name]
        lines.append(
            f"| {label} | {len(v)} | {percentile(v, 50) * 1e3:.2f} | {percentile(v, 90) * 1e3:.2f} "
            f"| {percentile(v, 99) * 1e3:.2f} |"
        )
    off_p50 = percentile(results["off"], 50) * 1e3
    added = percentile(results["on"], 50) * 1e3 - off_p50
    diff = results["diff"]
    low, high = added_interval(results["on"], results["off"])
    lines += [
        "",
        f"budgets add {added:.2f} ms at p50 (difference of the p50s; {added / off_p50:.0%} of the budget-off p50, "
        "a share the machine's speed moves less than the milliseconds); median per-pair difference "
        f"{statistics.median(diff) * 1e3:.2f} ms, p90 per-pair difference {percentile(diff, 90) * 1e3:.2f} ms",
        f"95 % interval of what budgets add at p50 (bootstrap over the pairs): {low:.2f} to {high:.2f} ms",
    ]
    return "\n".join(lines)


def added_interval(on: list[float], off: list[float], rounds: int = 1000) -> tuple[float, float]:
    """The 95 % bootstrap interval (ms) of p50(on) - p50(off): pairs drawn again with replacement,
    both members together, so the drift they shared stays shared. How far one run's figure may
    sit from the machine's own, at this sample size."""
    rng = random.Random(13)
    n = len(on)
    added = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        added.append((percentile([on[i] for i in picks], 50) - percentile([off[i] for i in picks], 50)) * 1e3)
    added.sort()
    return added[int(rounds * 0.025)], added[int(rounds * 0.975) - 1]


def process_cpu(run_dir: Path) -> dict[str, float]:
    """User + system CPU seconds of each process of a stack so far, by name."""
    out: dict[str, float] = {}
    for child in (runfile.read_status(run_dir) or {}).get("children", []):
        try:
            fields = Path(f"/proc/{child['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[child["name"]] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_report(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], n: int) -> str:
    """CPU per request of each process of each stack (µs): what the machine's load cannot inflate
    as much as it inflates latency."""
    names = sorted({name for label in ("on", "off") for name in after[label]})
    lines = ["", "| CPU µs per request | " + " | ".join(names) + " | sum |", "|---|" + "---:|" * (len(names) + 1)]
    for label in ("off", "on"):
        per = {k: (after[label].get(k, 0.0) - before[label].get(k, 0.0)) / n * 1e6 for k in names}
        cells = " | ".join(f"{per[k]:.0f}" for k in names)
        lines.append(f"| budget {label} | {cells} | {sum(per.values()):.0f} |")
    return "\n".join(lines)


def ledger_summary(redis_url: str) -> str:
    """How the budget admitted: ledger entries per kind (a ``lease`` serves many ``reserve``)."""
    client = redis.Redis.from_url(redis_url)
    kinds: collections.Counter[str] = collections.Counter()
    for key in client.scan_iter(match="tw:budget:*:ledger"):
        for _, fields in client.xrange(key):
            kinds[fields[b"op"].decode()] += 1
    return "budget ledger entries: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--layout", choices=("colocated", "split"), default="colocated")
    parser.add_argument(
        "--prompt-words", type=int, default=0, help="words added to the prompt (a long prompt costs its counting)"
    )
    parser.add_argument(
        "--lease-requests",
        type=int,
        default=None,
        help="TOLLWAY_BUDGET_LEASE_REQUESTS of the budget-on stack (default: the layout's; 0: every reserve in Redis)",
    )
    parser.add_argument(
        "--surface",
        choices=("native", "openai"),
        default="native",
        help="POST /v1/complete (gRPC transcoded by Envoy) or /v1/chat/completions (the OpenAI surface)",
    )
    parser.add_argument(
        "--first",
        choices=("on", "off"),
        default="on",
        help="which stack starts first (the one started first has run slower by a few hundredths of a ms)",
    )
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="bench-budget-overhead-"))
    upstream, upstream_port = start_upstream(run)
    try:
        on_stack = Stack(stack_options(run / "on", upstream_port, True, args.layout, args.lease_requests))
        off_stack = Stack(stack_options(run / "off", upstream_port, False, args.layout))
        first, second = (on_stack, off_stack) if args.first == "on" else (off_stack, on_stack)
        with first, second:
            on, off = on_stack, off_stack
            words = args.prompt_words
            endpoints = [endpoint("on", on, args.surface, words), endpoint("off", off, args.surface, words)]
            before = uptime()
            cpu_before = {label: process_cpu(run / label) for label in ("on", "off")}
            results = uvloop.run(interleaved(endpoints[0], endpoints[1], args.pairs, args.warmup))
            cpu_after = {label: process_cpu(run / label) for label in ("on", "off")}
            leases = "default" if args.lease_requests is None else args.lease_requests
            print(f"surface {args.surface}, lease requests {leases}, prompt words added {words}")
            print(report(results, args.layout, before, uptime()))
            print(cpu_report(cpu_before, cpu_after, args.pairs + args.warmup))
            print(ledger_summary(on.redis_url))
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
