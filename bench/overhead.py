"""What the Tollway path (Envoy -> gateway -> router) adds over calling the upstream directly,
side by side with LiteLLM proxy and the Portkey gateway against the same zero-delay upstream, in one run.

    .venv/bin/python bench/overhead.py [--repeats 2] [--quick] [--layouts colocated,split,colocated2]
                                       [--baseline ../before]

Starts everything it measures on free loopback ports and stops it at the end:
- the upstream: tests/fakes/openai.py (OpenAI wire format, no delay, 20 content chunks);
- Tollway: Redis, router, gateway, openai_compat, cache, embedding, budget and Envoy (the launcher, as
  `make run`), once per layout: `tollway` is the co-located layout (mesh.yaml's process groups:
  gateway, router, cache, budget and openai_compat in one process, `make run`'s), `tollway-split`
  one process per service, `tollway-2core` the co-located group as two processes (`colocated2`);
- the Portkey gateway (one Node process) from `peers/portkey` (git-ignored, never a project
  dependency): `npm install --prefix peers/portkey @portkey-ai/gateway@1.15.2`. It runs offline with
  two preloads of ours in bench/peer_preloads/ (loopback only; mutable fetch headers, without which its
  streamed answers are HTTP 500 on Node 20). Skipped with a note when absent;
- LiteLLM proxy from its own virtualenv `peers/litellm-venv` (git-ignored, never a project
  dependency): `python3 -m venv peers/litellm-venv && peers/litellm-venv/bin/pip install 'litellm[proxy]'`.
  Skipped with a note when that venv is absent.
- with `--baseline CHECKOUT`: a second Tollway stack from another checkout (`bench/checkout_stack.py`),
  measured as "before" in the same run, so a change's cost is read off one table.
Sequential latency and time to first token are taken per target in blocks of back-to-back
requests, the targets rotated per repeat; throughput runs likewise. With `--rounds` they are taken
in rounds instead, one request to each target in turn (the order rotated every round), so this
machine's drift, which moves a target's p50 by up to 2 ms between minutes, hits every target
alike, and `seq_paired_added_p50_ms` is the median of each round's difference from the direct
upstream. The two measure different regimes: in blocks every process is busy back to back; in
rounds each idles while the others answer (the more targets, the longer), and the peers do not
slow alike when idle (docs/benchmarks.md, issue 12, eleventh pass). Prints a markdown table of
absolute figures and of overhead over the direct upstream.

The API surfaces of issue 16 are targets of the same run: `tollway-anthropic` (`/v1/messages`) and
`tollway-responses` (`/v1/responses`) beside `tollway` (native `/v1/complete`, `/v1/generate`) and
`tollway-openai`; then (unless `--no-embeddings`) the embeddings call: sequential p50/p99 of the
native `/v1/embed` and OpenAI's `/v1/embeddings`, and `/v1/embeddings` throughput at 1, 16 and 64
callers (one short text, so after the first call it is an embedding-cache hit: the path, not ONNX).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Endpoint, closed_loop, percentile, round_robin, sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import Child, free_port, free_ports, spawn, wait_until  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

MODEL = "fake-words-20"
LITELLM = ROOT / "peers" / "litellm-venv" / "bin" / "litellm"
PORTKEY = ROOT / "peers" / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
PRELOADS = tuple(ROOT / "bench" / "peer_preloads" / f for f in ("loopback_only.mjs", "mutable_fetch_headers.mjs"))
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


# Each layout a run can start, and its label in the tables.
LAYOUT_LABELS = {"colocated": "tollway", "split": "tollway-split", "colocated2": "tollway-2core"}


def bench_stack(run: Path, upstream_port: int, layout: str = "colocated") -> Stack:
    """The stack as `make run` starts it, with the fake upstream as its only model (not started yet);
    with the budget service when this checkout's gateway calls it.

    Args:
        run: Its run dir (logs, Redis data).
        upstream_port: The fake upstream's port.
        layout: `colocated` (mesh.yaml's process groups, as `make run`), `split`, or `colocated2`:
            the co-located group run as two processes (every member given ``replicas: 2``; Envoy
            balances over the two).
    """
    run.mkdir(parents=True, exist_ok=True)
    services, env = bench_services(ROOT, run)
    names = ["edge", "admin", "mesh", "redis", *services]
    extra: dict[str, Any] = {}
    if layout == "colocated2":
        from tests.support.small_stack import mesh_with_replicas
        from tollway.mesh.topology import load_mesh

        core = [m for g in load_mesh(ROOT / "deploy" / "mesh.yaml").processes for m in g.services if m in services]
        extra["mesh_path"] = mesh_with_replicas(run, dict.fromkeys(core, 2))
        names += [f"{m}.1" for m in core]  # the second instance's ports, free ones too
        layout = "colocated"
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
            # Embeddings are budgeted as the one model (the bench catalog has no last-resort model).
            env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_GATEWAY_EMBEDDING_BUDGET_MODEL": MODEL, **env},
            layout=layout,  # type: ignore[arg-type]
            **extra,
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


def start_baseline(
    checkout: Path, run: Path, upstream: int, layout: str | None = None
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The bench stack of another checkout (its own code in every process), on its own ports:
    its address, key and the pid of each process (``layout``: that checkout's default when None)."""
    checkout = checkout.resolve()
    parent = package_parent(checkout, run)
    env = {**os.environ, "PYTHONPATH": str(parent), "PY": sys.executable}
    if not (parent / "tollway" / "gateway" / "v1").exists():
        subprocess.run([str(checkout / "scripts" / "gen_protos.sh")], cwd=checkout, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "checkout_stack.py"), "--upstream-port", str(upstream),
         "--run-dir", str(run / "baseline"), *(["--layout", layout] if layout else [])],
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


