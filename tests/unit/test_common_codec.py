"""Proto -> domain translation of GenerateRequest, and its input checks."""

from __future__ import annotations

import pytest

from tollway.common.v1 import common_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.router.service import request_from_proto
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
