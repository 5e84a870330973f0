"""gRPC <-> domain translation for tollway.gateway.v1. No request logic lives here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format

from tollway.common import codec
from tollway.common.chat import ChatRequest, TextDelta
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.budget_client import rate_limit_headers, refusal_headers
from tollway.gateway.embed import EmbedCall, Embedder
from tollway.gateway.grounding import DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_TOP_K, RetrievalSpec
from tollway.gateway.lifecycle import Cited, Completed, Failed, Gateway, GatewayEvent, Started, ToolCallDelta
from tollway.gateway.models import list_models
from tollway.gateway.prompts_client import PromptRef
from tollway.gateway.request import GatewayRequest, Priority, check_budget_fields
from tollway.gateway.tiers import model_for_tier
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.gateway.validation import ChatRequestLike, check, check_formats
from tollway.mesh.errors import ResourceExhausted, Unavailable, rpc_errors, to_status

DOMAIN = "gateway.tollway"
PRIORITY_FROM_PROTO: dict[int, Priority] = {
    gateway_pb2.PRIORITY_UNSPECIFIED: "",
    gateway_pb2.PRIORITY_INTERACTIVE: "interactive",
    gateway_pb2.PRIORITY_NORMAL: "normal",
    gateway_pb2.PRIORITY_BATCH: "batch",
}


def _priority(value: int, key_default: str) -> str:
    """The request's priority name; unset takes the key's default (an unknown number stays
    unknown, for check_budget_fields to name)."""
    if value == gateway_pb2.PRIORITY_UNSPECIFIED:
        return key_default
    return PRIORITY_FROM_PROTO.get(value, str(value))


def prompt_ref_from_proto(ref: gateway_pb2.PromptRef) -> PromptRef:
    """The domain PromptRef (variables as plain JSON values; numbers are floats, as in JSON)."""
    return PromptRef(
        template=ref.template,
        label=ref.label,
        version=ref.version,
        variables=json_format.MessageToDict(ref.variables) if ref.HasField("variables") else {},
    )


def retrieval_from_proto(spec: gateway_pb2.Retrieval) -> RetrievalSpec:
    """The domain retrieval spec, defaults filled in (filters as plain JSON values)."""
    return RetrievalSpec(
        collection=spec.collection,
        top_k=spec.top_k or DEFAULT_TOP_K,
        filters=json_format.MessageToDict(spec.filters) if spec.HasField("filters") else {},
        max_context_tokens=spec.max_context_tokens or DEFAULT_MAX_CONTEXT_TOKENS,
    )


def request_from_proto(req: ChatRequestLike, tenant: Tenant, default_max_tokens: int) -> GatewayRequest:
    """The domain request of a checked GenerateRequest or CompleteRequest.

    Args:
        req: The request, already checked by :func:`tollway.gateway.validation.check`.
        tenant: Who the key belongs to.
        default_max_tokens: The answer limit when the request sets none (0). With a
            ``prompt_ref`` it stays 0 here: the prompt version's own default comes first,
            and the lifecycle fills this one in after resolving.
    """
    with_prompt = req.HasField("prompt_ref")
    return GatewayRequest(
        chat=ChatRequest(
            model=req.model,
            messages=codec.messages_from_common(req.messages, req.message_extras),
            max_tokens=req.max_tokens or (0 if with_prompt else default_max_tokens),
            temperature=req.temperature if req.HasField("temperature") else None,
            top_p=req.top_p if req.HasField("top_p") else None,
            stop=tuple(req.stop),
            seed=req.seed if req.HasField("seed") else None,
            request_id=req.request_id or uuid.uuid4().hex,
            tenant=tenant.name,
            tools=codec.tools_from_common(req.tools),
            tool_choice=codec.tool_choice_from_common(req.tool_choice),
            response_format=codec.response_format_from_common(req.response_format),
        ),
        user=req.user,
        feature=req.feature,
        cache=codec.cache_policy_from_proto(req.cache_policy),
        api_key_id=tenant.key_id,
        priority=_priority(req.priority, tenant.priority),  # type: ignore[arg-type]
        conversation_id=req.conversation_id,
        prompt_ref=prompt_ref_from_proto(req.prompt_ref) if with_prompt else None,  # type: ignore[arg-type]
        retrieval=retrieval_from_proto(req.retrieval) if req.HasField("retrieval") else None,  # type: ignore[arg-type]
        settle_before_answer=tenant.delegated,
    )


def _seconds_left(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds until the caller's deadline, or None when it set none.

    No cutoff for "no deadline" sentinels (some clients send the largest grpc-timeout instead
    of none): the lifecycle caps whatever this returns with its own request timeout.
    """
    return context.time_remaining()


def _completed(event: Completed) -> gateway_pb2.Completed:
    out = gateway_pb2.Completed(ttft_ms=event.ttft_ms)
    _completed_into(out, event)
    return out


