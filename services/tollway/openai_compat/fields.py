"""Reading one JSON field of a request body: its type checked, its error naming it. Shared by
every surface's translation."""

from __future__ import annotations

from typing import Any

from tollway.mesh.errors import InvalidArgument

# Proto field ranges: a JSON integer outside them cannot be set on the gateway request.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def bad(param: str, what: str, value: Any) -> InvalidArgument:
    """The 400 for one field, naming it and the JSON type that arrived (never its whole value)."""
    got = "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)
    return InvalidArgument(f"'{param}' must be {what}; got {got}", [(param, what)])


def string(value: Any, param: str) -> str:
    """An optional string field: null and absent are ""."""
    if value is None:
        return ""
    if type(value) is not str:
        raise bad(param, "a string", value)
    return value


def integer(value: Any, param: str, low: int, high: int) -> int:
    # bool is an int subclass, but `true` is not a JSON integer.
    if type(value) is not int:
        raise bad(param, "an integer", value)
    if not low <= value <= high:
        raise InvalidArgument(
            f"'{param}' is {value}, outside [{low}, {high}]", [(param, f"an integer in [{low}, {high}]")]
        )
    return value
