"""gRPC <-> domain translation for tollway.router.v1. No routing logic lives here."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from tollway.common.catalog import Catalog
from tollway.common.v1 import common_pb2
from tollway.mesh.errors import InvalidArgument, rpc_errors
from tollway.mesh.streams import coalesce
from tollway.router.breaker import HALF_OPEN, OPEN
from tollway.router.engine import RouteCompleted, RouteEvent, Router, RouteStarted
from tollway.router.routing import RoutingDecision
from tollway.router.types import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ResponseFormat,
    TextDelta,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
    merge_deltas,
)
from tollway.router.v1 import router_pb2, router_pb2_grpc

_DOMAIN = "router.tollway"

FINISH_TO_PROTO = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
    "": common_pb2.FINISH_REASON_UNSPECIFIED,
}
FINISH_FROM_PROTO: dict[int, FinishReason] = {v: k for k, v in FINISH_TO_PROTO.items()}
TIER_TO_PROTO = {
    "small": router_pb2.MODEL_TIER_SMALL,
    "medium": router_pb2.MODEL_TIER_MEDIUM,
    "large": router_pb2.MODEL_TIER_LARGE,
}
STATE_TO_PROTO = {
    "closed": router_pb2.BREAKER_STATE_CLOSED,
    OPEN: router_pb2.BREAKER_STATE_OPEN,
    HALF_OPEN: router_pb2.BREAKER_STATE_HALF_OPEN,
}
_CHOICE = {
    router_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    router_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    router_pb2.TOOL_CHOICE_MODE_NONE: "none",
    router_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
    router_pb2.TOOL_CHOICE_MODE_TOOL: "tool",
}
_FORMAT = {
    router_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text",
    router_pb2.RESPONSE_FORMAT_TYPE_TEXT: "text",
    router_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    router_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
    )


def _json_object(text: str, field: str, default: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text:
        return default
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {exc}", [(field, "not valid JSON")]) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object", [(field, "not a JSON object")])
    return value


def _tool_call(c: router_pb2.ToolCall, field: str) -> ToolCall:
    _json_object(c.arguments_json, f"{field}.arguments_json", {})
    return ToolCall(c.id, c.name, c.arguments_json or "{}", c.index)


def request_from_proto(req: router_pb2.GenerateRequest) -> ChatRequest:
    """The domain request; malformed tool or format JSON is INVALID_ARGUMENT naming the field."""
    extras: dict[int, router_pb2.MessageExtras] = {}
    for i, extra in enumerate(req.message_extras):
        if not 0 <= extra.message_index < len(req.messages):
            raise InvalidArgument(
                f"message_extras[{i}].message_index is {extra.message_index}; there are {len(req.messages)} messages",
                [(f"message_extras[{i}].message_index", "out of range")],
            )
        extras[extra.message_index] = extra
    messages = []
    for i, m in enumerate(req.messages):
        extra = extras.get(i)
        messages.append(
            ChatMessage(
                m.role,
                m.content,
                m.name,
                tool_calls=tuple(
                    _tool_call(c, f"message_extras.tool_calls[{j}]") for j, c in enumerate(extra.tool_calls)
                )
                if extra
                else (),
                tool_call_id=extra.tool_call_id if extra else "",
                cache_breakpoint=extra.cache_breakpoint if extra else False,
            )
        )
    tools = tuple(
        Tool(
            t.name,
            t.description,
            _json_object(t.parameters_json, f"tools[{i}].parameters_json", {"type": "object", "properties": {}}) or {},
            t.cache_breakpoint,
        )
        for i, t in enumerate(req.tools)
    )
    choice = ToolChoice(_CHOICE.get(req.tool_choice.mode, "auto"), req.tool_choice.tool_name)  # type: ignore[arg-type]
    if choice.mode == "tool" and choice.name not in {t.name for t in tools}:
        raise InvalidArgument(
            f"tool_choice.tool_name {choice.name!r} is not one of the tools",
            [("tool_choice.tool_name", "not one of the tools")],
        )
    fmt_type = _FORMAT.get(req.response_format.type, "text")
    fmt = ResponseFormat(
        fmt_type,  # type: ignore[arg-type]
        req.response_format.schema_name or "answer",
        _json_object(req.response_format.schema_json, "response_format.schema_json", None),
        req.response_format.strict,
    )
    if fmt_type == "json_schema" and fmt.schema is None:
        raise InvalidArgument(
            "response_format.schema_json is required with RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
            [("response_format.schema_json", "required")],
        )
    return ChatRequest(
        model=req.model,
        messages=tuple(messages),
        max_tokens=req.max_tokens,
        temperature=req.temperature if req.HasField("temperature") else None,
        top_p=req.top_p if req.HasField("top_p") else None,
        stop=tuple(req.stop),
        seed=req.seed if req.HasField("seed") else None,
        request_id=req.request_id,
        tenant=req.tenant,
        tools=tools,
        tool_choice=choice,
        response_format=fmt,
        policy="background" if req.routing_policy == router_pb2.ROUTING_POLICY_BACKGROUND else "interactive",
        cascade=req.cascade if req.HasField("cascade") else None,
    )


def decision_to_proto(d: RoutingDecision | None) -> router_pb2.RoutingDecision | None:
    if d is None:
        return None
    return router_pb2.RoutingDecision(
        requested_model=d.requested,
        tier=TIER_TO_PROTO.get(d.tier, router_pb2.MODEL_TIER_UNSPECIFIED),
        method=d.how,
        reason=d.reason,
        complexity_score=d.score,
        classifier=d.classifier,
        cascade_model=d.cascade_from,
    )


def _timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def models_to_proto(catalog: Catalog, router: Router, reload_error: str) -> router_pb2.ListModelsResponse:
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
            tier=TIER_TO_PROTO.get(m.tier, router_pb2.MODEL_TIER_UNSPECIFIED),
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
            )
    return out


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


def event_to_proto(event: RouteEvent) -> router_pb2.GenerateResponse:
    """One domain event as the stream message that carries it."""
    if isinstance(event, TextDelta):
        return router_pb2.GenerateResponse(delta=router_pb2.Delta(text=event.text))
    if isinstance(event, RouteStarted):
        return router_pb2.GenerateResponse(
            started=router_pb2.Started(
                model=event.model,
                provider=event.provider,
                attempt_count=event.attempt_count,
                fallback_path=event.fallback_path,
                decision=decision_to_proto(event.decision),
                deployment=event.deployment,
            )
        )
    if isinstance(event, RouteCompleted):
        return router_pb2.GenerateResponse(
            completed=router_pb2.Completed(
                finish_reason=FINISH_TO_PROTO[event.finish_reason],
                usage=usage_to_proto(event.usage),
                provider_ttft_ms=event.provider_ttft_ms,
                usage_reported=event.usage_reported,
                tool_calls=[
                    router_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments, index=c.index)
                    for c in event.tool_calls
                ],
                cache_write_input_tokens=event.usage.cache_write_input_tokens,
                cost_usd_micros=event.cost_usd_micros,
                discarded_usage=usage_to_proto(event.discarded_usage),
            )
        )
    return router_pb2.GenerateResponse(
        error=router_pb2.Error(
            code=event.code,
            message=event.message,
            reason=event.reason,
            partial_usage=usage_to_proto(event.partial_usage),
        )
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    @rpc_errors(_DOMAIN)
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        events = self.router.generate(request_from_proto(request), _deadline(context))
        # Deltas that arrive together leave as one message: per-message cost dominates fast streams.
        async for event in coalesce(events, merge_deltas):
            yield event_to_proto(event)

    @rpc_errors(_DOMAIN)
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        if not request.HasField("request"):
            raise InvalidArgument("'request' is required", [("request", "the GenerateRequest to answer")])
        out = router_pb2.CompleteResponse()
        parts: list[str] = []
        async for event in self.router.generate(request_from_proto(request.request), _deadline(context)):
            if isinstance(event, TextDelta):
                parts.append(event.text)
                continue
            message = event_to_proto(event)
            kind = message.WhichOneof("event")
            if kind == "started":
                out.started.CopyFrom(message.started)
            elif kind == "completed":
                out.completed.CopyFrom(message.completed)
            elif kind == "error":
                out.error.CopyFrom(message.error)
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
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument(
                f"page_size is {request.page_size}; use 1 to 1000 (0 means 100)", [("page_size", "out of range")]
            )
        size = request.page_size or 100
        found = await self.router.breakers.transitions(size + 1, request.page_token, request.breaker)
        page = found[:size]
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
                for t in page
            ],
            next_page_token=page[-1].id if len(found) > size else "",
        )
