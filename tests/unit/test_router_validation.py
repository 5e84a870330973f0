"""The cascade's acceptance test for a cheap model's answer."""

from __future__ import annotations

import pytest

from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, Tool, ToolCall, ToolChoice
from tollway.router.types import Completion
from tollway.router.validation import check_answer, schema_errors

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "temp_c": {"type": "number", "minimum": -90, "maximum": 60},
        "tags": {"type": "array", "items": {"enum": ["sun", "rain"]}, "maxItems": 2},
        "ok": {"type": "boolean"},
    },
    "required": ["city", "temp_c"],
    "additionalProperties": False,
}


def done(text: str, finish: str = "stop", calls: tuple[ToolCall, ...] = ()) -> Completion:
    return Completion(text, calls, finish, None)  # type: ignore[arg-type]


def req(**kw: object) -> ChatRequest:
    return ChatRequest("auto", (ChatMessage("user", "q"),), **kw)  # type: ignore[arg-type]


def test_a_plain_answer_passes() -> None:
    assert check_answer(done("Paris is the capital of France."), req()) == ""


@pytest.mark.parametrize(
    ("text", "finish", "why"),
    [
        ("", "stop", "empty"),
        ("Paris is", "length", "token limit"),
        ("I'm sorry, I can't help with that.", "stop", "declined"),
        ("I don't know the answer.", "stop", "declined"),
        ("As an AI language model, I cannot browse.", "stop", "declined"),
        ("blocked", "content_filter", "filter"),
    ],
)
def test_weak_answers_fail(text: str, finish: str, why: str) -> None:
    assert why in check_answer(done(text, finish), req())


def test_json_must_parse_and_match_the_schema() -> None:
    fmt = ResponseFormat("json_schema", "w", SCHEMA)
    assert check_answer(done('{"city": "Paris", "temp_c": 21.5, "tags": ["sun"]}'), req(response_format=fmt)) == ""
    assert "not valid JSON" in check_answer(done('{"city": '), req(response_format=fmt))
    assert "not an object" in check_answer(done("[1]"), req(response_format=fmt))
    why = check_answer(done('{"city": "Paris", "temp_c": "warm", "x": 1}'), req(response_format=fmt))
    assert "$.temp_c: expected number" in why and "unexpected property 'x'" in why


def test_schema_errors_cover_the_structured_output_subset() -> None:
    assert schema_errors({"city": "", "temp_c": 99, "tags": ["snow", "sun", "rain"], "ok": 1}, SCHEMA) == [
        "$.city: shorter than 1",
        "$.temp_c: above 60",
        "$.tags[0]: 'snow' is not one of ['sun', 'rain']",
        "$.tags: more than 2 items",
        "$.ok: expected boolean, got int",
    ]
    assert schema_errors({"temp_c": True}, SCHEMA) == [
        "$: missing required property 'city'",
        "$.temp_c: expected number, got bool",
    ]


def test_a_required_tool_call_must_be_made() -> None:
    r = req(tools=(Tool("t"),), tool_choice=ToolChoice("required"))
    assert "tool call was required" in check_answer(done("no"), r)
    assert check_answer(done("", "tool_calls", (ToolCall("c", "t", "{}"),)), r) == ""
