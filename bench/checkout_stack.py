"""Runs the bench stack of another checkout of Tollway, so one bench run can measure two versions.

    python bench/checkout_stack.py --upstream-port P --run-dir DIR

It is started by ``bench/overhead.py --baseline CHECKOUT`` with ``PYTHONPATH`` pointing at that
checkout's ``tollway`` package, so everything it imports (and every service it starts) is the
other version's code. It prints one JSON line ``{"host", "port", "key"}`` once the stack answers,
then keeps the stack up until its stdin closes. Only the launcher API both versions share is used
(``Stack``, ``StackOptions``, ``free_ports``, the CLI's key helper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tollway.cli import _create_key
from tollway.launcher.processes import free_ports
from tollway.launcher.stack import Stack, StackOptions

MODEL = "fake-words-20"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    catalog = args.run_dir / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{args.upstream_port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    names = ["edge", "admin", "mesh", "redis", "gateway", "router", "openai_compat", "cache", "embedding"]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=args.run_dir,
        catalog=catalog,
        with_model=False,
        services=("gateway", "router", "openai_compat", "cache", "embedding"),
        env={"TOLLWAY_LOG_LEVEL": "WARNING"},
    )
    with Stack(options) as stack:
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        edge = stack.mesh.edge.listen
        print(json.dumps({"host": edge.host, "port": edge.port, "key": key}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
