"""The one mapping between the shared domain values and their protos.

Covers ``tollway.common.v1`` and the per-service messages a value crosses services in: the
router's request and stream (gateway -> router), the cache's request fingerprint (gateway ->
cache), finish reasons, usage, cache tiers and modes. A service's ``service.py`` calls these
instead of mapping the same value a second time.

Decoding raises :class:`tollway.mesh.errors.InvalidArgument` naming the field for input a
domain value cannot hold (malformed JSON text, an extra for a message that does not exist).
"""

from __future__ import annotations

import json
from typing import Any

from tollway.cache.v1 import cache_pb2
from tollway.common import chat
from tollway.common.caching import CacheMode, CachePolicy, CacheTier
from tollway.common.chat import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ResponseFormat,
    TextDelta,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from tollway.common.route import RouteCompleted, RouteEvent, RouteStarted, RoutingDecision, StreamFailed
from tollway.common.v1 import common_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.router.v1 import router_pb2

# --- finish reasons, usage --------------------------------------------------------------

_FINISH_TO_PROTO: dict[FinishReason, int] = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
    "": common_pb2.FINISH_REASON_UNSPECIFIED,
}
_FINISH_FROM_PROTO: dict[int, FinishReason] = {v: k for k, v in _FINISH_TO_PROTO.items()}


def finish_reason_to_proto(reason: FinishReason) -> int:
    """The ``tollway.common.v1.FinishReason`` number of ``reason``."""
    return _FINISH_TO_PROTO[reason]


def finish_reason_from_proto(value: int, unknown: FinishReason = "") -> FinishReason:
    """The finish reason of a proto number; ``unknown`` for UNSPECIFIED or a number this build lacks."""
    return _FINISH_FROM_PROTO.get(value) or unknown


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    """The shared Usage message, cache writes included."""
    out = common_pb2.Usage()
    usage_into(out, usage)
    return out


def usage_from_proto(usage: common_pb2.Usage, cache_write_input_tokens: int = 0) -> Usage:
    """The domain usage; cache writes from the message, or from the enclosing message's own field
    (``cache_write_input_tokens``: the router's Completed had one before Usage did)."""
    writes = usage.cache_write_input_tokens or cache_write_input_tokens
    return Usage(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, writes)


# --- cache tiers, modes, policy ---------------------------------------------------------

_TIER_TO_PROTO: dict[CacheTier, int] = {
    CacheTier.NOT_CONSULTED: common_pb2.CACHE_TIER_UNSPECIFIED,
    CacheTier.MISS: common_pb2.CACHE_TIER_MISS,
    CacheTier.EXACT: common_pb2.CACHE_TIER_EXACT,
    CacheTier.SEMANTIC: common_pb2.CACHE_TIER_SEMANTIC,
    CacheTier.STALE: common_pb2.CACHE_TIER_STALE,
}
_TIER_FROM_PROTO = {v: k for k, v in _TIER_TO_PROTO.items()}
_MODE_TO_PROTO: dict[CacheMode, int] = {
    CacheMode.NORMAL: common_pb2.CACHE_MODE_UNSPECIFIED,
    CacheMode.BYPASS: common_pb2.CACHE_MODE_BYPASS,
    CacheMode.REFRESH: common_pb2.CACHE_MODE_REFRESH,
}
_MODE_FROM_PROTO = {v: k for k, v in _MODE_TO_PROTO.items()}


def cache_tier_to_proto(tier: CacheTier) -> int:
    """The ``tollway.common.v1.CacheTier`` number of ``tier``."""
    return _TIER_TO_PROTO[tier]


def cache_tier_from_proto(value: int) -> CacheTier:
    """The tier of a proto number; NOT_CONSULTED for UNSPECIFIED or a number this build lacks."""
    return _TIER_FROM_PROTO.get(value, CacheTier.NOT_CONSULTED)


