"""What every service gets from tollway.mesh.server.serve(), proven on a real router process:
health, reflection, Prometheus metrics, JSON logs, and a SIGTERM that lets a stream finish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.fakes.openai import make_server
from tests.support.polling import eventually
from tollway.common.v1 import common_pb2
from tollway.launcher.processes import free_ports
from tollway.router.v1 import router_pb2, router_pb2_grpc

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, int]]:
    fake = make_server()
    fake_port = await fake.start()
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        f"providers:\n  fake: {{wire: openai_compat, base_url: 'http://127.0.0.1:{fake_port}/v1'}}\n"
        "models:\n  slow: {provider: fake, upstream_model: fake-gap-50}\n"
    )
    port, metrics_port = free_ports(2)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")},
        "TOLLWAY_ROUTER_PORT": str(port),
        "TOLLWAY_ROUTER_METRICS_PORT": str(metrics_port),
        "TOLLWAY_ROUTER_CATALOG": str(catalog),
        "TOLLWAY_ROUTER_BREAKERS": "false",
        "TOLLWAY_SHUTDOWN_GRACE_S": "10",
        "TOLLWAY_SHUTDOWN_DRAIN_DELAY_S": "0.5",
    }
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "tollway.router"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    (tmp_path / "pid").write_text(str(proc.pid))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
    yield proc, port, metrics_port
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    await fake.stop()


def _request() -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="slow", max_tokens=10, messages=[common_pb2.Message(role="user", content="count slowly")]
    )


async def test_health_reflection_and_metrics(router: tuple[subprocess.Popen[bytes], int, int]) -> None:
    _, port, metrics_port = router
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tollway.router.v1.RouterService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        events = [e async for e in router_pb2_grpc.RouterServiceStub(channel).Generate(_request())]
    assert events[-1].HasField("completed")

    def services() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as sync_channel:
            return list(ProtoReflectionDescriptorDatabase(sync_channel).get_services())

    assert {"tollway.router.v1.RouterService", "grpc.health.v1.Health"} <= set(await asyncio.to_thread(services))
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert 'tollway_rpc_seconds_count{method="Generate",service="router"}' in text


async def test_sigterm_lets_the_stream_in_flight_finish(router: tuple[subprocess.Popen[bytes], int, int]) -> None:
    proc, port, _ = router
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(_request())
        events = [await call.read(), await call.read()]  # started, first delta
        proc.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

        # During the drain delay (0.5 s) health says NOT_SERVING, so balancers stop sending.
        await eventually(not_serving, timeout_s=0.5, what="NOT_SERVING after SIGTERM")
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
    text = "".join(e.delta.text for e in events if e.HasField("delta"))
    assert text == "".join(f"tick{i} " for i in range(10)) and events[-1].HasField("completed")
    assert await asyncio.to_thread(proc.wait, 15) == 0
    assert proc.stderr is not None
    logs = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]
    assert {"serving", "shutting down", "stopped"} <= {entry["msg"] for entry in logs}
    assert all(entry["service"] == "router" for entry in logs)


_GC_PROBE = """
import asyncio, gc, os, signal
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve_group

async def main():
    async def report():
        while gc.get_threshold()[0] == 700:  # Python's default, until the process serves
            await asyncio.sleep(0.01)
        print(gc.get_threshold()[0], gc.get_freeze_count() > 0, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.ensure_future(report())
    await serve_group("probe", [ServiceSpec("probe", 0, lambda server: None, [], mesh=load_config(MeshConfig))])
    await task

run(main())
"""


async def test_a_serving_process_runs_the_cyclic_collector_at_the_configured_threshold() -> None:
    # Work batched for tens of ms keeps objects alive; at Python's 700 the collector ran every
    # ~10 requests for nothing. The threshold is set once start-up's objects are frozen.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env["TOLLWAY_GC_YOUNG_THRESHOLD"] = "4321"
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _GC_PROBE], env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["4321", "True"]