def start_portkey(run: Path, upstream: int) -> tuple[Child, int] | None:
    """The Portkey gateway (Node), loopback only, with our preloads; None when not installed."""
    node = shutil.which("node")
    if not PORTKEY.exists() or node is None:
        print(f"Portkey not installed at {PORTKEY} (or no node): skipping it (see the docstring)", file=sys.stderr)
        return None
    port = free_port()
    argv = [node, *(f"--import={p}" for p in PRELOADS), str(PORTKEY), f"--port={port}", "--headless"]
    child = spawn("portkey", argv, run / "logs", {"NODE_ENV": "production"}, cwd=PORTKEY.parent)
    # Any answer means it listens (its root path has no health route of its own).
    wait_until(child, lambda: _answers(port), 60, "listening")
    return child, port


def _answers(port: int) -> bool:
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
    return True


def portkey_headers(upstream: int) -> tuple[tuple[str, str], ...]:
    """How Portkey is told where to send a request (it routes by headers, not by a config file)."""
    return (
        ("x-portkey-provider", "openai"),
        ("x-portkey-custom-host", f"http://127.0.0.1:{upstream}/v1"),
        ("authorization", "Bearer sk-unused"),
    )


def rss_mib(pids: list[int]) -> float:
    """The summed resident set size of ``pids`` (MiB), from /proc."""
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


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
    if label == "tollway":
        # The other API surfaces of the same process (issue 16).
        out |= surface_endpoints(label, host, port, key)
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


def surface_endpoints(label: str, host: str, port: int, key: str) -> dict[str, dict]:
    """Anthropic Messages and OpenAI Responses through the same stack, the same answer as CHAT."""
    anthropic_auth = (("x-api-key", key), ("anthropic-version", "2023-06-01"), ("x-tollway-cache-mode", "bypass"))
    openai_auth = (("authorization", f"Bearer {key}"), ("x-tollway-cache-mode", "bypass"))
    messages = {"model": MODEL, "messages": CHAT["messages"], "max_tokens": CHAT["max_tokens"]}
    responses = {"model": MODEL, "input": CHAT["messages"][0]["content"], "max_output_tokens": CHAT["max_tokens"]}
    out: dict[str, dict] = {}
    for name, path, body, auth, done in (
        ("anthropic", "/v1/messages", messages, anthropic_auth, b"message_stop"),
        ("responses", "/v1/responses", responses, openai_auth, b"response.completed"),
    ):
        target = f"{label}-{name}"
        out[target] = {
            "json": Endpoint(target, host, port, path, body, auth, ok_marker=b"w19"),
            "stream": Endpoint(
                target, host, port, path, {**body, "stream": True}, auth, first_text_marker=b"w0 ", ok_marker=done
            ),
        }
    return out


EMBED_MODEL = "minilm-l6-v2-int8"
EMBED_TEXT = "What does Tollway add to an embeddings call?"