def cache_mode_to_proto(mode: CacheMode) -> int:
    """The ``tollway.common.v1.CacheMode`` number of ``mode``."""
    return _MODE_TO_PROTO[mode]


def cache_mode_from_proto(value: int) -> CacheMode | None:
    """The mode of a proto number, or None for a number this build does not know."""
    return _MODE_FROM_PROTO.get(value)


def cache_policy_from_proto(policy: common_pb2.CachePolicy) -> CachePolicy:
    """A request's cache settings; an unknown mode counts as the normal one, as an unset one does."""
    return CachePolicy(policy.namespace or "default", _MODE_FROM_PROTO.get(policy.mode, CacheMode.NORMAL))


# --- messages and the router's request --------------------------------------------------

_TOOL_CHOICE_FROM_PROTO: dict[int, chat.ToolChoiceMode] = {
    router_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    router_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    router_pb2.TOOL_CHOICE_MODE_NONE: "none",
    router_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
    router_pb2.TOOL_CHOICE_MODE_TOOL: "tool",
}
_TOOL_CHOICE_TO_PROTO: dict[chat.ToolChoiceMode, int] = {
    "auto": router_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": router_pb2.TOOL_CHOICE_MODE_NONE,
    "required": router_pb2.TOOL_CHOICE_MODE_REQUIRED,
    "tool": router_pb2.TOOL_CHOICE_MODE_TOOL,
}
_FORMAT_FROM_PROTO: dict[int, chat.ResponseFormatType] = {
    router_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text",
    router_pb2.RESPONSE_FORMAT_TYPE_TEXT: "text",
    router_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    router_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}
_FORMAT_TO_PROTO: dict[chat.ResponseFormatType, int] = {
    "text": router_pb2.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": router_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": router_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}
_DEFAULT_FORMAT = ResponseFormat()
_DEFAULT_CHOICE = ToolChoice()


def message_to_proto(message: ChatMessage) -> common_pb2.Message:
    """The shared Message (role, content, name); the router's extras travel separately."""
    return common_pb2.Message(role=message.role, content=message.content, name=message.name)


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


def _tool_call_from_proto(c: router_pb2.ToolCall, field: str) -> ToolCall:
    _json_object(c.arguments_json, f"{field}.arguments_json", {})
    return ToolCall(c.id, c.name, c.arguments_json or "{}", c.index)


def tool_call_to_proto(call: ToolCall) -> router_pb2.ToolCall:
    """The router's ToolCall message."""
    return router_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments, index=call.index)


def chat_request_to_router(req: ChatRequest, prompt_tokens: int = 0) -> router_pb2.GenerateRequest:
    """The router's GenerateRequest for ``req``; defaults are left unset so the message stays small.

    ``prompt_tokens``: the prompt's tokens when the caller counted them already (0: unknown).
    """
    out = router_pb2.GenerateRequest(
        request_id=req.request_id,
        model=req.model,
        messages=[message_to_proto(m) for m in req.messages],
        max_tokens=req.max_tokens,
        stop=req.stop,
        tenant=req.tenant,
        prompt_tokens=prompt_tokens,
    )
    if req.temperature is not None:
        out.temperature = req.temperature
    if req.top_p is not None:
        out.top_p = req.top_p
    if req.seed is not None:
        out.seed = req.seed
    if req.cascade is not None:
        out.cascade = req.cascade
    if req.allow_model_fallback is not None:
        out.allow_model_fallback = req.allow_model_fallback
    if req.policy == "background":
        out.routing_policy = router_pb2.ROUTING_POLICY_BACKGROUND
    for i, m in enumerate(req.messages):
        if m.has_extras:
            out.message_extras.add(
                message_index=i,
                tool_calls=[tool_call_to_proto(c) for c in m.tool_calls],
                tool_call_id=m.tool_call_id,
                cache_breakpoint=m.cache_breakpoint,
            )
    for t in req.tools:
        out.tools.add(
            name=t.name,
            description=t.description,
            parameters_json=json.dumps(t.parameters),
            cache_breakpoint=t.cache_breakpoint,
        )
    if req.tool_choice != _DEFAULT_CHOICE:
        out.tool_choice.mode = _TOOL_CHOICE_TO_PROTO[req.tool_choice.mode]
        out.tool_choice.tool_name = req.tool_choice.name
    fmt = req.response_format
    if fmt != _DEFAULT_FORMAT:
        out.response_format.type = _FORMAT_TO_PROTO[fmt.type]
        out.response_format.schema_name = fmt.name
        out.response_format.schema_json = json.dumps(fmt.schema) if fmt.schema is not None else ""
        out.response_format.strict = fmt.strict
    return out


