"""The floor under any Python path in this stack: what a pass-through that does nothing else adds,
beside Portkey and Tollway, in one run against one zero-delay upstream (issue 12).

    .venv/bin/python bench/floor.py [--repeats 3] [-n 1000] [--duration 5]

Targets (all on free loopback ports, stopped at the end):
- ``direct``: the upstream (tests/fakes/openai.py, 20 chunks, no delay);
- ``floor``: one Python process built from the parts Tollway's OpenAI surface runs on (uvloop, uvicorn on
  httptools, a Starlette route, ``tollway.mesh.httpclient`` to the upstream) that forwards the request
  body and returns the upstream's answer, with no auth, no budget, no record: the least any Python
  gateway on these parts can add;
- ``floor-envoy``: the same behind an Envoy that only proxies (one listener, one cluster), as
  Tollway's edge sits in front of every request;
- ``portkey``: the Portkey gateway, as in bench/overhead.py (skipped when not installed);
- ``tollway-openai``: Tollway's OpenAI surface, co-located layout, as in bench/overhead.py.

Prints per repeat: sequential p50/p99 added over ``direct``, requests/s at concurrency 64, and CPU
milliseconds per request of the floor and Tollway processes (user+system from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.httpload import Endpoint, closed_loop, sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_port, spawn, wait_until  # noqa: E402

FLOOR_APP = textwrap.dedent(
    """
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from tollway.mesh.httpclient import HttpClient

    upstream = f"http://127.0.0.1:{sys.argv[2]}/v1/chat/completions"
    client = HttpClient()

    async def chat(request):
        body = await request.body()
        async with client.stream("POST", upstream, content=body,
                                 headers={"content-type": "application/json"}) as r:
            data = b"".join([chunk async for chunk in r.aiter_bytes()])
        return Response(data, status_code=r.status_code, media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    print("LISTENING", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_config=None)
    """
)

ENVOY = textwrap.dedent(
    """
    static_resources:
      listeners:
      - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
        filter_chains:
        - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": {hcm}
              stat_prefix: floor
              route_config:
                virtual_hosts:
                - name: all
                  domains: ["*"]
                  routes: [{{match: {{prefix: "/"}}, route: {{cluster: floor, timeout: 0s}}}}]
              http_filters:
              - name: envoy.filters.http.router
                typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
      clusters:
      - name: floor
        type: STATIC
        load_assignment:
          cluster_name: floor
          endpoints:
          - lb_endpoints:
            - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
    """
)


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def start_floor(run: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    script = run / "floor_app.py"
    script.write_text(FLOOR_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), str(upstream)], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"LISTENING")
    time.sleep(0.5)
    return proc, port


def start_envoy(run: Path, target: int) -> tuple[object, int]:
    port = free_port()
    config = run / "floor-envoy.yaml"
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    config.write_text(ENVOY.format(listen=port, upstream=target, hcm=hcm))
    envoy = Path(sys.executable).parent / "envoy"
    child = spawn("floor-envoy", [str(envoy), "-c", str(config), "--concurrency", "2", "-l", "error",
                                  "--base-id", str(port)], run / "logs", {})
    wait_until(child, lambda: _listens(port), 30, "listening")
    return child, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-floor-"))
    upstream, up_port = overhead.start_upstream(run)
    floor, floor_port = start_floor(run, up_port)
    envoy = portkey = None
    stack = overhead.bench_stack(run / "colocated", up_port, "colocated")
    chat = overhead.CHAT
    try:
        envoy, envoy_port = start_envoy(run, floor_port)
        portkey = overhead.start_portkey(run, up_port)
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        edge = stack.mesh.edge.listen
        targets = {
            "direct": Endpoint("direct", "127.0.0.1", up_port, "/v1/chat/completions", chat, ok_marker=b"w19"),
            "floor": Endpoint("floor", "127.0.0.1", floor_port, "/v1/chat/completions", chat, ok_marker=b"w19"),
            "floor-envoy": Endpoint("floor-envoy", "127.0.0.1", envoy_port, "/v1/chat/completions", chat,
                                    ok_marker=b"w19"),
            "tollway-openai": Endpoint(
                "tollway-openai", edge.host, edge.port, "/v1/chat/completions",
                chat, headers=(("authorization", f"Bearer {key}"), ("x-tollway-cache-mode", "bypass")),
                ok_marker=b"w19",
            ),
        }
        if portkey is not None:
            targets["portkey"] = Endpoint("portkey", "127.0.0.1", portkey[1], "/v1/chat/completions", chat,
                                          headers=overhead.portkey_headers(up_port), ok_marker=b"w19")
        core = next(c.process.pid for c in stack.children if c.name == "core")
        cpu_of = {"floor": floor.pid, "floor-envoy": floor.pid, "tollway-openai": core}
        print(f"load average at start: {os.getloadavg()}")
        rows: dict[str, list[str]] = {}
        for rep in range(args.repeats):
            names = list(targets)
            names = names[rep % len(names):] + names[: rep % len(names)]
            results = {}
            for name in names:
                uvloop.run(sequential(targets[name], 100, 20))
                pid = cpu_of.get(name)
                before = cpu_ms(pid) if pid else 0.0
                seq = uvloop.run(sequential(targets[name], args.n, 0))
                cpu = (cpu_ms(pid) - before) / args.n if pid else float("nan")
                load = uvloop.run(closed_loop(targets[name], 64, args.duration, 100_000))
                results[name] = (seq, load, cpu)
            base = results["direct"][0]
            for name, (seq, load, cpu) in results.items():
                cells = rows.setdefault(name, [])
                cells.append(
                    f"p50 +{seq['p50_ms'] - base['p50_ms']:.2f} p99 +{seq['p99_ms'] - base['p99_ms']:.2f} "
                    f"c64 {load['rps']:.0f}/s cpu {cpu:.2f}"
                )
        print("| target | " + " | ".join(f"repeat {i + 1}" for i in range(args.repeats)) + " |")
        print("|---|" + "---|" * args.repeats)
        for name, cells in rows.items():
            print(f"| {name} | " + " | ".join(cells) + " |")
        print(f"load average at end: {os.getloadavg()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    finally:
        stack.stop()
        for p in (floor, upstream):
            p.kill()
        if envoy is not None:
            envoy.stop()  # type: ignore[attr-defined]
        if portkey is not None:
            portkey[0].stop()


if __name__ == "__main__":
    main()
