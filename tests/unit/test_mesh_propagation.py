"""x-canary travels from a served request to the calls it makes."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tollway.mesh import propagation
from tollway.mesh.errors import rpc_errors


def test_only_forwarded_headers_are_kept() -> None:
    async def serve_one() -> tuple[tuple[str, str], ...]:
        propagation.capture([("authorization", "Bearer k"), ("x-canary", "1"), ("x-other", b"v")])
        return propagation.outgoing()

    assert asyncio.run(serve_one()) == (("x-canary", "1"),)


async def test_a_decorated_servicer_sees_the_callers_canary_header() -> None:
    seen: list[tuple[tuple[str, str], ...]] = []

    class Health(health_pb2_grpc.HealthServicer):
        @rpc_errors("test.tollway")
        async def Check(
            self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            seen.append(propagation.outgoing())
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), metadata=[("x-canary", "1")])
        await stub.Check(health_pb2.HealthCheckRequest())
    await server.stop(None)
    assert seen == [(("x-canary", "1"),), ()]
