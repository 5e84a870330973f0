"""The shared chat values and the rules a request obeys (no protos involved)."""

from __future__ import annotations

import pytest

from tollway.common.chat import (
    ChatMessage,
    ResponseFormat,
    TextDelta,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
    check_message_indexes,
    check_response_format,
    check_tool_choice,
    merge_deltas,
)
from tollway.mesh.errors import InvalidArgument


def test_usage_adds_field_by_field() -> None:
    assert Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40) == Usage(11, 22, 33, 44)


def test_only_two_text_deltas_merge() -> None:
    assert merge_deltas(TextDelta("a"), TextDelta("b")) == TextDelta("ab")
    assert merge_deltas(TextDelta("a"), object()) is None
    assert merge_deltas(object(), TextDelta("b")) is None


def test_a_message_has_extras_only_with_router_fields() -> None:
    assert not ChatMessage("user", "hi", "u").has_extras
    assert ChatMessage("assistant", "", tool_calls=(ToolCall("c", "w", "{}"),)).has_extras
    assert ChatMessage("tool", "21", tool_call_id="c").has_extras
    assert ChatMessage("user", "hi", cache_breakpoint=True).has_extras


def test_only_a_text_format_does_not_want_json() -> None:
    assert not ResponseFormat().wants_json
    assert ResponseFormat("json_object").wants_json and ResponseFormat("json_schema", schema={}).wants_json


def test_extras_must_name_an_existing_message() -> None:
    check_message_indexes([0, 2], 3)
    with pytest.raises(InvalidArgument) as info:
        check_message_indexes([0, 3], 3)
    assert info.value.violations == [("message_extras[1].message_index", "out of range")]
    with pytest.raises(InvalidArgument):
        check_message_indexes([-1], 3)


def test_a_forced_tool_must_be_offered() -> None:
    tools = (Tool("weather"),)
    check_tool_choice(ToolChoice("tool", "weather"), tools)
    check_tool_choice(ToolChoice("required"), tools)
    check_tool_choice(ToolChoice("auto", "anything"), ())  # only "tool" names one
    with pytest.raises(InvalidArgument) as info:
        check_tool_choice(ToolChoice("tool", "time"), tools)
    assert info.value.violations == [("tool_choice.tool_name", "not one of the tools")]


def test_a_schema_format_needs_its_schema() -> None:
    check_response_format(ResponseFormat("json_schema", schema={"type": "object"}))
    check_response_format(ResponseFormat("json_object"))
    with pytest.raises(InvalidArgument) as info:
        check_response_format(ResponseFormat("json_schema"))
    assert info.value.violations == [("response_format.schema_json", "required")]