async def measure_embeddings(host: str, port: int, key: str, args: argparse.Namespace) -> str:
    """The embeddings call through the stack: native `/v1/embed` and OpenAI `/v1/embeddings`
    (sequential p50/p99, alternated per repeat), then `/v1/embeddings` throughput at 1, 16, 64 callers."""
    auth = (("authorization", f"Bearer {key}"),)
    native = Endpoint(
        "embed-native",
        host,
        port,
        "/v1/embed",
        {"model": EMBED_MODEL, "inputs": [EMBED_TEXT]},
        auth,
        ok_marker=b'"dimensions"',
    )
    body = {"model": EMBED_MODEL, "input": EMBED_TEXT, "encoding_format": "float"}
    compat = Endpoint("embed-openai", host, port, "/v1/embeddings", body, auth, ok_marker=b'"embedding"')
    seq: dict[str, dict[str, list[float]]] = {"embed-native": {}, "embed-openai": {}}
    for repeat in range(args.repeats):
        for target in (native, compat) if repeat % 2 == 0 else (compat, native):
            r = await sequential(target, args.n, args.warmup)
            for metric in ("p50_ms", "p99_ms"):
                seq[target.name].setdefault(metric, []).append(r[metric])
    rps: dict[int, list[float]] = {}
    for conc in (1, 16, 64):
        for _ in range(args.repeats):
            r = await closed_loop(compat, conc, args.duration, args.max_requests)
            rps.setdefault(conc, []).append(r["rps"])
            if r["errors"]:
                print(f"embeddings c{conc}: {r['errors']} errors", file=sys.stderr)
    rng = lambda v: f"{min(v):.2f}" if len(v) == 1 else f"{min(v):.2f}-{max(v):.2f}"  # noqa: E731
    lines = [
        "| embeddings (sequential) | embed-native `/v1/embed` | embed-openai `/v1/embeddings` | added |",
        "|---|---|---|---|",
    ]
    for metric in ("p50_ms", "p99_ms"):
        added = [a - b for a, b in zip(seq["embed-openai"][metric], seq["embed-native"][metric], strict=True)]
        lines.append(
            f"| {metric} | {rng(seq['embed-native'][metric])} | {rng(seq['embed-openai'][metric])} | {rng(added)} |"
        )
    lines += ["", "| `/v1/embeddings` callers | requests/s |", "|---|---|"]
    lines += [f"| {conc} | {rng(v)} |" for conc, v in rps.items()]
    return "\n".join(lines)


