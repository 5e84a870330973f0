"""The gateway's view of RouterService: domain values in, route events out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc_status import rpc_status

from tollway.common import codec
from tollway.common.chat import ChatRequest, TextDelta
from tollway.common.route import RouteEvent
from tollway.mesh import propagation
from tollway.mesh.errors import TollwayError, Unavailable, from_rpc_error
from tollway.router.v1 import router_pb2, router_pb2_grpc


class RouterClient:
    """Calls the router; cancelling an iteration cancels the RPC (and the provider call)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = router_pb2_grpc.RouterServiceStub(channel)

    async def generate(
        self, req: ChatRequest, timeout_s: float | None, *, prompt_tokens: int = 0
    ) -> AsyncIterator[RouteEvent]:
        """Yields RouteStarted, TextDelta..., RouteCompleted or StreamFailed as they arrive.

        ``prompt_tokens``: the prompt's tokens as ``count_request_tokens`` counts them, when
        already counted (0: the router counts them).

        Raises:
            TollwayError: The router's status, typed again (provider unavailable, bad request...).
        """
        call = self.stub.Generate(
            codec.chat_request_to_router(req, prompt_tokens), timeout=timeout_s, metadata=propagation.outgoing()
        )
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
            raise _router_error(exc) from None
        finally:
            # Reached on completion, on error and when the client went away: make sure the
            # router (and through it the provider) stops working for nobody.
            call.cancel()

    async def complete(
        self, req: ChatRequest, timeout_s: float | None, *, prompt_tokens: int = 0
    ) -> AsyncIterator[RouteEvent]:
        """The same events for a whole answer, fetched in one unary call (one message per hop).

        Raises:
            TollwayError: The router's status, typed again.
        """
        try:
            reply = await self.stub.Complete(
                router_pb2.CompleteRequest(request=codec.chat_request_to_router(req, prompt_tokens)),
                timeout=timeout_s,
                metadata=propagation.outgoing(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _router_error(exc) from None
        yield codec.route_started_from_proto(reply.started)
        if reply.text:
            yield TextDelta(reply.text)
        if reply.HasField("error"):
            yield codec.stream_failed_from_proto(reply.error)
        else:
            yield codec.route_completed_from_proto(reply.completed)


def _router_error(exc: grpc.aio.AioRpcError) -> TollwayError:
    """The router's status typed again, or, when the router itself did not answer, an error naming it.

    An UNAVAILABLE that the router sends (every provider down) carries its ErrorInfo; one without any
    status details comes from the channel: nothing accepted the connection (the router is down or
    restarting) or it went away mid-call. The client then learns which part is missing, not a
    socket error.
    """
    if exc.code() == grpc.StatusCode.UNAVAILABLE and rpc_status.from_call(exc) is None:
        return Unavailable(
            f"the router is unavailable ({exc.details()}); retry shortly",
            retry_after_s=1.0,
            reason="ROUTER_UNAVAILABLE",
            metadata={"dependency": "router"},
        )
    return from_rpc_error(exc)
