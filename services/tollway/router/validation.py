"""Is a cheap model's answer good enough to keep? The cascade's acceptance test.

:func:`check_answer` returns why an answer fails (empty, cut by the token limit, a
refusal or an admission of not knowing, JSON that does not parse or does not match the
requested schema), or "" when it passes. The schema check covers the JSON Schema subset
structured outputs use: type, properties, required, additionalProperties: false, items,
enum, const, and numeric/string/array bounds.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tollway.common.chat import ChatRequest
from tollway.router.types import Completion

_GIVES_UP = re.compile(
    r"^\s*(i'?m sorry|sorry,|i apologi[sz]e|"
    r"i (?:can(?:no|')t|am unable to|don'?t know|do not know|'m not sure|am not sure))"
    r"|\bas an ai(?: language model)?\b",
    re.IGNORECASE,
)

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (empty when it conforms)."""
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        options = kinds if isinstance(kinds, list) else [kinds]
        ok = False
        for kind in options:
            allowed = _TYPES.get(kind, (object,))
            # bool is an int in Python but not in JSON.
            if isinstance(value, allowed) and not (isinstance(value, bool) and kind in ("integer", "number")):
                ok = True
        if not ok:
            return [f"{path}: expected {' or '.join(options)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                errors.append(f"{path}: missing required property {name!r}")
        for name, item in value.items():
            if name in props:
                errors += schema_errors(item, props[name], f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected property {name!r}")
    if isinstance(value, list):
        if "items" in schema and isinstance(schema["items"], dict):
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    return errors


def check_answer(completion: Completion, request: ChatRequest) -> str:
    """Why the answer should be escalated to a bigger model, or "" when it is acceptable."""
    text = completion.text.strip()
    if not text and not completion.tool_calls:
        return "empty answer"
    if completion.finish_reason == "length":
        return "answer cut at the token limit"
    if completion.finish_reason == "content_filter":
        return "answer withheld by the provider's filter"
    if request.tools and request.tool_choice.mode in ("required", "tool") and not completion.tool_calls:
        return "a tool call was required and none was made"
    fmt = request.response_format
    if fmt.wants_json and not completion.tool_calls:
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"answer is not valid JSON ({exc.msg} at {exc.pos})"
        if not isinstance(value, dict):
            return "answer is JSON but not an object"
        if fmt.type == "json_schema" and fmt.schema:
            problems = schema_errors(value, fmt.schema)
            if problems:
                return "answer does not match the schema: " + "; ".join(problems[:3])
        return ""
    if _GIVES_UP.search(text[:200]):
        return "the model declined or said it does not know"
    return ""
