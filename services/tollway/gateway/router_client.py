"""The gateway's view of RouterService: domain values in, domain events out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tollway.common.v1 import common_pb2
from tollway.mesh import propagation
from tollway.mesh.errors import from_rpc_error
from tollway.router.engine import RouteCompleted, RouteEvent, RouteStarted, StreamFailed
from tollway.router.routing import RoutingDecision
from tollway.router.service import FINISH_FROM_PROTO, TIER_TO_PROTO
from tollway.router.types import ChatRequest, TextDelta, Usage
from tollway.router.v1 import router_pb2, router_pb2_grpc

_TIER_NAMES = {v: k for k, v in TIER_TO_PROTO.items()}


def _usage(u: common_pb2.Usage, cache_write: int = 0) -> Usage:
    return Usage(u.input_tokens, u.output_tokens, u.cached_input_tokens, cache_write)


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


def _started(s: router_pb2.Started) -> RouteStarted:
    decision = None
    if s.HasField("decision"):
        d = s.decision
        decision = RoutingDecision(
            requested=d.requested_model,
            model=s.model,
            tier=_TIER_NAMES.get(d.tier, ""),
            how=d.method,
            reason=d.reason,
            score=d.complexity_score,
            classifier=d.classifier,
            cascade_from=d.cascade_model,
        )
    return RouteStarted(s.model, s.provider, s.attempt_count, tuple(s.fallback_path), decision, s.deployment)


def _completed(c: router_pb2.Completed) -> RouteCompleted:
    return RouteCompleted(
        FINISH_FROM_PROTO.get(c.finish_reason, ""),
        _usage(c.usage, c.cache_write_input_tokens),
        c.usage_reported,
        c.provider_ttft_ms,
        cost_usd_micros=c.cost_usd_micros,
        discarded_usage=_usage(c.discarded_usage),
    )


def _failed(e: router_pb2.Error) -> StreamFailed:
    return StreamFailed(e.code, e.message, e.reason, _usage(e.partial_usage))


class RouterClient:
    """Calls the router; cancelling an iteration cancels the RPC (and the provider call)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = router_pb2_grpc.RouterServiceStub(channel)

    async def generate(self, req: ChatRequest, timeout_s: float | None) -> AsyncIterator[RouteEvent]:
        """Yields RouteStarted, TextDelta..., RouteCompleted or StreamFailed as they arrive.

        Raises:
            TollwayError: The router's status, typed again (provider unavailable, bad request...).
        """
        call = self.stub.Generate(to_proto(req), timeout=timeout_s, metadata=propagation.outgoing())
        try:
            async for msg in call:
                kind = msg.WhichOneof("event")
                if kind == "delta":
                    yield TextDelta(msg.delta.text)
                elif kind == "started":
                    yield _started(msg.started)
                elif kind == "completed":
                    yield _completed(msg.completed)
                elif kind == "error":
                    yield _failed(msg.error)
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
                router_pb2.CompleteRequest(request=to_proto(req)), timeout=timeout_s, metadata=propagation.outgoing()
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        yield _started(reply.started)
        if reply.text:
            yield TextDelta(reply.text)
        if reply.HasField("error"):
            yield _failed(reply.error)
        else:
            yield _completed(reply.completed)
