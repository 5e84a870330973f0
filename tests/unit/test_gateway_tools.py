"""Tools, tool choice, answer formats and tool-call turns through the gateway's API: decoded
once at the edge, refused with the field named, kept out of the cache, and passed on to the
local model in the form its server accepts."""

from __future__ import annotations

import json

import pytest
from llama_cpp.server.types import CreateChatCompletionRequest

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, Tool, ToolCall
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.cache_client import cacheable
from tollway.gateway.service import request_from_proto
from tollway.gateway.v1 import gateway_pb2
from tollway.gateway.validation import Limits, check, check_formats
from tollway.mesh.errors import InvalidArgument
from tollway.router.providers import openai_compat

TENANT = Tenant("acme", "k1")
WEATHER = common_pb2.Tool(
    name="get_weather",
    description="Current weather",
    parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}',
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def generate(**fields: object) -> gateway_pb2.GenerateRequest:
    fields.setdefault("messages", [common_pb2.Message(role="user", content="weather in Paris?")])
    return gateway_pb2.GenerateRequest(model="m", **fields)  # type: ignore[arg-type]


def translated(req: gateway_pb2.GenerateRequest | gateway_pb2.CompleteRequest) -> ChatRequest:
    check(req, Limits())
    chat = request_from_proto(req, TENANT, 256).chat
    check_formats(chat)
    return chat


def refused(req: gateway_pb2.GenerateRequest) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        translated(req)
    return info.value


@pytest.mark.parametrize("cls", [gateway_pb2.GenerateRequest, gateway_pb2.CompleteRequest])
def test_tools_choice_format_and_tool_turns_reach_the_domain(cls: type) -> None:
    req = cls(
        model="m",
        messages=[
            common_pb2.Message(role="user", content="weather in Paris?"),
            common_pb2.Message(role="assistant", content=""),
            common_pb2.Message(role="tool", content='{"temp_c": 21}'),
        ],
        tools=[WEATHER],
        tool_choice=common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL, tool_name="get_weather"),
        response_format=common_pb2.ResponseFormat(
            type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="w", schema_json=json.dumps(SCHEMA)
        ),
        message_extras=[
            common_pb2.MessageExtras(
                message_index=1,
                tool_calls=[common_pb2.ToolCall(id="c1", name="get_weather", arguments_json='{"city":"Paris"}')],
            ),
            common_pb2.MessageExtras(message_index=2, tool_call_id="c1"),
        ],
    )
    chat = translated(req)
    assert chat.tools == (Tool("get_weather", "Current weather", json.loads(WEATHER.parameters_json)),)
    assert (chat.tool_choice.mode, chat.tool_choice.name) == ("tool", "get_weather")
    assert chat.response_format == ResponseFormat("json_schema", "w", SCHEMA, strict=False)
    assert chat.messages[0] == ChatMessage("user", "weather in Paris?")
    assert chat.messages[1].tool_calls == (ToolCall("c1", "get_weather", '{"city":"Paris"}'),)
    assert chat.messages[2].tool_call_id == "c1"


def test_without_the_new_fields_nothing_changes() -> None:
    chat = translated(generate())
    assert chat.tools == () and not chat.response_format.wants_json
    assert cacheable(chat)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [common_pb2.Tool(name="get weather")]}, "tools[0].name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [common_pb2.Tool(name="t", description="x" * 4097)]}, "tools[0].description"),
        ({"tools": [common_pb2.Tool(name=f"t{i}") for i in range(129)]}, "tools"),
        (
            {"tool_choice": common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL, tool_name="nope")},
            "tool_choice.tool_name",
        ),
        ({"response_format": common_pb2.ResponseFormat(schema_name="has space")}, "response_format.schema_name"),
    ],
)
def test_bad_tool_fields_are_named_before_decoding(fields: dict[str, object], field: str) -> None:
    assert field in [f for f, _ in refused(generate(**fields)).violations]


def test_tool_parameters_that_are_not_a_json_object_are_refused() -> None:
    error = refused(generate(tools=[common_pb2.Tool(name="t", parameters_json="[1, 2")]))
    assert error.violations[0][0] == "tools[0].parameters_json"


def test_a_forced_tool_with_mode_tool_but_no_name_is_refused() -> None:
    error = refused(generate(tools=[WEATHER], tool_choice=common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL)))
    assert error.violations[0][0] == "tool_choice.tool_name"


def test_json_schema_without_a_schema_is_refused() -> None:
    fmt = common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)
    assert refused(generate(response_format=fmt)).violations[0][0] == "response_format.schema_json"


def test_a_schema_that_is_not_json_schema_is_refused_with_its_path() -> None:
    bad = {"type": "object", "properties": {"city": {"type": "strnig"}}}
    fmt = common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_json=json.dumps(bad))
    error = refused(generate(response_format=fmt))
    assert error.reason == "INVALID_JSON_SCHEMA"
    assert error.violations[0][0] == "response_format.schema.properties.city.type"


def test_an_extra_for_a_missing_message_is_refused() -> None:
    error = refused(generate(message_extras=[common_pb2.MessageExtras(message_index=3, tool_call_id="c")]))
    assert error.violations[0][0] == "message_extras[0].message_index"


def test_tool_call_arguments_must_be_a_json_object() -> None:
    extras = [common_pb2.MessageExtras(message_index=0, tool_calls=[common_pb2.ToolCall(id="c", arguments_json="1")])]
    assert refused(generate(message_extras=extras)).violations[0][0] == "message_extras[0].tool_calls[0].arguments_json"


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [WEATHER]},
        {"response_format": common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)},
        {"message_extras": [common_pb2.MessageExtras(message_index=0, tool_call_id="c")]},
    ],
)
def test_requests_the_cache_cannot_key_bypass_it(fields: dict[str, object]) -> None:
    assert not cacheable(translated(generate(**fields)))


def test_a_text_format_stays_cacheable() -> None:
    fmt = common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_TEXT)
    assert cacheable(translated(generate(response_format=fmt)))


def test_the_local_model_gets_the_schema_in_the_shape_its_server_accepts() -> None:
    fmt = ResponseFormat("json_schema", "w", SCHEMA)
    chat = ChatRequest("smollm2", (ChatMessage("user", "hi"),), response_format=fmt)
    local = Deployment(provider="local", base_url="http://127.0.0.1:8091/v1", upstream_model="smollm2")
    body = openai_compat.request_body(chat, local)
    # Parsed by llama-cpp-python's own request model: the schema survives, so its grammar applies.
    parsed = CreateChatCompletionRequest(**body)
    assert parsed.response_format == {"type": "json_object", "schema": SCHEMA}
    hosted = Deployment(provider="openai", base_url="https://api.openai.com/v1", upstream_model="gpt-4o")
    assert openai_compat.request_body(chat, hosted)["response_format"]["type"] == "json_schema"


def test_a_prompt_cache_breakpoint_does_not_stop_caching() -> None:
    extras = [common_pb2.MessageExtras(message_index=0, cache_breakpoint=True)]
    assert cacheable(translated(generate(message_extras=extras)))
