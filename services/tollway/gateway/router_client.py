"""The gateway's view of RouterService: domain values in, route events out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tollway.common import codec
from tollway.common.chat import ChatRequest, TextDelta
from tollway.common.route import RouteEvent
from tollway.mesh import propagation
from tollway.mesh.errors import from_rpc_error
from tollway.router.v1 import router_pb2, router_pb2_grpc


class RouterClient:
    """Calls the router; cancelling an iteration cancels the RPC (and the provider call)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = router_pb2_grpc.RouterServiceStub(channel)

    async def generate(self, req: ChatRequest, timeout_s: float | None) -> AsyncIterator[RouteEvent]:
        """Yields RouteStarted, TextDelta..., RouteCompleted or StreamFailed as they arrive.

        Raises:
            TollwayError: The router's status, typed again (provider unavailable, bad request...).
        """
        call = self.stub.Generate(codec.chat_request_to_router(req), timeout=timeout_s, metadata=propagation.outgoing())
        try:
            async for msg in call:
                kind = msg.WhichOneof("event")
                if kind == "delta":
                    yield TextDelta(msg.delta.text)
                elif kind == "started":
                    yield codec.route_started_from_proto(msg.started)
                elif kind == "completed":
                    yield codec.route_completed_from_proto(msg.completed)
                elif kind == "error":
                    yield codec.stream_failed_from_proto(msg.error)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            # Reached on completion, on error and when the client went away: make sure the
            # router (and through it the provider) stops working for nobody.
            call.cancel()

    async def complete(self, req: ChatRequest, timeout_s: float | None) -> AsyncIterator[RouteEvent]:
        """The same events for a whole answer, fetched in one unary call (one message per hop).

        Raises:
            TollwayError: The router's status, typed again.
        """
        try:
            reply = await self.stub.Complete(
                router_pb2.CompleteRequest(request=codec.chat_request_to_router(req)),
                timeout=timeout_s,
                metadata=propagation.outgoing(),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        yield codec.route_started_from_proto(reply.started)
        if reply.text:
            yield TextDelta(reply.text)
        if reply.HasField("error"):
            yield codec.stream_failed_from_proto(reply.error)
        else:
            yield codec.route_completed_from_proto(reply.completed)
