"""gRPC <-> domain translation for tollway.router.v1. No routing logic lives here."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from tollway.common import codec
from tollway.common.catalog import Catalog
from tollway.common.chat import ChatRequest, TextDelta, merge_deltas
from tollway.common.paging import Page, page_size
from tollway.common.route import RouteCompleted, RouteStarted
from tollway.mesh.errors import InvalidArgument, rpc_errors
from tollway.mesh.inprocess import served_in_process
from tollway.mesh.streams import coalesce
from tollway.router.breaker import HALF_OPEN, OPEN
from tollway.router.engine import Router
from tollway.router.routing import ALLOW_FALLBACK_HEADER, parse_allow_fallback
from tollway.router.v1 import router_pb2, router_pb2_grpc

_DOMAIN = "router.tollway"

STATE_TO_PROTO = {
    "closed": router_pb2.BREAKER_STATE_CLOSED,
    OPEN: router_pb2.BREAKER_STATE_OPEN,
    HALF_OPEN: router_pb2.BREAKER_STATE_HALF_OPEN,
}


def _timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def models_to_proto(catalog: Catalog, router: Router, reload_error: str) -> router_pb2.ListModelsResponse:
    """The catalog as ListModels shows it, with each deployment's current health."""
    out = router_pb2.ListModelsResponse(
        aliases=dict(catalog.aliases),
        tier_models=dict(catalog.routing.tiers),
        catalog_version=catalog.version,
        reload_error=reload_error,
    )
    for name in sorted(catalog.models):
        m = catalog.models[name]
        info = out.models.add(
            name=m.name,
            tier=codec.model_tier_to_proto(m.tier),
            context_window=m.context_window,
            capabilities=sorted(m.capabilities),
            input_usd_per_1m_tokens=m.price.input_usd,
            output_usd_per_1m_tokens=m.price.output_usd,
            cached_input_usd_per_1m_tokens=m.price.cached_input_usd,
            requests_per_minute=m.limits.rpm,
            tokens_per_minute=m.limits.tpm,
            fallbacks=[x.name for x in catalog.chain(m)[1:]],
        )
        for d in m.deployments:
            health = router.balancer.health(d)
            info.deployments.add(
                key=d.key,
                provider=d.provider,
                wire=d.wire,
                base_url=d.base_url,
                upstream_model=d.upstream_model,
                weight=d.weight,
                ttft_ewma_ms=health.ttft_ewma_ms or 0.0,
                failure_rate_ewma=health.failure_ewma,
                has_api_key=bool(d.api_key),
                requests_per_minute=d.rpm,
                tokens_per_minute=d.tpm,
            )
    return out


def _monotonic_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a ``time.monotonic()`` instant, or None when it set none."""
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


def _chat_request(request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> ChatRequest:
    """The domain request; the fallback policy comes from the field, else the forwarded header."""
    chat = codec.chat_request_from_router(request)
    if chat.allow_model_fallback is None:
        header = next((v for k, v in context.invocation_metadata() or () if k == ALLOW_FALLBACK_HEADER), None)
        allow = parse_allow_fallback(header if isinstance(header, str | None) else header.decode(errors="replace"))
        if allow is not None:
            chat = dataclasses.replace(chat, allow_model_fallback=allow)
    return chat


def _prompt_tokens(request: router_pb2.GenerateRequest, prefix: str = "") -> int:
    """The caller's count of the prompt's tokens (0: the router counts them)."""
    if request.prompt_tokens < 0:
        raise InvalidArgument(
            f"{prefix}prompt_tokens is {request.prompt_tokens}; send the prompt's token count, or 0 to have it counted",
            [(f"{prefix}prompt_tokens", "must not be negative")],
        )
    return request.prompt_tokens


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    @rpc_errors(_DOMAIN)
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        events = self.router.generate(
            _chat_request(request, context), _monotonic_deadline(context), prompt_tokens=_prompt_tokens(request)
        )
        if not served_in_process(context):
            # Deltas that arrive together leave as one message: per-message cost dominates fast
            # streams. In-process the caller coalesces what it reads (the gateway does), so a
            # second coalescing here would only add a task and a queue hop to every token.
            events = coalesce(events, merge_deltas)
        async for event in events:
            yield codec.route_event_to_proto(event)

    @rpc_errors(_DOMAIN)
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        if not request.HasField("request"):
            raise InvalidArgument("'request' is required", [("request", "the GenerateRequest to answer")])
        out = router_pb2.CompleteResponse()
        parts: list[str] = []
        chat = _chat_request(request.request, context)
        counted = _prompt_tokens(request.request, "request.")
        async for event in self.router.generate(chat, _monotonic_deadline(context), whole=True, prompt_tokens=counted):
            if isinstance(event, TextDelta):
                parts.append(event.text)
                continue
            # Filled where they are (a stream message built and copied in made each one twice);
            # cleared first, so a second event of a kind replaces the first.
            if isinstance(event, RouteStarted):
                out.started.Clear()
                codec.route_started_into(out.started, event)
            elif isinstance(event, RouteCompleted):
                out.completed.Clear()
                codec.route_completed_into(out.completed, event)
            else:
                out.error.CopyFrom(codec.route_event_to_proto(event).error)
        out.text = "".join(parts)
        return out

    @rpc_errors(_DOMAIN)
    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        return models_to_proto(self.router.catalog, self.router, self.router.source.last_error)

    @rpc_errors(_DOMAIN)
    async def ListBreakers(
        self, request: router_pb2.ListBreakersRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListBreakersResponse:
        names = sorted({d.key for d in self.router.catalog.deployments() if d.key.startswith(request.name_prefix)})
        snapshots = await self.router.breakers.snapshots(names)
        s = self.router.breakers.settings
        return router_pb2.ListBreakersResponse(
            breakers=[
                router_pb2.Breaker(
                    name=b.name,
                    state=STATE_TO_PROTO.get(b.state, router_pb2.BREAKER_STATE_UNSPECIFIED),
                    consecutive_failures=b.consecutive_failures,
                    window_request_count=b.window_requests,
                    window_failure_count=b.window_failures,
                    open_time=_timestamp(b.opened_at_ms),
                    next_probe_time=_timestamp(b.next_probe_at_ms),
                    change_time=_timestamp(b.changed_at_ms),
                    last_error=b.last_error,
                )
                for b in snapshots
            ],
            failure_threshold=s.failure_threshold,
            error_rate_threshold=s.error_rate,
            window_ms=int(s.window_s * 1000),
            min_requests=s.min_requests,
            cooldown_ms=int(s.cooldown_s * 1000),
        )

    @rpc_errors(_DOMAIN)
    async def ListBreakerTransitions(
        self, request: router_pb2.ListBreakerTransitionsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListBreakerTransitionsResponse:
        size = page_size(request.page_size)
        found = await self.router.breakers.transitions(size + 1, request.page_token, request.breaker)
        page = Page.of(found, size, lambda t: t.id)
        return router_pb2.ListBreakerTransitionsResponse(
            transitions=[
                router_pb2.BreakerTransition(
                    breaker=t.breaker,
                    from_state=STATE_TO_PROTO.get(t.from_state, router_pb2.BREAKER_STATE_UNSPECIFIED),
                    to_state=STATE_TO_PROTO.get(t.to_state, router_pb2.BREAKER_STATE_UNSPECIFIED),
                    reason=t.reason,
                    time=_timestamp(t.at_ms),
                    replica=t.replica,
                )
                for t in page.items
            ],
            next_page_token=page.next_page_token,
        )
