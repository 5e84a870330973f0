"""Variable schemas: checked at publish, applied to every request's variables.

A version's schema is a JSON Schema (Draft 2020-12) of an object. At publish it must parse,
be a valid schema and describe an object; the properties it declares are the only names its
templates may use. Per request, :func:`check_variables` fills in the properties' defaults and
reports everything wrong at once: every missing name in one message, and one field violation
per variable of the wrong type, value, length or shape (``variables.<path>``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from tollway.mesh.errors import InvalidArgument

SCHEMA_FIELD = "content.variables_schema_json"
_DESCRIPTION_MAX = 300


def _short(text: str) -> str:
    return text if len(text) <= _DESCRIPTION_MAX else text[: _DESCRIPTION_MAX - 1] + "…"


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text (for content hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_schema(text: str, max_chars: int) -> dict[str, Any] | None:
    """Parses and checks a variable schema.

    Args:
        text: The schema as JSON text; "" means the template takes no variables.
        max_chars: The most characters it may have.

    Returns:
        The schema, or None for "".

    Raises:
        InvalidArgument: Too long (``SCHEMA_TOO_LARGE``, the limit named), not JSON (line and
            column named), not a valid JSON Schema, or not the schema of an object.
    """
    if not text.strip():
        return None
    if len(text) > max_chars:
        raise InvalidArgument(
            f"the variable schema has {len(text)} characters; the limit is {max_chars} "
            "(TOLLWAY_PROMPTS_MAX_SCHEMA_CHARS)",
            [(SCHEMA_FIELD, f"longer than {max_chars} characters")],
            reason="SCHEMA_TOO_LARGE",
            metadata={"limit": str(max_chars), "size": str(len(text))},
        )
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        why = f"is not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise InvalidArgument(f"{SCHEMA_FIELD} {why}", [(SCHEMA_FIELD, why)], reason="SCHEMA_INVALID") from None
    if not isinstance(schema, dict):
        raise InvalidArgument(
            f"{SCHEMA_FIELD} must be a JSON object (a schema with type object)",
            [(SCHEMA_FIELD, "not an object")],
            reason="SCHEMA_INVALID",
        )
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        why = f"is not a valid JSON Schema at {where}: {_short(exc.message)}"
        raise InvalidArgument(f"{SCHEMA_FIELD} {why}", [(SCHEMA_FIELD, why)], reason="SCHEMA_INVALID") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties", {}), dict):
        why = 'must describe an object: {"type": "object", "properties": {...}}'
        raise InvalidArgument(f"{SCHEMA_FIELD} {why}", [(SCHEMA_FIELD, why)], reason="SCHEMA_INVALID")
    required = schema.get("required", [])
    undeclared = sorted(set(required) - set(schema.get("properties", {})))
    if undeclared:
        why = f"requires {', '.join(undeclared)} without declaring them in properties"
        raise InvalidArgument(f"{SCHEMA_FIELD} {why}", [(SCHEMA_FIELD, why)], reason="SCHEMA_INVALID")
    return schema


def declared_names(schema: Mapping[str, Any] | None) -> frozenset[str]:
    """The variable names a schema declares (its top-level properties)."""
    return frozenset((schema or {}).get("properties", {}))


def check_variables(
    schema: Mapping[str, Any] | None, variables: Mapping[str, Any], max_chars: int, field: str = "variables"
) -> dict[str, Any]:
    """Checks a request's variables against a version's schema.

    Args:
        schema: The version's schema (None: it takes no variables).
        variables: The variables as plain JSON values.
        max_chars: The most characters the variables may have, as compact JSON.
        field: The request field the violations are named after.

    Returns:
        The variables with the schema's defaults filled in for those left out.

    Raises:
        InvalidArgument: ``VARIABLES_TOO_LARGE`` (the limit named), ``VARIABLES_MISSING`` (every
            missing name, each also a violation), ``VARIABLES_INVALID`` (one violation per bad
            variable: type, enum, length, pattern...). Missing and wrong ones are reported
            together.
    """
    size = len(canonical_json(variables))
    if size > max_chars:
        raise InvalidArgument(
            f"the variables have {size} characters as JSON; the limit is {max_chars} "
            "(TOLLWAY_PROMPTS_MAX_VARIABLES_CHARS)",
            [(field, f"larger than {max_chars} characters")],
            reason="VARIABLES_TOO_LARGE",
            metadata={"limit": str(max_chars), "size": str(size)},
        )
    if schema is None:
        if variables:
            names = ", ".join(sorted(variables))
            raise InvalidArgument(
                f"this version takes no variables, but got {names}",
                [(f"{field}.{n}", "not a variable of this version") for n in sorted(variables)],
                reason="VARIABLES_INVALID",
            )
        return {}
    filled = dict(variables)
    for name, prop in schema.get("properties", {}).items():
        if name not in filled and isinstance(prop, dict) and "default" in prop:
            filled[name] = prop["default"]
    missing = [n for n in schema.get("required", []) if n not in filled]
    violations = [(f"{field}.{n}", "required, missing") for n in missing]
    wrong: list[str] = []
    for error in sorted(Draft202012Validator(schema).iter_errors(filled), key=lambda e: list(e.absolute_path)):
        if error.validator == "required" and not error.absolute_path:
            continue  # listed above, all at once
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        wrong.append(path.lstrip(".") or "(all)")
        violations.append((f"{field}{path}", _short(error.message)))
    if not violations:
        return filled
    parts = []
    if missing:
        parts.append(f"missing variables: {', '.join(missing)}")
    if wrong:
        parts.append(f"invalid variables: {', '.join(dict.fromkeys(wrong))}")
    raise InvalidArgument(
        "; ".join(parts),
        violations,
        reason="VARIABLES_MISSING" if missing else "VARIABLES_INVALID",
        metadata={"missing": ",".join(missing)} if missing else None,
    )