def _completed_into(out: gateway_pb2.Completed | gateway_pb2.CompleteResponse, event: Completed) -> None:
    """Sets an answer's end (reason, usage, cost, latency, fallback path, tool calls) where it is:
    a whole answer's response has the same fields, and a Completed built and copied in is made twice."""
    out.finish_reason = codec.finish_reason_to_proto(event.finish_reason)
    codec.usage_into(out.usage, event.usage)
    out.cost.SetInParent()
    out.cost.cost_usd_micros = event.cost_usd_micros
    out.latency_ms = event.latency_ms
    if event.fallback_path:
        out.fallback_path.extend(event.fallback_path)
    if event.tool_calls:
        out.tool_calls.extend(codec.tool_call_to_common(c) for c in event.tool_calls)


def _citations(event: Cited) -> list[gateway_pb2.Citation]:
    return [
        gateway_pb2.Citation(
            index=c.index, document=c.document, chunk_id=c.chunk_id, score=c.score, snippet=c.snippet, title=c.title
        )
        for c in event.citations
    ]


def _tool_call_delta(event: ToolCallDelta) -> gateway_pb2.GenerateResponse:
    return gateway_pb2.GenerateResponse(
        tool_call=gateway_pb2.ToolCallDelta(
            index=event.index, id=event.id, name=event.name, arguments_fragment=event.arguments_fragment
        )
    )


def _prompt_fields(out: gateway_pb2.Started | gateway_pb2.CompleteResponse, event: Started) -> None:
    """Names the prompt version in ``out`` (set field by field, so an answer without a
    prompt builds nothing extra)."""
    assert event.prompt is not None
    out.prompt_template = event.prompt.template
    out.prompt_version = event.prompt.version
    out.prompt_resolution = event.prompt.resolution


async def _started_headers(event: Started, context: grpc.aio.ServicerContext, stream: bool) -> None:
    """Sends the remaining-budget headers (``x-ratelimit-*``) and the prompt version's
    (``x-tollway-prompt-*``): Envoy passes them on as HTTP response headers.

    A stream sends them as initial metadata, ahead of its events. A unary answer carries them as
    trailing metadata: grpcio sends those with the answer itself, where initial metadata would
    be a send (and a wait) of its own, and the edge copies them into the JSON answer's headers.
    """
    headers = rate_limit_headers(event.budget) if event.budget is not None else None
    if event.prompt is not None:
        headers = {**(headers or {}), **event.prompt.headers()}
    if not headers:
        return
    if stream:
        await context.send_initial_metadata(tuple(headers.items()))
    else:
        context.set_trailing_metadata(tuple(headers.items()))


async def _refuse(exc: ResourceExhausted, context: grpc.aio.ServicerContext) -> None:
    """Fails the call with the budget's refusal: the usual rich status (QuotaFailure,
    RetryInfo, retry-after) plus the ``x-ratelimit-*`` headers of a 429. A trailers-only
    response, so Envoy turns all of it into the HTTP 429's headers."""
    status = to_status(exc, DOMAIN)
    extra = [(k, v) for k, v in refusal_headers(exc.metadata, exc.retry_after_s).items() if k != "retry-after"]
    await context.abort(status.code, status.details, (*status.trailing_metadata, *extra))


