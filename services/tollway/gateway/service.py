"""gRPC <-> domain translation for tollway.gateway.v1. No request logic lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tollway.common.v1 import common_pb2
from tollway.gateway.cache_client import CACHE_TIER_TO_PROTO
from tollway.gateway.lifecycle import Completed, Failed, Gateway, Started
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh.errors import Unavailable, rpc_errors
from tollway.router.service import FINISH_TO_PROTO, usage_to_proto
from tollway.router.types import TextDelta

DOMAIN = "gateway.tollway"


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e9 else None


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @rpc_errors(DOMAIN)
    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        tenant = await self.gateway.admit(request, context.invocation_metadata() or ())
        async for event in self.gateway.generate(request, tenant, _deadline(context)):
            if isinstance(event, TextDelta):
                yield gateway_pb2.GenerateResponse(delta=gateway_pb2.Delta(text=event.text))
            elif isinstance(event, Started):
                yield gateway_pb2.GenerateResponse(
                    started=gateway_pb2.Started(
                        request_id=event.request_id,
                        model=event.model,
                        provider=event.provider,
                        attempt_count=event.attempt_count,
                        cache_tier=CACHE_TIER_TO_PROTO[event.cache_tier],
                        degraded=event.degraded,
                    )
                )
            elif isinstance(event, Completed):
                yield gateway_pb2.GenerateResponse(completed=_completed(event))
            elif isinstance(event, Failed):
                yield gateway_pb2.GenerateResponse(
                    error=gateway_pb2.Error(
                        code=event.code,
                        message=event.message,
                        reason=event.reason,
                        partial_usage=usage_to_proto(event.partial_usage),
                    )
                )

    @rpc_errors(DOMAIN)
    async def Complete(
        self, request: gateway_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CompleteResponse:
        tenant = await self.gateway.admit(request, context.invocation_metadata() or ())
        out = gateway_pb2.CompleteResponse()
        parts: list[str] = []
        async for event in self.gateway.generate(request, tenant, _deadline(context), stream=False):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Started):
                out.request_id, out.model, out.provider = event.request_id, event.model, event.provider
                out.attempt_count = event.attempt_count
                out.cache_tier = CACHE_TIER_TO_PROTO[event.cache_tier]
                out.degraded = event.degraded
            elif isinstance(event, Completed):
                c = _completed(event)
                out.finish_reason = c.finish_reason
                out.usage.CopyFrom(c.usage)
                out.cost.CopyFrom(c.cost)
                out.latency_ms = c.latency_ms
                out.fallback_path.extend(c.fallback_path)
            elif isinstance(event, Failed):
                # Nothing was sent yet, so the failure can be a real status here.
                raise Unavailable(event.message, reason=event.reason)
        out.text = "".join(parts)
        return out

    @rpc_errors(DOMAIN)
    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        await self.gateway.keys.authenticate(context.invocation_metadata() or ())
        catalog = self.gateway.catalog
        out = gateway_pb2.ListModelsResponse()
        for name in catalog.names():
            model = catalog.resolve(name)
            assert model is not None
            out.models.append(
                gateway_pb2.ModelInfo(
                    name=name,
                    alias_of=model.name if model.name != name else "",
                    provider=model.deployments[0].provider,
                    tier=model.tier,
                    context_window=model.context_window,
                    input_price_usd_micros_per_million=round(model.price.input_usd * 1e6),
                    output_price_usd_micros_per_million=round(model.price.output_usd * 1e6),
                )
            )
        return out


def _completed(event: Completed) -> gateway_pb2.Completed:
    return gateway_pb2.Completed(
        finish_reason=FINISH_TO_PROTO[event.finish_reason],
        usage=usage_to_proto(event.usage),
        cost=common_pb2.Cost(cost_usd_micros=event.cost_usd_micros),
        latency_ms=event.latency_ms,
        ttft_ms=event.ttft_ms,
        fallback_path=event.fallback_path,
    )
