"""The ``tollway`` command: start the mesh, manage API keys, purge the cache."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tollway.mesh.topology import MeshError, load_mesh, parse_port_overrides, parse_replica_overrides

if TYPE_CHECKING:
    from tollway.gateway.store import GatewayStore

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "deploy" / "mesh.yaml"


def _redis_url(args: argparse.Namespace) -> str:
    return args.redis_url or os.environ.get("TOLLWAY_REDIS_URL") or load_mesh(MESH).redis.url


async def _create_key(redis_url: str, tenant: str) -> tuple[str, str]:
    from tollway.gateway.auth import KeyRing
    from tollway.gateway.store import GatewayStore
    from tollway.mesh.redis import connect

    client = connect(redis_url)
    try:
        return await KeyRing(GatewayStore(client)).create(tenant)
    finally:
        await client.aclose()


async def _with_store(redis_url: str, work: Callable[[GatewayStore], Awaitable[T]]) -> T:
    from tollway.gateway.store import GatewayStore
    from tollway.mesh.redis import connect

    client = connect(redis_url)
    try:
        return await work(GatewayStore(client))
    finally:
        await client.aclose()


def cmd_keys_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_store(_redis_url(args), lambda store: store.list_keys()))
    for row in sorted(rows, key=lambda r: (r["tenant"], r["created_time"])):
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(row["created_time"])))
        print(f"{row['key_id']}…  tenant={row['tenant']}  created={created}Z")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from tollway.gateway.auth import KeyRing

    key_id = asyncio.run(_with_store(_redis_url(args), lambda store: KeyRing(store).revoke(args.key)))
    if key_id is None:
        print("tollway: no key matches (it may already be revoked); see `tollway keys list`", file=sys.stderr)
        return 1
    print(f"revoked {key_id}…; gateways stop accepting it within their auth cache TTL (10 s by default)")
    return 0


def cmd_calls(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_store(_redis_url(args), lambda store: store.recent_calls(args.last)))
    for row in reversed(rows):
        print(json.dumps(row))
    return 0


_USAGE_COLUMNS = (
    "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "mean_latency_ms", "mean_ttft_ms",
    "errors", "cache_hits", "feedback_count", "mean_feedback",
)


def cmd_usage(args: argparse.Namespace) -> int:
    """Usage totals from the gateway's write-time aggregates (every tenant: an operator's view)."""
    import csv

    from tollway.gateway.insights import Insights, UsageRow, Viewer
    from tollway.mesh.errors import TollwayError

    async def read(store: GatewayStore) -> tuple[list[UsageRow], tuple[str, ...]]:
        # Whoever can reach Redis is an operator: every tenant, like `tollway calls`.
        return await Insights(store, ()).usage(Viewer("", admin=True), args.by, args.since, args.tenant)

    try:
        rows, days = asyncio.run(_with_store(_redis_url(args), read))
    except TollwayError as exc:
        print(f"tollway insights usage: {exc.message}", file=sys.stderr)
        return 2
    table = [
        [
            r.group, r.requests, r.input_tokens, r.output_tokens, r.cached_tokens, f"{r.cost_usd_micros / 1e6:.6f}",
            f"{r.mean_latency_ms:.1f}", f"{r.mean_ttft_ms:.1f}", r.errors, r.cache_hits, r.feedback_count,
            "" if r.mean_feedback is None else f"{r.mean_feedback:.3f}",
        ]
        for r in rows
    ]
    header = [args.by, *_USAGE_COLUMNS]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(table)
        return 0
    print(f"usage by {args.by}, {days[0]} to {days[-1]} (UTC)")
    widths = [max(len(str(c)) for c in column) for column in zip(header, *table, strict=False)]
    for line in [header, *table]:
        first, *rest = (str(c) for c in line)
        print("  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]))
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    key, key_id = asyncio.run(_create_key(_redis_url(args), args.tenant))
    print(f"created key {key_id}… for tenant {args.tenant}; it is shown once, store it now:")
    print(key)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Starts the stack and supervises it until SIGINT or SIGTERM; returns the exit status."""
    import logging

    from tollway.launcher.processes import LaunchError
    from tollway.launcher.stack import Stack, StackOptions

    try:
        replicas = parse_replica_overrides(args.replicas)
    except MeshError as exc:
        print(f"tollway up: {exc}", file=sys.stderr)
        return 2
    options = StackOptions(
        with_model=not args.no_model,
        redis_url=os.environ.get("TOLLWAY_REDIS_URL"),
        ports=parse_port_overrides(args.port),
        layout=args.layout,
        replicas=replicas,
        canary_ready=tuple(n for item in args.canary_ready for n in item.split(",") if n),
        with_prometheus=not args.no_prometheus,
    )
    if args.catalog:
        options.catalog = Path(args.catalog)
    if args.run_dir:
        options.run_dir = Path(args.run_dir)
    try:
        stack = Stack(options)
    except MeshError as exc:
        print(f"tollway up: {exc}", file=sys.stderr)
        return 2
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # The supervisor's restarts and recoveries, on the operator's terminal as they happen.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s tollway up: %(message)s", "%H:%M:%S"))
    launcher_log = logging.getLogger("tollway.launcher")
    launcher_log.addHandler(handler)
    launcher_log.setLevel(logging.INFO)
    started = time.monotonic()
    print("starting Redis, the local model, the services and Envoy…", flush=True)
    try:
        stack.start()
    except LaunchError as exc:
        print(f"tollway up: {exc}", file=sys.stderr)
        return 1
    for leftover in stack.leftovers:
        print(f"tollway up: stopped {leftover}, left running by a previous run", flush=True)
    from tollway.launcher import runfile

    # Listed with its children, so a script that cleans up after a killed run (scripts/test.sh)
    # stops the supervisor too, not only what it would start again. Recorded after start(), which
    # stops earlier entries that still run.
    runfile.record_pid(stack.options.run_dir, os.getpid(), "tollway-up")
    key, _ = asyncio.run(_create_key(stack.redis_url, "dev"))
    url = stack.edge_url
    status_args = f" --run-dir {args.run_dir}" if args.run_dir else ""
    print(
        f"""
Tollway is up in {time.monotonic() - started:.1f}s.

  URL          {url}
  OpenAI API   {url}/v1  (model "smollm2")
  API key      {key}
  logs         {stack.log_dir}
  Prometheus   {stack.prometheus_url if options.with_prometheus else "off (--no-prometheus)"}  (alerts: /alerts)
  status       tollway status{status_args}  (pid, uptime and restarts per process)

Try it:
  curl -N {url}/v1/generate -H 'authorization: Bearer {key}' -H 'content-type: application/json' \\
    -d '{{"model": "smollm2", "messages": [{{"role": "user", "content": "Name three colours."}}]}}'

A process that exits is restarted. Ctrl-C stops everything.""",
        flush=True,
    )
    try:
        while not stop:
            # The supervisor's thread does the watching; this one only waits for Ctrl-C.
            time.sleep(0.2)
    finally:
        print("stopping…", flush=True)
        stack.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Prints each process of `tollway up` with its state, pid, uptime, restarts and last exit."""
    from tollway.launcher import runfile
    from tollway.launcher.stack import StackOptions
    from tollway.launcher.supervisor import format_status

    run_dir = Path(args.run_dir) if args.run_dir else StackOptions().run_dir
    status = runfile.read_status(run_dir)
    if status is None:
        print(f"tollway: no tollway up has run with the run dir {run_dir}", file=sys.stderr)
        return 1
    launcher = runfile.live_launcher(run_dir)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(format_status(status, alive=lambda pid: pid == launcher))
    return 0 if launcher is not None and not status.get("stopped") else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollway", description="Tollway, an LLM gateway.")
    parser.add_argument("--redis-url", help="Redis to use (default: TOLLWAY_REDIS_URL, else deploy/mesh.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis, the local model, every service and Envoy")
    up.add_argument("--no-model", action="store_true", help="do not start the local llama.cpp model")
    up.add_argument(
        "--no-prometheus", action="store_true", help="serve no metrics endpoints and do not start Prometheus"
    )
    up.add_argument("--catalog", help="model catalog to use (default deploy/models.yaml)")
    up.add_argument(
        "--port", action="append", default=[], metavar="NAME=PORT", help="override a port of deploy/mesh.yaml"
    )
    up.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="NAME=N",
        help="replica count of a service, or of a process group's every member (core=2: the co-located "
        "group as two processes behind Envoy), instead of deploy/mesh.yaml's",
    )
    up.add_argument("--run-dir", help="where logs and Redis data go (default .run/)")
    up.add_argument(
        "--layout",
        choices=["colocated", "split"],
        default="colocated",
        help="colocated (default): deploy/mesh.yaml's process groups each run as one process, with "
        "in-process calls between their services (the fastest here); split: one process per service",
    )
    up.add_argument(
        "--canary-ready",
        action="append",
        default=[],
        metavar="SERVICE[,SERVICE]",
        help="services `tollway canary start` may canary: each runs alone and is called through Envoy",
    )
    up.set_defaults(func=cmd_up)

    status = sub.add_parser(
        "status", help="each process of `tollway up`: state, pid, uptime, restarts, last exit (exit 3 if not running)"
    )
    status.add_argument("--run-dir", help="the run dir of that `tollway up` (default .run/)")
    status.add_argument("--json", action="store_true", help="print status.json as it is")
    status.set_defaults(func=cmd_status)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints it on the last line")
    create.add_argument("--tenant", required=True, help="the tenant the key bills to")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys by id and tenant (the keys themselves are never stored)").set_defaults(
        func=cmd_keys_list
    )
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument(
        "key", help="the key's id as `keys list` prints it (tw-AbC123), a unique prefix of it, or the whole key"
    )
    revoke.set_defaults(func=cmd_keys_revoke)

    calls = sub.add_parser("calls", help="print the most recent call records, oldest first, one JSON object a line")
    calls.add_argument("--last", type=int, default=20, help="how many records (default 20)")
    calls.set_defaults(func=cmd_calls)

    # `tollway usage` is the budget ledger's view (one tenant, by day/key/feature/model); this one reads the
    # call records' totals: every tenant, and users, prompt versions, cache tiers and namespaces too.
    insights = sub.add_parser("insights", help="call-record totals and quality signals (issue 17)")
    insights_sub = insights.add_subparsers(dest="insights_command", required=True)
    usage = insights_sub.add_parser(
        "usage", help="usage and cost by tenant, feature, user, model, day, prompt version, cache tier or namespace"
    )
    usage.add_argument(
        "--by", default="tenant", choices=["tenant", "feature", "user", "model", "day", "prompt", "tier", "namespace"]
    )
    usage.add_argument("--since", default="", help="first day, YYYY-MM-DD (UTC); default 7 days ago")
    usage.add_argument("--tenant", default="", help="one tenant (default: every tenant)")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    usage.set_defaults(func=cmd_usage)

    from tollway.cache import purge

    cache_cmd = sub.add_parser("cache", help="manage the response cache")
    cache = cache_cmd.add_subparsers(dest="cache_command", required=True)
    purge_cmd = cache.add_parser("purge", help="remove cache entries (by document, template, namespace or all)")
    purge.add_arguments(purge_cmd)
    purge_cmd.set_defaults(func=purge.run)

    from tollway.budget import admin as budget_admin

    budget_admin.add_commands(sub)

    from tollway.retrieval import admin as retrieval_admin

    retrieval_admin.add_commands(sub)

    from tollway.prompts import admin as prompts_admin

    prompts_admin.add_commands(sub)

    from tollway.jobs import admin as jobs_admin

    jobs_admin.add_commands(sub)

    from tollway.launcher import canary_cli

    canary_cli.add_commands(sub)

    args = parser.parse_args(argv)
    from tollway.mesh.errors import TollwayError

    try:
        return int(args.func(args))
    except TollwayError as exc:
        print(f"tollway: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