def _is_budget_refusal(exc: ResourceExhausted) -> bool:
    # The budget service's refusals carry the quota in ErrorInfo.metadata (a provider's 429 does not).
    return "unit" in exc.metadata and "limit" in exc.metadata


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway, embedder: Embedder | None = None) -> None:
        self.gateway = gateway
        self.embedder = embedder

    async def _admit(self, request: ChatRequestLike, context: grpc.aio.ServicerContext) -> GatewayRequest:
        """Authenticates, then checks every field, before anything is spent."""
        tenant = await self.gateway.keys.authenticate(context.invocation_metadata() or ())
        limits = self.gateway.limits
        if request.tier:
            request.model = model_for_tier(request.model, request.tier, self.gateway.catalog.routing.tiers)
        check(request, limits)
        admitted = request_from_proto(request, tenant, limits.default_max_tokens)
        check_budget_fields(admitted.priority, admitted.conversation_id)
        check_formats(admitted.chat)
        return admitted

    async def _events(
        self, admitted: GatewayRequest, context: grpc.aio.ServicerContext, stream: bool
    ) -> AsyncIterator[GatewayEvent]:
        """The lifecycle's events, with a budget refusal turned into a 429 with its headers."""
        try:
            # aclosing: if our consumer stops early, the lifecycle's own cleanup (settling the
            # budget, the call record) runs now rather than whenever the generator is collected.
            async with contextlib.aclosing(
                self.gateway.generate(admitted, _seconds_left(context), stream=stream)
            ) as events:
                async for event in events:
                    if isinstance(event, Started):
                        await _started_headers(event, context, stream)
                    yield event
        except ResourceExhausted as exc:
            if not _is_budget_refusal(exc):
                raise
            await _refuse(exc, context)

    @rpc_errors(DOMAIN)
    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        admitted = await self._admit(request, context)
        async for event in self._events(admitted, context, stream=True):
            if isinstance(event, TextDelta):
                yield gateway_pb2.GenerateResponse(delta=gateway_pb2.Delta(text=event.text))
            elif isinstance(event, Started):
                response = gateway_pb2.GenerateResponse(
                    started=gateway_pb2.Started(
                        request_id=event.request_id,
                        model=event.model,
                        provider=event.provider,
                        attempt_count=event.attempt_count,
                        cache_tier=codec.cache_tier_to_proto(event.cache_tier),
                        degraded=event.degraded,
                        fallback_path=event.fallback_path,
                    )
                )
                if event.prompt is not None:
                    _prompt_fields(response.started, event)
                yield response
            elif isinstance(event, ToolCallDelta):
                yield _tool_call_delta(event)
            elif isinstance(event, Cited):
                yield gateway_pb2.GenerateResponse(citations=gateway_pb2.Citations(citations=_citations(event)))
            elif isinstance(event, Completed):
                yield gateway_pb2.GenerateResponse(completed=_completed(event))
            elif isinstance(event, Failed):
                yield gateway_pb2.GenerateResponse(
                    error=gateway_pb2.Error(
                        code=event.code,
                        message=event.message,
                        reason=event.reason,
                        partial_usage=codec.usage_to_proto(event.partial_usage),
                    )
                )

    @rpc_errors(DOMAIN)
    async def Complete(
        self, request: gateway_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CompleteResponse:
        admitted = await self._admit(request, context)
        out = gateway_pb2.CompleteResponse()
        parts: list[str] = []
        async for event in self._events(admitted, context, stream=False):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Started):
                out.request_id, out.model, out.provider = event.request_id, event.model, event.provider
                out.attempt_count = event.attempt_count
                out.cache_tier = codec.cache_tier_to_proto(event.cache_tier)
                out.degraded = event.degraded
                if event.prompt is not None:
                    _prompt_fields(out, event)
            elif isinstance(event, Completed):
                _completed_into(out, event)
            elif isinstance(event, Cited):
                out.citations.extend(_citations(event))
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
        return gateway_pb2.ListModelsResponse(
            models=[
                gateway_pb2.ModelInfo(
                    name=m.name,
                    alias_of=m.alias_of,
                    provider=m.provider,
                    tier=m.tier,
                    context_window=m.context_window,
                    input_price_usd_micros_per_million=m.input_price_usd_micros_per_million,
                    output_price_usd_micros_per_million=m.output_price_usd_micros_per_million,
                )
                for m in list_models(self.gateway.catalog)
            ]
        )

    @rpc_errors(DOMAIN)
    async def GetCaller(
        self, request: gateway_pb2.GetCallerRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetCallerResponse:
        tenant = await self.gateway.keys.authenticate(context.invocation_metadata() or ())
        priority = {name: value for value, name in PRIORITY_FROM_PROTO.items()}.get(tenant.priority, 0)
        return gateway_pb2.GetCallerResponse(tenant=tenant.name, key_id=tenant.key_id, default_priority=priority)  # type: ignore[arg-type]

    @rpc_errors(DOMAIN)
    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedResponse:
        tenant = await self.gateway.keys.authenticate(context.invocation_metadata() or ())
        if self.embedder is None:
            raise Unavailable("this gateway serves no embeddings", reason="EMBEDDING_UNAVAILABLE")
        call = EmbedCall(
            model=request.model,
            inputs=tuple(request.inputs),
            dimensions=request.dimensions,
            user=request.user,
            feature=request.feature,
            request_id=request.request_id,
            priority=_priority(request.priority, ""),
        )
        try:
            result = await self.embedder.embed(call, tenant, _seconds_left(context))
        except ResourceExhausted as exc:
            if not _is_budget_refusal(exc):
                raise
            await _refuse(exc, context)
            raise
        if result.hold is not None:
            # The remaining-budget headers (x-ratelimit-*), as a unary chat answer sends them.
            context.set_trailing_metadata(tuple(rate_limit_headers(result.hold).items()))
        reply = result.reply
        out = gateway_pb2.EmbedResponse(
            request_id=result.request_id,
            model=result.model,
            dimensions=reply.dimension,
            usage=codec.usage_to_proto(result.usage),
            cost=common_pb2.Cost(cost_usd_micros=result.cost_usd_micros),
            cache_hit_count=reply.cache_hit_count,
        )
        for e in reply.embeddings:
            out.embeddings.add(values=e.values, truncated=e.truncated)
        return out
