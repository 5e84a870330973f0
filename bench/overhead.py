"""What the Tollway path (Envoy -> gateway -> router) adds over calling the upstream directly,
side by side with LiteLLM proxy against the same zero-delay upstream, in one run.

    .venv/bin/python bench/overhead.py [--repeats 2] [--quick] [--baseline ../before]

Starts everything it measures on free loopback ports and stops it at the end:
- the upstream: tests/fakes/openai.py (OpenAI wire format, no delay, 20 content chunks);
- Tollway: Redis, router, gateway, openai_compat and Envoy (the launcher, as `make run`);
- LiteLLM proxy from its own virtualenv `peers/litellm-venv` (git-ignored, never a project
  dependency): `python3 -m venv peers/litellm-venv && peers/litellm-venv/bin/pip install 'litellm[proxy]'`.
  Skipped with a note when that venv is absent.
- with `--baseline CHECKOUT`: a second Tollway stack from another checkout (`bench/checkout_stack.py`),
  measured as "before" in the same run, so a change's cost is read off one table.
Targets and metrics are interleaved and rotated per repeat so drift hits all alike. Prints a
markdown table of absolute figures and of overhead over the direct upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Endpoint, closed_loop, sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_port, free_ports, spawn, wait_until  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

MODEL = "fake-words-20"
LITELLM = ROOT / "peers" / "litellm-venv" / "bin" / "litellm"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}], "max_tokens": 32}
# The path's own cost is measured with the response cache skipped; exact hits are measured apart.
NO_CACHE = {**CHAT, "cache_policy": {"mode": "CACHE_MODE_BYPASS"}}


def _ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return r.status == 200


def start_upstream(run: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"LISTENING")
    return proc, port


def bench_stack(run: Path, upstream_port: int) -> Stack:
    """The stack as `make run` starts it, with the fake upstream as its only model (not started yet);
    with the budget service when this checkout's gateway calls it."""
    services, env = bench_services(ROOT, run)
    names = ["edge", "admin", "mesh", "redis", *services]
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    return Stack(
        StackOptions(
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", **env},
        )
    )


def package_parent(checkout: Path, run: Path) -> Path:
    """A directory that holds the ``tollway`` package of ``checkout`` (whichever layout it has)."""
    if (checkout / "services" / "tollway" / "__init__.py").exists():
        return checkout / "services"
    # Before the src layout, services/ itself was the package.
    shim = run / "baseline-path"
    shim.mkdir(exist_ok=True)
    (shim / "tollway").symlink_to(checkout / "services")
    return shim


def start_baseline(checkout: Path, run: Path, upstream: int) -> tuple[subprocess.Popen[str], dict[str, str | int]]:
    """The bench stack of another checkout (its own code in every process), on its own ports."""
    checkout = checkout.resolve()
    parent = package_parent(checkout, run)
    env = {**os.environ, "PYTHONPATH": str(parent), "PY": sys.executable}
    if not (parent / "tollway" / "gateway" / "v1").exists():
        subprocess.run([str(checkout / "scripts" / "gen_protos.sh")], cwd=checkout, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "checkout_stack.py"), "--upstream-port", str(upstream),
         "--run-dir", str(run / "baseline")],
        cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"the baseline stack of {checkout} did not start; see {run / 'baseline'}")
    return proc, json.loads(line)


def start_litellm(run: Path, upstream: int) -> tuple[object, int, str] | None:
    if not LITELLM.exists():
        print(f"LiteLLM not installed at {LITELLM}: skipping it (see this file's docstring)", file=sys.stderr)
        return None
    port, key = free_port(), "sk-" + secrets.token_hex(16)
    config = run / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-unused
