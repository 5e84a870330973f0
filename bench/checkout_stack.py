"""Runs the bench stack of another checkout of Tollway, so one bench run can measure two versions.

    python bench/checkout_stack.py --upstream-port P --run-dir DIR

It is started by ``bench/overhead.py --baseline CHECKOUT`` with ``PYTHONPATH`` pointing at that
checkout's ``tollway`` package, so everything it imports (and every service it starts) is the
other version's code. It prints one JSON line ``{"host", "port", "key", "pids"}`` once the stack answers,
then keeps the stack up until its stdin closes. Only the launcher API both versions share is used
(``Stack``, ``StackOptions``, ``free_ports``, the CLI's key helper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import yaml

from tollway.cli import _create_key
from tollway.launcher.processes import free_ports
from tollway.launcher.stack import Stack, StackOptions

MODEL = "fake-words-20"
# The pro plan's six quotas with limits no bench reaches: every request pays for all its
# counters, and none is ever refused (a refusal is a different, cheaper path).
BENCH_PLANS = """version: 1
default_plan: bench
plans:
  bench:
    quotas:
      - {scope: tenant, window: minute, requests: 1000000000}
      - {scope: tenant, window: minute, tokens: 1000000000000}
      - {scope: tenant, window: day, tokens: 1000000000000}
      - {scope: tenant, window: month, usd: 1000000000}
      - {scope: key, window: minute, tokens: 1000000000000}
      - {scope: conversation, window: conversation, tokens: 1000000000000}
"""


def budget_wired(checkout: Path) -> bool:
    """Whether the gateway of ``checkout`` calls the budget service (its mesh.yaml says so).

    Older checkouts have no budget service, or one the gateway does not call yet: their bench
    stack runs without it, as they ran.
    """
    mesh = yaml.safe_load((checkout / "deploy" / "mesh.yaml").read_text())
    services = {s["name"]: s for s in mesh.get("services", [])}
    budget, gateway = services.get("budget"), services.get("gateway", {})
    return budget is not None and budget.get("enabled", True) and "budget" in gateway.get("calls", [])


def bench_services(checkout: Path, run_dir: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """The services of the bench stack of ``checkout`` and their extra environment."""
    services = ("gateway", "router", "openai_compat", "cache", "embedding")
    if not budget_wired(checkout):
        return services, {}
    plans = run_dir / "budget.yaml"
    plans.write_text(BENCH_PLANS)
    return (*services, "budget"), {"TOLLWAY_BUDGET_PLANS": str(plans)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument(
        "--layout", choices=["colocated", "split"], help="the checkout's launcher default when not given"
    )
    args = parser.parse_args()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    catalog = args.run_dir / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{args.upstream_port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    services, env = bench_services(Path.cwd(), args.run_dir)
    names = ["edge", "admin", "mesh", "redis", *services]
    # Only when asked: checkouts from before co-location have no `layout` option.
    layout = {"layout": args.layout} if args.layout else {}
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=args.run_dir,
        catalog=catalog,
        with_model=False,
        services=services,
        env={"TOLLWAY_LOG_LEVEL": "WARNING", **env},
        **layout,
    )
    with Stack(options) as stack:
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        edge = stack.mesh.edge.listen
        pids = {c.name: c.process.pid for c in getattr(stack, "children", ())}
        print(json.dumps({"host": edge.host, "port": edge.port, "key": key, "pids": pids}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