def chat_request_from_router(req: router_pb2.GenerateRequest) -> ChatRequest:
    """The domain request of a router GenerateRequest.

    Raises:
        InvalidArgument: Malformed tool or format JSON, an extra for a message that does not
            exist, or a request breaking a rule of :mod:`tollway.common.chat`; names the field.
    """
    chat.check_message_indexes([e.message_index for e in req.message_extras], len(req.messages))
    extras = {extra.message_index: extra for extra in req.message_extras}
    messages = []
    for i, m in enumerate(req.messages):
        extra = extras.get(i)
        if extra is None:
            messages.append(ChatMessage(m.role, m.content, m.name))
            continue
        messages.append(
            ChatMessage(
                m.role,
                m.content,
                m.name,
                tool_calls=tuple(
                    _tool_call_from_proto(c, f"message_extras.tool_calls[{j}]") for j, c in enumerate(extra.tool_calls)
                ),
                tool_call_id=extra.tool_call_id,
                cache_breakpoint=extra.cache_breakpoint,
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
    choice = ToolChoice(_TOOL_CHOICE_FROM_PROTO.get(req.tool_choice.mode, "auto"), req.tool_choice.tool_name)
    chat.check_tool_choice(choice, tools)
    fmt = ResponseFormat(
        _FORMAT_FROM_PROTO.get(req.response_format.type, "text"),
        req.response_format.schema_name or "answer",
        _json_object(req.response_format.schema_json, "response_format.schema_json", None),
        req.response_format.strict,
    )
    chat.check_response_format(fmt)
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
        allow_model_fallback=req.allow_model_fallback if req.HasField("allow_model_fallback") else None,
    )


# --- the router's stream ----------------------------------------------------------------

_MODEL_TIER_TO_PROTO = {
    "small": router_pb2.MODEL_TIER_SMALL,
    "medium": router_pb2.MODEL_TIER_MEDIUM,
    "large": router_pb2.MODEL_TIER_LARGE,
}
_MODEL_TIER_FROM_PROTO = {v: k for k, v in _MODEL_TIER_TO_PROTO.items()}


def model_tier_to_proto(tier: str) -> int:
    """The ``tollway.router.v1.ModelTier`` of a catalog tier name (UNSPECIFIED for an unknown one)."""
    return _MODEL_TIER_TO_PROTO.get(tier, router_pb2.MODEL_TIER_UNSPECIFIED)


def usage_into(out: common_pb2.Usage, usage: Usage) -> None:
    """Fills ``out`` (a message's Usage field) in place; the field is set even when all zero."""
    out.SetInParent()
    out.input_tokens = usage.input_tokens
    out.output_tokens = usage.output_tokens
    out.cached_input_tokens = usage.cached_input_tokens
    out.cache_write_input_tokens = usage.cache_write_input_tokens


def route_started_into(out: router_pb2.Started, event: RouteStarted) -> None:
    """Fills an empty Started field in place: a message built apart and copied in is made twice."""
    out.SetInParent()
    out.model = event.model
    out.provider = event.provider
    out.attempt_count = event.attempt_count
    if event.fallback_path:
        out.fallback_path.extend(event.fallback_path)
    d = event.decision
    if d is not None:
        dp = out.decision
        dp.SetInParent()
        dp.requested_model = d.requested
        dp.tier = model_tier_to_proto(d.tier)
        dp.method = d.how
        dp.reason = d.reason
        dp.complexity_score = d.score
        dp.classifier = d.classifier
        dp.cascade_model = d.cascade_from
    out.deployment = event.deployment


def route_completed_into(out: router_pb2.Completed, event: RouteCompleted) -> None:
    """Fills an empty Completed field in place (see :func:`route_started_into`)."""
    out.SetInParent()
    out.finish_reason = _FINISH_TO_PROTO[event.finish_reason]
    usage_into(out.usage, event.usage)
    out.provider_ttft_ms = event.provider_ttft_ms
    out.usage_reported = event.usage_reported
    if event.tool_calls:
        out.tool_calls.extend(tool_call_to_proto(c) for c in event.tool_calls)
    out.cache_write_input_tokens = event.usage.cache_write_input_tokens
    out.cost_usd_micros = event.cost_usd_micros
    usage_into(out.discarded_usage, event.discarded_usage)


def route_event_to_proto(event: RouteEvent) -> router_pb2.GenerateResponse:
    """One route event as the stream message that carries it."""
    if isinstance(event, TextDelta):
        return router_pb2.GenerateResponse(delta=router_pb2.Delta(text=event.text))
    out = router_pb2.GenerateResponse()
    if isinstance(event, RouteStarted):
        route_started_into(out.started, event)
    elif isinstance(event, RouteCompleted):
        route_completed_into(out.completed, event)
    else:
        e = out.error
        e.code = event.code
        e.message = event.message
        e.reason = event.reason
        usage_into(e.partial_usage, event.partial_usage)
    return out


def route_started_from_proto(s: router_pb2.Started) -> RouteStarted:
    """The domain RouteStarted of a router Started message."""
    decision = None
    if s.HasField("decision"):
        d = s.decision
        decision = RoutingDecision(
            requested=d.requested_model,
            model=s.model,
            tier=_MODEL_TIER_FROM_PROTO.get(d.tier, ""),
            how=d.method,
            reason=d.reason,
            score=d.complexity_score,
            classifier=d.classifier,
            cascade_from=d.cascade_model,
        )
    return RouteStarted(s.model, s.provider, s.attempt_count, tuple(s.fallback_path), decision, s.deployment)


def route_completed_from_proto(c: router_pb2.Completed) -> RouteCompleted:
    """The domain RouteCompleted of a router Completed message."""
    return RouteCompleted(
        _FINISH_FROM_PROTO.get(c.finish_reason, ""),
        usage_from_proto(c.usage, c.cache_write_input_tokens),
        c.usage_reported,
        c.provider_ttft_ms,
        tool_calls=tuple(ToolCall(t.id, t.name, t.arguments_json or "{}", t.index) for t in c.tool_calls),
        cost_usd_micros=c.cost_usd_micros,
        discarded_usage=usage_from_proto(c.discarded_usage),
    )


def stream_failed_from_proto(e: router_pb2.Error) -> StreamFailed:
    """The domain StreamFailed of a router Error message."""
    return StreamFailed(e.code, e.message, e.reason, usage_from_proto(e.partial_usage))


# --- the cache's request fingerprint ----------------------------------------------------


def fingerprint_to_proto(
    req: ChatRequest, *, prompt_template: str = "", prompt_version: str = ""
) -> cache_pb2.RequestFingerprint:
    """The canonical request the cache keys an answer by.

    Every RequestFingerprint field is set here; ``tests/unit/test_common_codec.py`` fails on a
    fingerprint field this function leaves at its default, and ``test_cache_keys.py`` on a
    gateway field that changes the answer but does not reach the key.

    Args:
        req: The request as the model will see it (after prompt resolution, with the effective
            max_tokens, so a change of the default never serves an answer cut at another length).
        prompt_template: The template the messages were rendered from, if any.
        prompt_version: The exact template version used (never a label).
    """
    fp = cache_pb2.RequestFingerprint(
        model=req.model,
        messages=[message_to_proto(m) for m in req.messages],
        max_tokens=req.max_tokens,
        stop=req.stop,
        prompt_template=prompt_template,
        prompt_version=prompt_version,
    )
    if req.temperature is not None:
        fp.temperature = req.temperature
    if req.top_p is not None:
        fp.top_p = req.top_p
    if req.seed is not None:
        fp.seed = req.seed
    return fp


# --- tools and answer formats as the public API carries them (tollway.common.v1) --------
# The gateway's requests carry these shared messages; the router's own copies have the same
# fields and numbers, so the decoding rules (and field paths in errors) are the same.

_COMMON_TOOL_CHOICE: dict[int, chat.ToolChoiceMode] = {
    common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    common_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    common_pb2.TOOL_CHOICE_MODE_NONE: "none",
    common_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
    common_pb2.TOOL_CHOICE_MODE_TOOL: "tool",
}
_COMMON_FORMAT: dict[int, chat.ResponseFormatType] = {
    common_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text",
    common_pb2.RESPONSE_FORMAT_TYPE_TEXT: "text",
    common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}


def tools_from_common(tools: Any) -> tuple[Tool, ...]:
    """The domain tools of repeated ``tollway.common.v1.Tool``.

    Raises:
        InvalidArgument: A ``parameters_json`` that is not a JSON object, naming ``tools[i]``.
    """
    return tuple(
        Tool(
            t.name,
            t.description,
            _json_object(t.parameters_json, f"tools[{i}].parameters_json", {"type": "object", "properties": {}}) or {},
            t.cache_breakpoint,
        )
        for i, t in enumerate(tools)
    )


def tool_choice_from_common(choice: common_pb2.ToolChoice) -> ToolChoice:
    """The domain tool choice; an enum number this build lacks counts as automatic."""
    return ToolChoice(_COMMON_TOOL_CHOICE.get(choice.mode, "auto"), choice.tool_name)


def response_format_from_common(fmt: common_pb2.ResponseFormat) -> ResponseFormat:
    """The domain response format (the schema parsed, not yet checked as a JSON Schema).

    Raises:
        InvalidArgument: ``schema_json`` is not a JSON object, or json_schema comes without one.
    """
    out = ResponseFormat(
        _COMMON_FORMAT.get(fmt.type, "text"),
        fmt.schema_name or "answer",
        _json_object(fmt.schema_json, "response_format.schema_json", None),
        fmt.strict,
    )
    chat.check_response_format(out)
    return out


def messages_from_common(messages: Any, extras: Any) -> tuple[ChatMessage, ...]:
    """The conversation with its per-turn extras (tool calls, tool results) folded in.

    Raises:
        InvalidArgument: An extra naming no message, or tool-call arguments that are not a
            JSON object; names the field.
    """
    chat.check_message_indexes([e.message_index for e in extras], len(messages))
    by_index = {e.message_index: (k, e) for k, e in enumerate(extras)}
    out = []
    for i, m in enumerate(messages):
        if i not in by_index:
            out.append(ChatMessage(m.role, m.content, m.name))
            continue
        k, extra = by_index[i]
        calls = tuple(
            _tool_call_from_proto(c, f"message_extras[{k}].tool_calls[{j}]")  # type: ignore[arg-type]
            for j, c in enumerate(extra.tool_calls)
        )
        out.append(ChatMessage(m.role, m.content, m.name, calls, extra.tool_call_id, extra.cache_breakpoint))
    return tuple(out)


def tool_call_to_common(call: ToolCall) -> common_pb2.ToolCall:
    """The shared ToolCall message of a complete call."""
    return common_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments, index=call.index)
