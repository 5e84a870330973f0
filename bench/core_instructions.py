"""Instructions the co-located core process executes per request through Envoy, counted by valgrind:
the whole request path (HTTP surface, gateway, budget, router, provider stream, call record,
metrics) in one figure the machine's load cannot move (issue 12). Compare two checkouts to see
what a change saved.

    .venv/bin/python bench/core_instructions.py [--checkout DIR] [-n 300] [--target tollway-openai]

The bench stack of ``bench/overhead.py`` (co-located layout: Envoy, the core process, Redis, the
zero-delay fake upstream) is started as usual; then its core process is replaced by the same
command under ``valgrind --tool=callgrind`` with instrumentation off (``--checkout``: that checkout's
code, its protos generated first). After a warm-up, instrumentation is switched on (and the counts
zeroed) for ``n`` sequential
requests and dumped (``callgrind_control``); the figure is the dump's total divided by ``n``. The
core's background loops (call-log flushes, breaker syncs, stream followers) run during the window
too; they wake a few times a second and cost well under 1 % of the total. Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.httpload import Endpoint, sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402


def _proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _under_valgrind(pid: int, checkout: Path, run: Path) -> subprocess.Popen[bytes]:
    """Stops the core process ``pid`` and starts its command again under callgrind."""
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    env, cwd = _proc_env(pid), os.readlink(f"/proc/{pid}/cwd")
    if checkout != ROOT:
        parent = overhead.package_parent(checkout, run)
        if not (parent / "tollway" / "gateway" / "v1").exists():
            subprocess.run([str(checkout / "scripts" / "gen_protos.sh")], cwd=checkout, check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(parent), *env.get("PYTHONPATH", "").split(os.pathsep)])
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    with (run / "valgrind.log").open("wb") as log:
        return subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={run / 'callgrind.out'}",
             *argv],
            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


async def _ready(endpoint: Endpoint, grind: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Sends requests until one succeeds (the core under valgrind starts in a minute or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await sequential(endpoint, 1, 0)
            return
        except Exception:
            if grind.poll() is not None:
                raise SystemExit(f"the core under valgrind exited; see {log}") from None
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(2)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose core runs (default: this)")
    parser.add_argument("-n", type=int, default=300, help="requests counted")
    parser.add_argument("--target", default="tollway-openai", choices=["tollway", "tollway-openai"])
    parser.add_argument("--stream", action="store_true", help="streamed answers instead of whole ones")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-core-instr-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / "stack", port, "colocated")
    # Without the cache: its hnswlib is built for AVX-512, which valgrind cannot run. The requests
    # bypass the cache anyway (as in bench/overhead.py), so the gateway never calls it.
    stack.options.services = tuple(s for s in stack.options.services if s != "cache")
    stack.options.supervise = False  # the core is replaced by hand below
    grind: subprocess.Popen[bytes] | None = None
    try:
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        targets = overhead.tollway_endpoints("tollway", "127.0.0.1", stack.options.ports["edge"], key, exact_hits=False)
        endpoint = targets[args.target]["stream" if args.stream else "json"]
        core = next(c for c in stack.children if c.name == "core")
        grind = _under_valgrind(core.process.pid, args.checkout.resolve(), run)
        uvloop.run(_ready(endpoint, grind, run / "valgrind.log", 600))
        uvloop.run(sequential(endpoint, 30, 0))  # warm: connections, caches, first-call imports
        _control("-i", "on", str(grind.pid))
        _control("-z", str(grind.pid))
        uvloop.run(sequential(endpoint, args.n, 0))
        _control("-d", str(grind.pid))
        _control("-i", "off", str(grind.pid))
        dumps = sorted(run.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        total = None
        for line in dumps[-1].read_text().splitlines():
            found = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if found:
                total = int(found.group(1))
        if total is None:
            raise SystemExit(f"no total in {dumps[-1]}")
        what = "streamed" if args.stream else "whole"
        print(f"core: {total / args.n:,.0f} instructions per request ({args.target}, {what}; {args.checkout})")
    finally:
        if grind is not None:
            grind.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                grind.wait(30)
            grind.kill()
        stack.stop()
        upstream.terminate()


if __name__ == "__main__":
    main()
