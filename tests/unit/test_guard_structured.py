"""Structured output: lenient parsing, schema checks with paths, the retry loop with feedback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from tollway.common.chat import ChatMessage, ResponseFormat
from tollway.gateway.guard.structured import (
    StructuredOutputInvalid,
    compile_format,
    generate_structured,
    lenient_parse,
)
from tollway.mesh.errors import InvalidArgument

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def schema(s: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat("json_schema", schema=s)


@pytest.mark.parametrize(
    ("text", "value", "repaired"),
    [
        ('{"a": 1}', {"a": 1}, False),
        ("  [1, 2]\n", [1, 2], False),
        ('```json\n{"a": 1}\n```', {"a": 1}, True),
        ('Sure! Here it is:\n```\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}, True),
        ('The answer is {"a": "b"} as requested.', {"a": "b"}, True),
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}, True),
        ("{'a': 'single'}", {"a": "single"}, True),
        ('{name: "unquoted"}', {"name": "unquoted"}, True),
        ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}, True),
        ('{"s": "a } inside", "t": 2}', {"s": "a } inside", "t": 2}, False),
        ('noise {"s": "braces } in strings"} noise', {"s": "braces } in strings"}, True),
    ],
)
def test_lenient_parse(text: str, value: Any, repaired: bool) -> None:
    outcome = lenient_parse(text)
    assert outcome.ok and outcome.value == value and outcome.repaired is repaired


@pytest.mark.parametrize("text", ["", "   ", "no json here at all", "The answer is 42."])
def test_lenient_parse_fails_without_json(text: str) -> None:
    outcome = lenient_parse(text)
    assert not outcome.ok and outcome.error


def test_compile_text_json_object_and_schema() -> None:
    assert compile_format(ResponseFormat()) is None
    obj = compile_format(ResponseFormat("json_object"))
    assert obj is not None and obj.errors({"x": 1}) == [] and obj.errors([1]) != []
    person = compile_format(schema(PERSON))
    assert person is not None
    assert person.errors({"name": "Ann", "age": 3}) == []
    assert person.errors({"name": "Ann", "age": -1}) == ["$.age: -1 is less than the minimum of 0"]
    assert person.errors({"name": "Ann"}) == ["$: 'age' is a required property"]
    assert compile_format(schema(PERSON)) is person  # compiled once per schema


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"type": "objekt"}, "response_format.schema.type"),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "response_format.schema.properties.a.type"),
        ({"type": "object", "required": "name"}, "response_format.schema.required"),
        ({"anyOf": [{"type": "string"}, {"minimum": "x"}]}, "response_format.schema.anyOf[1].minimum"),
    ],
)
def test_an_invalid_schema_is_refused_with_its_path(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        compile_format(schema(bad))
    exc = err.value
    assert exc.code is grpc.StatusCode.INVALID_ARGUMENT and exc.reason == "INVALID_JSON_SCHEMA"
    assert exc.violations[0][0] == field
    assert field in exc.message


def test_a_missing_schema_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="needs a schema object"):
        compile_format(ResponseFormat("json_schema", schema=None))


class Model:
    """Answers from a script and records what it was sent."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[ChatMessage, ...]] = []

    async def __call__(self, messages: tuple[ChatMessage, ...]) -> str:
        self.sent.append(messages)
        return self.answers.pop(0)


ASK = (ChatMessage("user", "Who is Ann? Answer as JSON."),)


async def test_a_valid_first_answer_takes_one_call() -> None:
    model = Model(['{"name": "Ann", "age": 31}'])
    result = await generate_structured(model, ASK, compile_format(schema(PERSON)))  # type: ignore[arg-type]
    assert result.value == {"name": "Ann", "age": 31} and result.attempts == 1 and not result.repaired
    assert result.text == '{"name":"Ann","age":31}'


async def test_a_repairable_answer_is_accepted_without_a_retry() -> None:
    model = Model(['```json\n{"name": "Ann", "age": 31,}\n```'])
    result = await generate_structured(model, ASK, compile_format(schema(PERSON)))  # type: ignore[arg-type]
    assert result.attempts == 1 and result.repaired


async def test_the_validation_error_is_fed_back_on_a_retry() -> None:
    model = Model(['{"name": "Ann"}', '{"name": "Ann", "age": 31}'])
    result = await generate_structured(model, ASK, compile_format(schema(PERSON)))  # type: ignore[arg-type]
    assert result.attempts == 2 and result.answers == ('{"name": "Ann"}', '{"name": "Ann", "age": 31}')
    retry = model.sent[1]
    assert retry[: len(ASK)] == ASK
    assert retry[-2] == ChatMessage("assistant", '{"name": "Ann"}')
    assert retry[-1].role == "user" and "'age' is a required property" in retry[-1].content


async def test_after_two_retries_a_structured_error() -> None:
    model = Model(["not json", '{"name": 1}', '{"name": "Ann", "age": "old"}', "never asked"])
    with pytest.raises(StructuredOutputInvalid) as err:
        await generate_structured(model, ASK, compile_format(schema(PERSON)), model="small")  # type: ignore[arg-type]
    exc = err.value
    assert exc.code is grpc.StatusCode.INTERNAL and exc.reason == "STRUCTURED_OUTPUT_INVALID"
    assert exc.attempts == 3 and len(model.sent) == 3
    assert exc.errors == ["$.age: 'old' is not of type 'integer'"]
    assert exc.metadata["attempts"] == "3" and exc.metadata["model"] == "small"


async def test_retries_are_capped_at_two() -> None:
    model = Model(["x"] * 10)
    with pytest.raises(StructuredOutputInvalid):
        await generate_structured(model, ASK, compile_format(ResponseFormat("json_object")), max_retries=9)  # type: ignore[arg-type]
    assert len(model.sent) == 3
