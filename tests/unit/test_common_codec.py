"""The one mapping between shared domain values and protos: both directions, and what decoding refuses."""

from __future__ import annotations

import dataclasses

import pytest

from tollway.cache.v1 import cache_pb2
from tollway.common import codec
from tollway.common.caching import CacheMode, CachePolicy, CacheTier
from tollway.common.chat import (
    ChatMessage,
    ChatRequest,
    ResponseFormat,
    TextDelta,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from tollway.common.codec import chat_request_from_router as request_from_proto
from tollway.common.route import RouteCompleted, RouteStarted, RoutingDecision, StreamFailed
from tollway.common.v1 import common_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat.anthropic import usage_json
from tollway.router.v1 import router_pb2


def proto(**kw: object) -> router_pb2.GenerateRequest:
    msgs = [
        common_pb2.Message(role="user", content="hi"),
        common_pb2.Message(role="assistant", content=""),
        common_pb2.Message(role="tool", content="21"),
    ]
    return router_pb2.GenerateRequest(model="m", messages=msgs, **kw)  # type: ignore[arg-type]


def test_tools_extras_format_and_policy_translate() -> None:
    req = request_from_proto(
        proto(
            tools=[router_pb2.Tool(name="w", description="d", parameters_json='{"type": "object"}')],
            tool_choice=router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_TOOL, tool_name="w"),
            response_format=router_pb2.ResponseFormat(
                type=router_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="s", schema_json='{"type": "object"}'
            ),
            message_extras=[
                router_pb2.MessageExtras(message_index=1, tool_calls=[router_pb2.ToolCall(id="c", name="w")]),
                router_pb2.MessageExtras(message_index=2, tool_call_id="c", cache_breakpoint=True),
            ],
            routing_policy=router_pb2.ROUTING_POLICY_BACKGROUND,
            cascade=True,
        )
    )
    assert req.tools[0].parameters == {"type": "object"} and req.tool_choice.mode == "tool"
    assert req.response_format.type == "json_schema" and req.response_format.schema == {"type": "object"}
    assert req.messages[1].tool_calls[0].arguments == "{}"
    assert req.messages[2].tool_call_id == "c" and req.messages[2].cache_breakpoint
    assert req.policy == "background" and req.cascade is True


def test_defaults_are_interactive_text_no_cascade_preference() -> None:
    req = request_from_proto(proto())
    assert (req.policy, req.response_format.type, req.cascade, req.tool_choice.mode) == (
        "interactive",
        "text",
        None,
        "auto",
    )


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"message_extras": [router_pb2.MessageExtras(message_index=7)]}, "message_extras[0].message_index"),
        ({"tools": [router_pb2.Tool(name="w", parameters_json="{nope")]}, "tools[0].parameters_json"),
        ({"tools": [router_pb2.Tool(name="w", parameters_json="[1]")]}, "tools[0].parameters_json"),
        (
            {"tool_choice": router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_TOOL, tool_name="x")},
            "tool_choice.tool_name",
        ),
        (
            {"response_format": router_pb2.ResponseFormat(type=router_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)},
            "response_format.schema_json",
        ),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        request_from_proto(proto(**kw))
    assert info.value.violations[0][0] == field


# --- round trips: what one service encodes, the other decodes to the same value -------------


def test_a_full_chat_request_survives_the_router_hop() -> None:
    call = ToolCall("c1", "weather", '{"city": "Paris"}', 0)
    req = ChatRequest(
        model="auto",
        messages=(
            ChatMessage("system", "Use tools.", "s"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "21", tool_call_id="c1", cache_breakpoint=True),
        ),
        max_tokens=64,
        temperature=0.0,
        top_p=0.5,
        stop=("\n",),
        seed=7,
        request_id="r",
        tenant="t",
        tools=(Tool("weather", "d", {"type": "object", "properties": {"city": {"type": "string"}}}, True),),
        tool_choice=ToolChoice("tool", "weather"),
        response_format=ResponseFormat("json_schema", "s", {"type": "object"}, strict=False),
        policy="background",
        cascade=False,
    )
    assert codec.chat_request_from_router(codec.chat_request_to_router(req)) == req


def test_a_plain_request_sends_no_extras_and_decodes_to_defaults() -> None:
    req = ChatRequest("m", (ChatMessage("user", "hi"),), max_tokens=5)
    wire = codec.chat_request_to_router(req)
    assert not wire.message_extras and not wire.tools
    assert not wire.HasField("tool_choice") and not wire.HasField("response_format")
    assert not wire.HasField("temperature") and not wire.HasField("cascade")
    assert wire.prompt_tokens == 0 and codec.chat_request_to_router(req, 37).prompt_tokens == 37
    # An absent ResponseFormat reads as the proto's defaults (strict off); a text answer ignores strict.
    assert codec.chat_request_from_router(wire) == dataclasses.replace(
        req, response_format=ResponseFormat(strict=False)
    )


