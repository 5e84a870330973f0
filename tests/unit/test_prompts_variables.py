"""Variable schemas: checked at publish; every request's variables checked against them."""

from __future__ import annotations

import json

import pytest

from tollway.mesh.errors import InvalidArgument
from tollway.prompts.variables import check_variables, declared_names, parse_schema

SCHEMA = {
    "type": "object",
    "required": ["ticket", "lang", "count"],
    "properties": {
        "ticket": {"type": "string", "minLength": 1, "maxLength": 20},
        "lang": {"type": "string", "enum": ["en", "fr"]},
        "count": {"type": "integer", "minimum": 1},
        "tone": {"type": "string", "default": "plain"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
}


def parsed() -> dict:
    schema = parse_schema(json.dumps(SCHEMA), 10_000)
    assert schema is not None
    return schema


def test_valid_variables_get_the_schema_defaults() -> None:
    out = check_variables(parsed(), {"ticket": "t", "lang": "en", "count": 2}, 10_000)
    assert out == {"ticket": "t", "lang": "en", "count": 2, "tone": "plain"}


def test_every_missing_variable_is_named_in_one_error() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_variables(parsed(), {"lang": "en"}, 10_000)
    err = info.value
    assert err.reason == "VARIABLES_MISSING"
    assert err.message == "missing variables: ticket, count"
    assert ("variables.ticket", "required, missing") in err.violations
    assert ("variables.count", "required, missing") in err.violations
    assert err.metadata["missing"] == "ticket,count"


def test_a_field_violation_per_wrong_variable_together_with_the_missing_ones() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_variables(parsed(), {"ticket": 5, "lang": "de", "tags": ["a", 1, "c"]}, 10_000)
    err = info.value
    fields = {f for f, _ in err.violations}
    assert {"variables.ticket", "variables.lang", "variables.count", "variables.tags", "variables.tags[1]"} <= fields
    assert "missing variables: count" in err.message and "invalid variables:" in err.message
    by_field = dict(err.violations)
    assert "not of type 'string'" in by_field["variables.ticket"]
    assert "is not one of ['en', 'fr']" in by_field["variables.lang"]


def test_lengths_and_ranges_are_checked() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_variables(parsed(), {"ticket": "x" * 21, "lang": "en", "count": 0}, 10_000)
    assert {f for f, _ in info.value.violations} == {"variables.ticket", "variables.count"}
    assert info.value.reason == "VARIABLES_INVALID"


def test_oversized_variables_name_the_limit() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_variables(parsed(), {"ticket": "x" * 500}, 100)
    assert info.value.reason == "VARIABLES_TOO_LARGE"
    assert "TOLLWAY_PROMPTS_MAX_VARIABLES_CHARS" in info.value.message and info.value.metadata["limit"] == "100"


def test_a_version_without_schema_takes_no_variables() -> None:
    assert check_variables(None, {}, 100) == {}
    with pytest.raises(InvalidArgument, match="takes no variables, but got x"):
        check_variables(None, {"x": 1}, 100)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"type": "object",\n "properties": {', "is not JSON: line 2, column"),
        ('{"type": "object", "properties": {"a": {"type": "strin"}}}', "is not a valid JSON Schema"),
        ('{"type": "string"}', "must describe an object"),
        ("[1]", "must be a JSON object"),
        ('{"type": "object", "required": ["a"], "properties": {}}', "requires a without declaring"),
    ],
)
def test_bad_schemas_are_refused_at_publish(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_schema(text, 10_000)
    assert why in info.value.message
    assert info.value.reason == "SCHEMA_INVALID"


def test_oversized_schema_names_the_limit() -> None:
    with pytest.raises(InvalidArgument, match="TOLLWAY_PROMPTS_MAX_SCHEMA_CHARS"):
        parse_schema(json.dumps(SCHEMA), 50)


def test_empty_schema_means_no_variables() -> None:
    assert parse_schema("  ", 10) is None
    assert declared_names(None) == frozenset()
    assert declared_names(parsed()) == {"ticket", "lang", "count", "tone", "tags"}