litellm_settings:
  telemetry: false
  cache: false
  set_verbose: false
  drop_params: true
  request_timeout: 60
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""
    )
    # Offline: LiteLLM would otherwise fetch its price map and other files at import.
    env = {
        k: "True"
        for k in (
            "LITELLM_LOCAL_MODEL_COST_MAP",
            "LITELLM_LOCAL_BLOG_POSTS",
            "LITELLM_LOCAL_POLICY_TEMPLATES",
            "LITELLM_LOCAL_AUTOROUTER_PRESETS",
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
        )
    }
    env |= {"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION", "LITELLM_MASTER_KEY": key}
    child = spawn(
        "litellm",
        [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        run / "logs",
        env,
    )
    wait_until(child, lambda: _ok(f"http://127.0.0.1:{port}/health/liveliness"), 120, "live")
    return child, port, key


def tollway_endpoints(label: str, host: str, port: int, key: str, *, exact_hits: bool) -> dict[str, dict]:
    """The Tollway targets of one stack: the native path, the OpenAI path and (optionally) exact hits."""
    auth = (("authorization", f"Bearer {key}"),)
    openai_auth = (*auth, ("x-tollway-cache-mode", "bypass"))
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    out = {
        label: {
            "json": Endpoint(label, host, port, "/v1/complete", NO_CACHE, auth, ok_marker=b"w19"),
            "stream": Endpoint(
                label, host, port, "/v1/generate", NO_CACHE, auth, first_text_marker=b"w0 ", ok_marker=b'"completed"'
            ),
        },
        f"{label}-openai": {
            "json": Endpoint(
                f"{label}-openai", host, port, "/v1/chat/completions", CHAT, openai_auth, ok_marker=b"w19"
            ),
            "stream": Endpoint(
                f"{label}-openai",
                host,
                port,
                "/v1/chat/completions",
                stream,
                openai_auth,
                first_text_marker=b"w0 ",
                ok_marker=b"[DONE]",
            ),
        },
    }
    if exact_hits:
        # The same request again and again: after the first, every one is a tier-1 hit.
        out[f"{label}-exact-hit"] = {
            "json": Endpoint(f"{label}-exact-hit", host, port, "/v1/complete", CHAT, auth, ok_marker=b"w19"),
            "stream": Endpoint(
                f"{label}-exact-hit",
                host,
                port,
                "/v1/generate",
                CHAT,
                auth,
                first_text_marker=b"w0 ",
                ok_marker=b'"completed"',
            ),
        }
    return out


def endpoints(
    upstream: int,
    stack: Stack,
    key: str,
    litellm: tuple[object, int, str] | None,
    baseline: dict[str, str | int] | None = None,
    exact_hits: bool = True,
) -> dict[str, dict]:
    edge = stack.mesh.edge.listen
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    out = {
        "direct": {
            "json": Endpoint("direct", "127.0.0.1", upstream, "/v1/chat/completions", CHAT, ok_marker=b"w19"),
            "stream": Endpoint(
                "direct",
                "127.0.0.1",
                upstream,
                "/v1/chat/completions",
                stream,
                first_text_marker=b"w0 ",
                ok_marker=b"[DONE]",
            ),
        },
        **tollway_endpoints("tollway", edge.host, edge.port, key, exact_hits=exact_hits),
    }
    if baseline is not None:
        out |= tollway_endpoints(
            "before", str(baseline["host"]), int(baseline["port"]), str(baseline["key"]), exact_hits=False
        )
    if litellm is not None:
        _, port, lkey = litellm
        lauth = (("authorization", f"Bearer {lkey}"),)
        out["litellm"] = {
            "json": Endpoint("litellm", "127.0.0.1", port, "/v1/chat/completions", CHAT, lauth, ok_marker=b"w19"),
            "stream": Endpoint(
                "litellm",
                "127.0.0.1",
                port,
                "/v1/chat/completions",
                stream,
                lauth,
                first_text_marker=b"w0 ",
                ok_marker=b"[DONE]",
            ),
        }
    return out


async def measure(targets: dict[str, dict], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
    names = list(targets)

    def add(name: str, metric: str, value: float) -> None:
        results[name].setdefault(metric, []).append(value)

    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            r = await sequential(targets[name]["json"], args.n, args.warmup)
            add(name, "seq_p50_ms", r["p50_ms"])
            add(name, "seq_p99_ms", r["p99_ms"])
        for name in order:
            r = await sequential(targets[name]["stream"], args.stream_n, args.warmup // 5)
            add(name, "ttft_p50_ms", r["ttft_p50_ms"])
            add(name, "ttft_p99_ms", r["ttft_p99_ms"])
            add(name, "stream_total_p50_ms", r["p50_ms"])
        for conc in args.conc:
            for name in order:
                r = await closed_loop(targets[name]["json"], conc, args.duration, args.max_requests)
                add(name, f"rps_c{conc}", r["rps"])
                add(name, f"errors_c{conc}", r["errors"])
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    metrics = list(next(iter(results.values())))
    names = list(results)
    rng = lambda v: f"{min(v):.2f}" if len(v) == 1 else f"{min(v):.2f}-{max(v):.2f}"  # noqa: E731
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(rng(results[n][m]) for n in names) + " |")
    lines += [
        "",
        "Added over the direct upstream (per repeat, min-max):",
        "",
        "| metric | " + " | ".join(names[1:]) + " |",
        "|---|" + "---|" * (len(names) - 1),
    ]
    for m in metrics:
        if not m.endswith("_ms"):
            continue
        cells = []
        for n in names[1:]:
            deltas = [a - b for a, b in zip(results[n][m], results["direct"][m], strict=True)]
            cells.append(rng(deltas))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-n", type=int, default=1000, help="sequential non-streamed requests per target")
    parser.add_argument("--stream-n", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--conc", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="small counts, to check the bench itself")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add ../before <ref>`), measured in the same run as 'before'",
    )
    parser.add_argument("--no-exact-hits", action="store_true", help="skip the tier-1 hit targets")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.n, args.stream_n, args.warmup, args.duration = 1, 100, 30, 20, 2.0
    run = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    upstream, port = start_upstream(run)
    stack = bench_stack(run, port)
    litellm = None
    baseline: tuple[subprocess.Popen[str], dict[str, str | int]] | None = None
    try:
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        litellm = None if args.no_litellm else start_litellm(run, port)
        baseline = start_baseline(args.baseline, run, port) if args.baseline else None
        targets = endpoints(
            port, stack, key, litellm, baseline[1] if baseline else None, exact_hits=not args.no_exact_hits
        )
        started = time.time()
        results = uvloop.run(measure(targets, args))
        print(
            f"\nmachine: {os.cpu_count()} cores; run took {time.time() - started:.0f}s; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        )
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if baseline is not None:
            baseline[0].communicate("")  # closing its stdin stops that stack
        if litellm is not None:
            litellm[0].stop()  # type: ignore[attr-defined]
        stack.stop()
        upstream.kill()


if __name__ == "__main__":
    main()
