"""gRPC <-> domain translation for tollway.router.v1. No routing logic lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tollway.common.v1 import common_pb2
from tollway.mesh.errors import rpc_errors
from tollway.mesh.streams import coalesce
from tollway.router.engine import RouteCompleted, Router, RouteStarted, StreamFailed
from tollway.router.types import ChatMessage, ChatRequest, TextDelta, Usage
from tollway.router.v1 import router_pb2, router_pb2_grpc

FINISH_TO_PROTO = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
    "": common_pb2.FINISH_REASON_UNSPECIFIED,
}


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
    )


def request_from_proto(req: router_pb2.GenerateRequest) -> ChatRequest:
    return ChatRequest(
        model=req.model,
        messages=tuple(ChatMessage(m.role, m.content, m.name) for m in req.messages),
        max_tokens=req.max_tokens,
        temperature=req.temperature if req.HasField("temperature") else None,
        top_p=req.top_p if req.HasField("top_p") else None,
        stop=tuple(req.stop),
        seed=req.seed if req.HasField("seed") else None,
        request_id=req.request_id,
        tenant=req.tenant,
    )


def merge_deltas(a: object, b: object) -> TextDelta | None:
    """Joins two consecutive text deltas; None for anything else."""
    if isinstance(a, TextDelta) and isinstance(b, TextDelta):
        return TextDelta(a.text + b.text)
    return None


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    @rpc_errors("router.tollway")
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        # Deltas that arrive together leave as one message: per-message cost dominates fast streams.
        async for event in coalesce(self.router.generate(request_from_proto(request)), merge_deltas):
            if isinstance(event, TextDelta):
                yield router_pb2.GenerateResponse(delta=router_pb2.Delta(text=event.text))
            elif isinstance(event, RouteStarted):
                yield router_pb2.GenerateResponse(
                    started=router_pb2.Started(
                        model=event.model,
                        provider=event.provider,
                        attempt_count=event.attempt_count,
                        fallback_path=event.fallback_path,
                    )
                )
            elif isinstance(event, RouteCompleted):
                yield router_pb2.GenerateResponse(
                    completed=router_pb2.Completed(
                        finish_reason=FINISH_TO_PROTO[event.finish_reason],
                        usage=usage_to_proto(event.usage),
                        provider_ttft_ms=event.provider_ttft_ms,
                        usage_reported=event.usage_reported,
                    )
                )
            elif isinstance(event, StreamFailed):
                yield router_pb2.GenerateResponse(
                    error=router_pb2.Error(
                        code=event.code,
                        message=event.message,
                        reason=event.reason,
                        partial_usage=usage_to_proto(event.partial_usage),
                    )
                )
