"""Tools, tool choices, tool calls and answer formats of the three APIs <-> the gateway's
(``tollway.common.v1`` Tool, ToolChoice, ToolCall, MessageExtras, ResponseFormat). Pure functions.

The JSON Schemas travel as JSON text; the gateway checks that they are valid JSON Schema and
refuses a model without the ``tools`` or ``json`` capability, naming it.
"""

from __future__ import annotations

import json
from typing import Any

from tollway.common.v1 import common_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat.fields import bad as _bad
from tollway.openai_compat.fields import string as _string

_MODES = {
    "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": common_pb2.TOOL_CHOICE_MODE_NONE,
    "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def _schema(value: Any, where: str) -> str:
    if value is None:
        return ""
    if type(value) is not dict:
        raise _bad(where, "a JSON Schema object", value)
    return json.dumps(value, separators=(",", ":"))


def openai_tools(value: Any, where: str = "tools") -> list[common_pb2.Tool]:
    """Chat Completions ``tools``: ``[{type: function, function: {name, description, parameters}}]``."""
    if type(value) is not list:
        raise _bad(where, "an array of tools", value)
    out = []
    for i, tool in enumerate(value):
        at = f"{where}[{i}]"
        if type(tool) is not dict or tool.get("type") != "function" or type(tool.get("function")) is not dict:
            raise InvalidArgument(
                f"{at} must be {{type: 'function', function: {{name, description, parameters}}}}; "
                "only function tools are supported",
                [(at, "a function tool")],
            )
        fn = tool["function"]
        out.append(_tool(fn.get("name"), fn.get("description"), fn.get("parameters"), f"{at}.function"))
    return out


def responses_tools(value: Any) -> list[common_pb2.Tool]:
    """Responses ``tools``: ``[{type: function, name, description, parameters}]`` (flat)."""
    if type(value) is not list:
        raise _bad("tools", "an array of tools", value)
    out = []
    for i, tool in enumerate(value):
        at = f"tools[{i}]"
        if type(tool) is not dict or tool.get("type") != "function":
            kind = tool.get("type") if type(tool) is dict else None
            raise InvalidArgument(
                f"{at} is a {kind!r} tool; only function tools are supported (no hosted tools)",
                [(f"{at}.type", "'function'")],
                reason="CAPABILITY_UNSUPPORTED",
            )
        out.append(_tool(tool.get("name"), tool.get("description"), tool.get("parameters"), at))
    return out


def anthropic_tools(value: Any) -> list[common_pb2.Tool]:
    """Messages ``tools``: ``[{name, description, input_schema}]`` (client tools only)."""
    if type(value) is not list:
        raise _bad("tools", "an array of tools", value)
    out = []
    for i, tool in enumerate(value):
        at = f"tools[{i}]"
        if type(tool) is not dict:
            raise _bad(at, "a tool object", tool)
        if tool.get("type") not in (None, "custom"):
            raise InvalidArgument(
                f"{at} is a {tool.get('type')!r} tool; only client tools (name, input_schema) are supported",
                [(f"{at}.type", "a client tool")],
                reason="CAPABILITY_UNSUPPORTED",
            )
        out.append(_tool(tool.get("name"), tool.get("description"), tool.get("input_schema"), at))
        out[-1].cache_breakpoint = tool.get("cache_control") is not None
    return out


def _tool(name: Any, description: Any, parameters: Any, at: str) -> common_pb2.Tool:
    if type(name) is not str or not name:
        raise _bad(f"{at}.name", "a non-empty string", name)
    return common_pb2.Tool(
        name=name,
        description=_string(description, f"{at}.description"),
        parameters_json=_schema(parameters, f"{at}.parameters"),
    )


def openai_tool_choice(value: Any, where: str = "tool_choice") -> common_pb2.ToolChoice:
    """``"auto" | "none" | "required" | {type: function, function: {name}}`` (Responses: ``{type, name}``)."""
    if type(value) is str and value in _MODES:
        return common_pb2.ToolChoice(mode=_MODES[value])
    if type(value) is dict and value.get("type") == "function":
        fn = value.get("function") if type(value.get("function")) is dict else value
        name = fn.get("name")
        if type(name) is str and name:
            return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL, tool_name=name)
    raise _bad(where, "'auto', 'none', 'required' or {type: 'function', function: {name}}", value)


def anthropic_tool_choice(value: Any) -> common_pb2.ToolChoice:
    """``{type: auto | any | none | tool, name}``."""
    kind = value.get("type") if type(value) is dict else None
    if kind == "auto":
        return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_AUTO)
    if kind == "any":
        return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED)
    if kind == "none":
        return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE)
    if kind == "tool" and type(value.get("name")) is str and value.get("name"):
        return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL, tool_name=value["name"])
    raise _bad("tool_choice", "{type: 'auto' | 'any' | 'none'} or {type: 'tool', name}", value)


def openai_response_format(value: Any) -> common_pb2.ResponseFormat:
    """Chat Completions ``response_format``: ``{type: text | json_object | json_schema, json_schema}``."""
    kind = value.get("type") if type(value) is dict else None
    if kind == "text":
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_TEXT)
    if kind == "json_object":
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if type(spec) is not dict:
            raise _bad("response_format.json_schema", "an object {name, schema, strict}", spec)
        return _json_schema(spec, "response_format.json_schema")
    raise _bad("response_format", "{type: 'text' | 'json_object' | 'json_schema'}", value)


def responses_text_format(value: Any) -> common_pb2.ResponseFormat:
    """Responses ``text.format``: ``{type: text | json_object | json_schema, name, schema, strict}``."""
    kind = value.get("type") if type(value) is dict else None
    if kind == "text":
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_TEXT)
    if kind == "json_object":
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if kind == "json_schema":
        return _json_schema(value, "text.format")
    raise _bad("text.format", "{type: 'text' | 'json_object' | 'json_schema'}", value)


def _json_schema(spec: dict[str, Any], at: str) -> common_pb2.ResponseFormat:
    schema = spec.get("schema")
    if type(schema) is not dict:
        raise _bad(f"{at}.schema", "a JSON Schema object", schema)
    strict = spec.get("strict")
    if strict is not None and type(strict) is not bool:
        raise _bad(f"{at}.strict", "a boolean", strict)
    return common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        schema_name=_string(spec.get("name"), f"{at}.name"),
        schema_json=json.dumps(schema, separators=(",", ":")),
        strict=strict is True,
    )


def openai_tool_calls(value: Any, where: str) -> list[common_pb2.ToolCall]:
    """An assistant turn's ``tool_calls``: ``[{id, type: function, function: {name, arguments}}]``."""
    if type(value) is not list:
        raise _bad(where, "an array of tool calls", value)
    out = []
    for i, call in enumerate(value):
        at = f"{where}[{i}]"
        fn = call.get("function") if type(call) is dict else None
        if type(fn) is not dict:
            raise _bad(at, "{id, type: 'function', function: {name, arguments}}", call)
        out.append(
            common_pb2.ToolCall(
                id=_string(call.get("id"), f"{at}.id"),
                name=_string(fn.get("name"), f"{at}.function.name"),
                arguments_json=_string(fn.get("arguments"), f"{at}.function.arguments") or "{}",
                index=i,
            )
        )
    return out


def openai_call_json(call: common_pb2.ToolCall) -> dict[str, Any]:
    """One whole tool call in Chat Completions' shape."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
