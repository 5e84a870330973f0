"""What one call costs through a gRPC loopback connection and through the in-process channel.

    .venv/bin/python bench/inprocess_call.py [-n 3000]

One servicer (RouterService's shape: a unary Complete, a 3-message Generate stream) on a real
grpc.aio server and registered for in-process calls; the same stub calls it both ways from the same
event loop, so each figure holds both sides of the call (client and server in one process). Prints
wall and CPU microseconds per call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from tollway.mesh import clients
from tollway.mesh.config import MeshConfig
from tollway.mesh.inprocess import InProcessChannel, Registry
from tollway.mesh.server import ServiceSpec, create_server
from tollway.router.v1 import router_pb2, router_pb2_grpc


class Echo(router_pb2_grpc.RouterServiceServicer):
    """Reads what servicers read (metadata, deadline) and answers at once."""

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> Any:
        context.invocation_metadata()
        context.time_remaining()
        return router_pb2.CompleteResponse(text="w0 w1 w2")

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        for i in range(3):
            yield router_pb2.GenerateResponse(delta=router_pb2.Delta(text=f"w{i} "))


async def _time(n: int, call: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await call()
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def main(n: int) -> None:
    registry = Registry()
    spec = ServiceSpec(
        name="echo",
        port=0,
        add_servicers=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(Echo(), server),
        service_names=["tollway.router.v1.RouterService"],
        mesh=MeshConfig(),
    )
    server, port, _ = await create_server(spec, "127.0.0.1:0", registry=registry)
    request = router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(model="m"))
    metadata = (("authorization", "Bearer tw-x"), ("x-canary", "0"))
    print("| channel | unary wall us | unary CPU us | 3-message stream wall us | stream CPU us |")
    print("|---|---|---|---|---|")
    for label, channel in (
        ("gRPC over loopback", clients.channel(f"127.0.0.1:{port}")),
        ("in-process", InProcessChannel("echo", registry=registry)),
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def unary(stub: Any = stub) -> None:
            await stub.Complete(request, timeout=5, metadata=metadata)

        async def stream(stub: Any = stub) -> None:
            async for _ in stub.Generate(request.request, timeout=5, metadata=metadata):
                pass

        await _time(n // 10, unary)
        await _time(n // 10, stream)
        u_wall, u_cpu = await _time(n, unary)
        s_wall, s_cpu = await _time(n, stream)
        print(f"| {label} | {u_wall:.1f} | {u_cpu:.1f} | {s_wall:.1f} | {s_cpu:.1f} |")
        await channel.close()
    await server.stop(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    uvloop.run(main(parser.parse_args().n))