@pytest.mark.parametrize(
    "event",
    [
        TextDelta("hello"),
        RouteStarted(
            "m",
            "p",
            2,
            ("a (RATE_LIMITED)",),
            RoutingDecision("auto", "m", "small", "auto", "short", 0.25, "heuristic", "s"),
            "p/m/d",
        ),
        RouteStarted("m", "p", 1),
        RouteCompleted(
            "tool_calls",
            Usage(10, 5, 2, 3),
            True,
            40,
            (ToolCall("c", "w", "{}", 0),),
            cost_usd_micros=12,
            discarded_usage=Usage(1, 1, 0, 0),
        ),
        StreamFailed(14, "cut", "PROVIDER_STREAM_CUT", Usage(3, 1, 0, 0)),
    ],
    ids=lambda e: type(e).__name__,
)
def test_route_events_survive_the_router_hop(event: object) -> None:
    msg = codec.route_event_to_proto(event)  # type: ignore[arg-type]
    kind = msg.WhichOneof("event")
    decoded = {
        "delta": lambda: TextDelta(msg.delta.text),
        "started": lambda: codec.route_started_from_proto(msg.started),
        "completed": lambda: codec.route_completed_from_proto(msg.completed),
        "error": lambda: codec.stream_failed_from_proto(msg.error),
    }[kind]()
    assert decoded == event


def test_a_whole_answer_is_filled_as_the_messages_built_field_by_field() -> None:
    started = RouteStarted(
        "m",
        "p",
        2,
        ("a (RATE_LIMITED)",),
        RoutingDecision("auto", "m", "small", "auto", "short", 0.25, "heuristic", "s"),
        "p/m/d",
    )
    completed = RouteCompleted("stop", Usage(0, 0, 0, 0), False, 0)
    out = router_pb2.CompleteResponse()
    codec.route_started_into(out.started, started)
    codec.route_completed_into(out.completed, completed)
    assert out.started == router_pb2.Started(
        model="m",
        provider="p",
        attempt_count=2,
        fallback_path=["a (RATE_LIMITED)"],
        decision=router_pb2.RoutingDecision(
            requested_model="auto",
            tier=router_pb2.MODEL_TIER_SMALL,
            method="auto",
            reason="short",
            complexity_score=0.25,
            classifier="heuristic",
            cascade_model="s",
        ),
        deployment="p/m/d",
    )
    assert out.completed == router_pb2.Completed(
        finish_reason=codec.finish_reason_to_proto("stop"), usage=common_pb2.Usage(), discarded_usage=common_pb2.Usage()
    )
    # All-zero usages are still present, as when they were built apart and passed in.
    assert out.completed.HasField("usage") and out.completed.HasField("discarded_usage")
    assert not router_pb2.Started(model="m").HasField("decision")
    bare = router_pb2.CompleteResponse()
    codec.route_started_into(bare.started, RouteStarted("m", "p", 1))
    assert not bare.started.HasField("decision")


def test_every_finish_reason_tier_and_mode_maps_both_ways() -> None:
    for reason in ("stop", "length", "tool_calls", "content_filter", ""):
        assert codec.finish_reason_from_proto(codec.finish_reason_to_proto(reason)) == reason  # type: ignore[arg-type]
    assert {codec.cache_tier_to_proto(t) for t in CacheTier} == set(common_pb2.CacheTier.values())
    assert all(codec.cache_tier_from_proto(codec.cache_tier_to_proto(t)) is t for t in CacheTier)
    assert {codec.cache_mode_to_proto(m) for m in CacheMode} == set(common_pb2.CacheMode.values())
    assert all(codec.cache_mode_from_proto(codec.cache_mode_to_proto(m)) is m for m in CacheMode)


def test_unknown_numbers_decode_to_the_neutral_value() -> None:
    assert codec.finish_reason_from_proto(99) == "" and codec.finish_reason_from_proto(0, "stop") == "stop"
    assert codec.cache_tier_from_proto(99) is CacheTier.NOT_CONSULTED
    assert codec.cache_mode_from_proto(99) is None
    assert codec.cache_policy_from_proto(common_pb2.CachePolicy(mode=99)) == CachePolicy("default", CacheMode.NORMAL)
    assert codec.cache_policy_from_proto(
        common_pb2.CachePolicy(namespace="n", mode=common_pb2.CACHE_MODE_REFRESH)
    ) == CachePolicy("n", CacheMode.REFRESH)


def test_every_fingerprint_field_is_filled_from_the_request() -> None:
    req = ChatRequest(
        "m", (ChatMessage("user", "hi", "u"),), max_tokens=5, temperature=0.5, top_p=0.9, stop=("x",), seed=3
    )
    fp = codec.fingerprint_to_proto(req, prompt_template="t", prompt_version="2")
    unset = [
        f.name
        for f in cache_pb2.RequestFingerprint.DESCRIPTOR.fields
        if (not getattr(fp, f.name) if f.is_repeated or not f.has_presence else not fp.HasField(f.name))
    ]
    assert not unset, f"RequestFingerprint fields fingerprint_to_proto leaves unset: {unset}"
    assert list(fp.messages) == [common_pb2.Message(role="user", content="hi", name="u")]


def test_unset_sampling_parameters_stay_unset_in_the_fingerprint() -> None:
    fp = codec.fingerprint_to_proto(ChatRequest("m", (ChatMessage("user", "hi"),)))
    assert not fp.HasField("temperature") and not fp.HasField("top_p") and not fp.HasField("seed")


def test_cache_writes_travel_in_usage_and_reach_the_anthropic_surface_apart() -> None:
    usage = Usage(input_tokens=1200, output_tokens=7, cached_input_tokens=800, cache_write_input_tokens=300)
    wire = codec.usage_to_proto(usage)
    assert codec.usage_from_proto(wire) == usage
    # A message that carried the writes in its own field (the router's Completed) still decodes.
    old = common_pb2.Usage(input_tokens=1200, output_tokens=7, cached_input_tokens=800)
    assert codec.usage_from_proto(old, 300) == usage
    # Anthropic counts read and written prompt tokens apart from its input_tokens.
    assert usage_json(wire) == {
        "input_tokens": 100,
        "output_tokens": 7,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 800,
    }
