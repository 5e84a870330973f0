"""The chat extras, Anthropic Messages and Responses bodies -> gateway requests (issue 16)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.requests import Request

from tollway.common.v1 import common_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import anthropic, chat, tools


def _request(headers: dict[str, str] | None = None) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_chat_tools_choice_format_and_tool_turns() -> None:
    weather = {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    body = _chat(
        tools=[weather],
        tool_choice={"type": "function", "function": {"name": "w"}},
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    )
    req, stream, _, n = chat.parse(body, _request())
    assert (stream, n) == (False, 1)
    assert [t.name for t in req.tools] == ["w"] and json.loads(req.tools[0].parameters_json) == {"type": "object"}
    assert req.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_TOOL and req.tool_choice.tool_name == "w"
    assert req.response_format.type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert [(e.message_index, [c.id for c in e.tool_calls], e.tool_call_id) for e in req.message_extras] == [
        (1, ["c1"], ""),
        (2, [], "c1"),
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 9}, "n"),
        ({"n": 2, "stream": True}, "n"),
        ({"n": True}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"cache": {"mode": "sometimes"}}, "cache.mode"),
        ({"cache": {"ttl": 3}}, "cache"),
        ({"priority": "urgent"}, "priority"),
        ({"tier": 3}, "tier"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_chat_refusals_name_the_field(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        chat.parse(_chat(**extra), _request())
    assert exc.value.violations[0][0] == param


def test_chat_options_in_the_body_and_headers_winning() -> None:
    req, *_ = chat.parse(_chat(cache={"mode": "bypass", "namespace": "ns"}, feature="f", priority="batch"), _request())
    assert req.cache_policy.mode == common_pb2.CACHE_MODE_BYPASS and req.cache_policy.namespace == "ns"
    assert req.feature == "f" and req.priority == 3
    req, *_ = chat.parse(_chat(cache={"mode": "bypass"}), _request({"x-tollway-cache-mode": "refresh"}))
    assert req.cache_policy.mode == common_pb2.CACHE_MODE_REFRESH
    _, _, _, n = chat.parse(_chat(n=3), _request())
    assert n == 3
    # A tier goes to the gateway, which picks the catalog's model for it (tollway.gateway.tiers).
    req, *_ = chat.parse(_chat(model="auto", tier="small"), _request())
    assert (req.model, req.tier) == ("auto", "small")


def test_messages_system_blocks_stops_and_user() -> None:
    req, stream = anthropic.messages_request(
        {
            "model": "m",
            "max_tokens": 9,
            "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u"},
            "stream": True,
        }
    )
    assert [(m.role, m.content) for m in req.messages] == [("system", "be brief"), ("user", "hi")]
    assert req.max_tokens == 9 and list(req.stop) == ["END"] and req.user == "u" and stream


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "top_k": 3}, "top_k"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temprature": 1},
            "temprature",
        ),
    ],
)
def test_messages_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        anthropic.messages_request(body)
    assert exc.value.violations[0][0] == param


def test_count_tokens_grows_with_the_prompt() -> None:
    short = anthropic.count_tokens_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    longer = anthropic.count_tokens_request(
        {"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert short[0] == "m" and 0 < short[1] < longer[1]


def test_anthropic_tool_choices() -> None:
    assert tools.anthropic_tool_choice({"type": "any"}).mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert tools.anthropic_tool_choice({"type": "tool", "name": "w"}).tool_name == "w"
    with pytest.raises(InvalidArgument):
        tools.anthropic_tool_choice({"type": "tool"})


def test_messages_tool_blocks_become_tool_turns() -> None:
    req, _ = anthropic.messages_request(
        {
            "model": "m",
            "max_tokens": 9,
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "checking"},
                        {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ],
        }
    )
    assert [(m.role, m.content) for m in req.messages] == [
        ("user", "weather?"),
        ("assistant", "checking"),
        ("tool", "sunny"),
        ("user", "thanks"),
    ]
    extras = {e.message_index: e for e in req.message_extras}
    assert json.loads(extras[1].tool_calls[0].arguments_json) == {"city": "Paris"}
    assert extras[2].tool_call_id == "t1"
    assert req.tools[0].name == "w" and req.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED


def test_retrieval_option_is_carried_and_checked() -> None:
    req, *_ = chat.parse(
        _chat(retrieval={"collection": "docs", "top_k": 4, "filters": {"team": ["a", "b"]}, "max_context_tokens": 500}),
        _request(),
    )
    assert req.retrieval.collection == "docs" and req.retrieval.top_k == 4
    assert req.retrieval.max_context_tokens == 500 and dict(req.retrieval.filters)["team"] == ["a", "b"]
    for bad, param in (({"top_k": 3}, "retrieval.collection"), ({"collection": "d", "k": 1}, "retrieval.k")):
        with pytest.raises(InvalidArgument) as exc:
            chat.parse(_chat(retrieval=bad), _request())
        assert exc.value.violations[0][0] == param


def test_harmless_defaults_of_uncarried_parameters_pass() -> None:
    chat.parse(_chat(frequency_penalty=0, presence_penalty=0.0, logit_bias={}, modalities=["text"]), _request())


def test_messages_carry_tollway_options() -> None:
    req, _ = anthropic.messages_request(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "cache": {"mode": "bypass"},
         "feature": "f", "retrieval": {"collection": "docs"}}
    )  # fmt: skip
    assert req.cache_policy.mode == common_pb2.CACHE_MODE_BYPASS and req.feature == "f"
    assert req.retrieval.collection == "docs"
