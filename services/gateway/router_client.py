"""The gateway's view of RouterService: domain values in, domain events out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tollway.common.v1 import common_pb2
from tollway.mesh.errors import from_rpc_error
from tollway.router.engine import RouteCompleted, RouteEvent, RouteStarted, StreamFailed
from tollway.router.types import ChatRequest, TextDelta, Usage
from tollway.router.v1 import router_pb2, router_pb2_grpc

_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}


def _usage(u: common_pb2.Usage) -> Usage:
    return Usage(u.input_tokens, u.output_tokens, u.cached_input_tokens)


def to_proto(req: ChatRequest) -> router_pb2.GenerateRequest:
    out = router_pb2.GenerateRequest(
        request_id=req.request_id,
        model=req.model,
        messages=[common_pb2.Message(role=m.role, content=m.content, name=m.name) for m in req.messages],
        max_tokens=req.max_tokens,
        stop=req.stop,
        tenant=req.tenant,
    )
    if req.temperature is not None:
        out.temperature = req.temperature
    if req.top_p is not None:
        out.top_p = req.top_p
    if req.seed is not None:
        out.seed = req.seed
    return out


class RouterClient:
    """Streams a generation from the router; cancelling the iteration cancels the RPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = router_pb2_grpc.RouterServiceStub(channel)

    async def generate(self, req: ChatRequest, timeout_s: float | None) -> AsyncIterator[RouteEvent]:
        """Yields RouteStarted, TextDelta..., RouteCompleted or StreamFailed.

        Raises:
            TollwayError: The router's status, typed again (provider unavailable, bad request...).
        """
        call = self.stub.Generate(to_proto(req), timeout=timeout_s)
        try:
            async for msg in call:
                kind = msg.WhichOneof("event")
                if kind == "delta":
                    yield TextDelta(msg.delta.text)
                elif kind == "started":
                    s = msg.started
                    yield RouteStarted(s.model, s.provider, s.attempt_count, tuple(s.fallback_path))
                elif kind == "completed":
                    c = msg.completed
                    yield RouteCompleted(
                        _FINISH.get(c.finish_reason, ""), _usage(c.usage), c.usage_reported, c.provider_ttft_ms
                    )
                elif kind == "error":
                    e = msg.error
                    yield StreamFailed(e.code, e.message, e.reason, _usage(e.partial_usage))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            # Reached on completion, on error and when the client went away: make sure the
            # router (and through it the provider) stops working for nobody.
            call.cancel()