def endpoints(
    upstream: int,
    stack: Stack,
    key: str,
    litellm: tuple[object, int, str] | None,
    baseline: dict[str, str | int] | None = None,
    exact_hits: bool = True,
    portkey: tuple[Child, int] | None = None,
    split: tuple[Stack, str] | None = None,
    label: str = "tollway",
    others: Sequence[tuple[str, Stack, str]] = (),
    edge_hop: bool = False,
) -> dict[str, dict]:
    """Every target of the run: direct, Tollway (``label``, ``tollway-split`` when ``split`` is
    given, and each of ``others``: label, stack, key), the baseline and the peers; with
    ``edge_hop``, also ``<label>-openai-no-edge``: the same OpenAI requests sent to the HTTP port
    of the process that serves them, past Envoy, to tell the edge's hop from the rest."""
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
        **tollway_endpoints(label, edge.host, edge.port, key, exact_hits=exact_hits),
    }
    if edge_hop:
        surface = next(s for s in stack.mesh.enabled_services if s.name == "openai_compat").endpoints[0]
        past_edge = tollway_endpoints(label, surface.host, surface.port, key, exact_hits=False)[f"{label}-openai"]
        name = f"{label}-openai-no-edge"
        out[name] = {kind: dataclasses.replace(e, name=name) for kind, e in past_edge.items()}
    if split is not None:
        split_edge = split[0].mesh.edge.listen
        out |= tollway_endpoints("tollway-split", split_edge.host, split_edge.port, split[1], exact_hits=False)
    for other_label, other, other_key in others:
        other_edge = other.mesh.edge.listen
        out |= tollway_endpoints(other_label, other_edge.host, other_edge.port, other_key, exact_hits=False)
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
    if portkey is not None:
        _, pport = portkey
        pauth = portkey_headers(upstream)
        out["portkey"] = {
            "json": Endpoint("portkey", "127.0.0.1", pport, "/v1/chat/completions", CHAT, pauth, ok_marker=b"w19"),
            "stream": Endpoint(
                "portkey",
                "127.0.0.1",
                pport,
                "/v1/chat/completions",
                stream,
                pauth,
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
        if not args.rounds:
            for name in order:
                r = await sequential(targets[name]["json"], args.n, args.warmup)
                add(name, "seq_p50_ms", r["p50_ms"])
                add(name, "seq_p99_ms", r["p99_ms"])
            for name in order:
                r = await sequential(targets[name]["stream"], args.stream_n, args.warmup // 5)
                add(name, "ttft_p50_ms", r["ttft_p50_ms"])
                add(name, "ttft_p99_ms", r["ttft_p99_ms"])
                add(name, "stream_total_p50_ms", r["p50_ms"])
        else:
            rounds = await round_robin([targets[name]["json"] for name in order], args.n, args.warmup)
            totals = {name: [t for t, _ in rounds[targets[name]["json"].name]] for name in names}
            for name in names:
                add(name, "seq_p50_ms", percentile(totals[name], 50) * 1e3)
                add(name, "seq_p99_ms", percentile(totals[name], 99) * 1e3)
                # The same round's direct request subtracted: what this target adds, request by request.
                paired = [t - d for t, d in zip(totals[name], totals["direct"], strict=True)]
                add(name, "seq_paired_added_p50_ms", percentile(paired, 50) * 1e3)
            streamed = await round_robin([targets[name]["stream"] for name in order], args.stream_n, args.warmup // 5)
            for name in names:
                results_of = streamed[targets[name]["stream"].name]
                # NaN when no answer carried text the marker finds (as blocks leave the metric out).
                firsts = [f for _, f in results_of if f is not None] or [float("nan")]
                add(name, "ttft_p50_ms", percentile(firsts, 50) * 1e3)
                add(name, "ttft_p99_ms", percentile(firsts, 99) * 1e3)
                add(name, "stream_total_p50_ms", percentile([t for t, _ in results_of], 50) * 1e3)
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
    return "\n".join(lines + versus(results))


def versus(results: dict[str, dict[str, list[float]]], peer: str = "portkey") -> list[str]:
    """Issue 12's aims read off repeat by repeat: each Tollway target's p50 added and throughput
    beside ``peer``'s of the same repeat, and in how many repeats it was the better."""
    if peer not in results:
        return []
    direct = results["direct"]["seq_p50_ms"]
    added = {n: [a - d for a, d in zip(r["seq_p50_ms"], direct, strict=True)] for n, r in results.items()}
    rps = [m for m in results[peer] if m.startswith("rps_c")]
    lines = [
        "",
        f"Against {peer}, repeat by repeat (p50 added in ms, then requests/s; * where the target did better):",
        "",
        "| target | p50 added | " + " | ".join(rps) + " | better p50 | better throughput |",
        "|---|---|" + "---|" * len(rps) + "---|---|",
    ]
    for name in results:
        if name in ("direct", "litellm") or name == peer:
            continue
        p50 = [(a, a < b) for a, b in zip(added[name], added[peer], strict=True)]
        cells = [" / ".join(f"{a:.2f}{'*' if won else ''}" for a, won in p50)]
        wins = 0
        for m in rps:
            pairs = [(a, a > b) for a, b in zip(results[name][m], results[peer][m], strict=True)]
            wins += sum(won for _, won in pairs)
            cells.append(" / ".join(f"{a:.0f}{'*' if won else ''}" for a, won in pairs))
        total = len(p50) * len(rps)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {sum(won for _, won in p50)} of {len(p50)} | {wins} of {total} |"
        )
    peer_cells = [" / ".join(f"{a:.2f}" for a in added[peer])]
    peer_cells += [" / ".join(f"{a:.0f}" for a in results[peer][m]) for m in rps]
    lines.append(f"| {peer} | " + " | ".join(peer_cells) + " | | |")
    return lines


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
    parser.add_argument(
        "--rounds",
        action="store_true",
        help="take the sequential samples in rounds, one request to each target in turn, rather than in a block "
        "per target (see the docstring: drift hits all alike, but every target then idles between its requests)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add ../before <ref>`), measured in the same run as 'before'",
    )
    parser.add_argument(
        "--baseline-layout",
        choices=["colocated", "split", "default"],
        default="colocated",
        help="the baseline's layout ('default': its launcher's, for checkouts from before co-location, which is split)",
    )
    parser.add_argument("--no-exact-hits", action="store_true", help="skip the tier-1 hit targets")
    parser.add_argument("--no-portkey", action="store_true")
    parser.add_argument(
        "--edge-hop",
        action="store_true",
        help="also send the OpenAI requests straight to the process that serves them, past Envoy "
        "(`<layout>-openai-no-edge`): what the edge's hop costs",
    )
    parser.add_argument("--no-embeddings", action="store_true", help="skip the embeddings call (issue 16)")
    parser.add_argument(
        "--layouts",
        default="colocated,split",
        help="Tollway layouts to start, comma-separated: colocated (`tollway`), split (`tollway-split`), "
        "colocated2 (`tollway-2core`: the co-located group as two processes)",
    )
    parser.add_argument(
        "--peers-first",
        action="store_true",
        help="start LiteLLM and Portkey before Tollway's stacks (of two identical stacks the one started first "
        "has run slower by a few hundredths of a ms: bench/budget_overhead.py --first)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.n, args.stream_n, args.warmup, args.duration = 1, 100, 30, 20, 2.0
    layouts = [x for x in args.layouts.split(",") if x]
    if not layouts or set(layouts) - set(LAYOUT_LABELS):
        raise SystemExit(f"--layouts has value {args.layouts!r}; use any of {', '.join(LAYOUT_LABELS)}")
    run = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    upstream, port = start_upstream(run)
    stacks = {layout: bench_stack(run / layout, port, layout) for layout in layouts}
    litellm = None
    portkey = None
    baseline: tuple[subprocess.Popen[str], dict[str, str | int]] | None = None
    try:
        keys = {}
        if args.peers_first:
            litellm = None if args.no_litellm else start_litellm(run, port)
            portkey = None if args.no_portkey else start_portkey(run, port)
        for layout, stack in stacks.items():
            stack.start()
            keys[layout] = asyncio.run(_create_key(stack.redis_url, "bench"))[0]
        if not args.peers_first:
            litellm = None if args.no_litellm else start_litellm(run, port)
            portkey = None if args.no_portkey else start_portkey(run, port)
        layout = None if args.baseline_layout == "default" else args.baseline_layout
        baseline = start_baseline(args.baseline, run, port, layout) if args.baseline else None
        first = layouts[0]
        split = (stacks["split"], keys["split"]) if "split" in stacks and first != "split" else None
        targets = endpoints(
            port,
            stacks[first],
            keys[first],
            litellm,
            baseline[1] if baseline else None,
            exact_hits=not args.no_exact_hits,
            portkey=portkey,
            split=split,
            label=LAYOUT_LABELS[first],
            others=[(LAYOUT_LABELS[x], stacks[x], keys[x]) for x in layouts[1:] if x != "split"],
            edge_hop=args.edge_hop,
        )
        load_before = os.getloadavg()
        started = time.time()
        results = uvloop.run(measure(targets, args))
        embeddings = None
        if not args.no_embeddings:
            edge = stacks[first].mesh.edge.listen
            embeddings = uvloop.run(measure_embeddings(edge.host, edge.port, keys[first], args))
        load_after = os.getloadavg()
        print(
            f"\nmachine: {os.cpu_count()} cores; run took {time.time() - started:.0f}s; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1, 5, 15 min) "
            f"{' '.join(f'{x:.2f}' for x in load_before)} at the start, "
            f"{' '.join(f'{x:.2f}' for x in load_after)} at the end\n"
        )
        print(table(results))
        if embeddings is not None:
            print("\nThe embeddings call (same stack, after the table's run):\n")
            print(embeddings)
        print("\nResident memory after the run (MiB, every process of each system; Tollway's without Redis):\n")
        print("| system | processes | RSS MiB |\n|---|---|---|")
        for layout, stack in stacks.items():
            children = [c for c in stack.children if c.name != "redis"]
            label = LAYOUT_LABELS[layout]
            names = ", ".join(c.name for c in children)
            print(f"| {label} | {names} | {rss_mib([c.process.pid for c in children]):.0f} |")
        for label, peer in (("litellm", litellm), ("portkey", portkey)):
            if peer is not None:
                child = peer[0]
                print(f"| {label} | {child.name} | {rss_mib([child.process.pid]):.0f} |")  # type: ignore[attr-defined]
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if baseline is not None:
            baseline[0].communicate("")  # closing its stdin stops that stack
        if litellm is not None:
            litellm[0].stop()  # type: ignore[attr-defined]
        if portkey is not None:
            portkey[0].stop()
        for stack in stacks.values():
            stack.stop()
        upstream.kill()


if __name__ == "__main__":
    main()
