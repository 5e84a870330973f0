"""Structured output: a lenient parse, validation against the JSON Schema, retries with feedback.

Used when a request asks for ``response_format`` json_object or json_schema and the answer
must be checked by the gateway (a provider that enforces the schema itself still has its
answer checked: enforcement is not universal, and a cut answer is not valid JSON).

- :func:`compile_format` checks the schema once per distinct schema (cached) and refuses an
  invalid one with INVALID_ARGUMENT naming its path (``response_format.schema.properties.a.type``).
- :func:`lenient_parse` takes JSON the way small models write it: fenced in Markdown, after
  a sentence, with trailing commas, single quotes or a missing brace (repaired by
  ``json-repair``); it reports whether a repair was needed.
- :func:`generate_structured` runs the attempt loop: one call, then at most ``max_retries``
  more, each with the previous answer and its validation errors fed back, and raises
  :class:`StructuredOutputInvalid` when the last one still fails.

Streaming: the answer is sent when it is valid, not token by token. Validation needs the
whole document, and a retry replaces the answer: text already streamed cannot be taken
back. A partial-JSON stream would show the client objects that a retry then contradicts,
and a client asking for a schema wants the object, not its prefix.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import json_repair
from jsonschema import exceptions as jsonschema_errors
from jsonschema import validators

from tollway.common.chat import ChatMessage, ResponseFormat
from tollway.mesh.errors import Internal, InvalidArgument
from tollway.mesh.frozen import frozen

__all__ = [
    "CompiledFormat",
    "ParseOutcome",
    "StructuredOutputInvalid",
    "StructuredResult",
    "compile_format",
    "generate_structured",
    "lenient_parse",
]

MAX_RETRIES = 2
_MAX_ERRORS = 5
_FENCE = re.compile(r"```(?:json|JSON|javascript|js)?\s*\n?(.*?)```", re.DOTALL)


class StructuredOutputInvalid(Internal):
    """The model's answer was still not valid after the retries (INTERNAL, as OpenAI reports
    "the model produced invalid content"); ``errors`` holds the last validation errors."""

    def __init__(self, message: str, *, attempts: int, errors: Sequence[str], model: str = "") -> None:
        super().__init__(
            message,
            reason="STRUCTURED_OUTPUT_INVALID",
            metadata={"attempts": str(attempts), "errors": "; ".join(errors)[:1000], "model": model},
        )
        self.attempts = attempts
        self.errors = list(errors)


@frozen
class CompiledFormat:
    """A checked ``response_format``: what an answer must be.

    Attributes:
        wants_object: json_object: any JSON object.
        validator: json_schema: the schema's validator (None for json_object).
    """

    wants_object: bool
    validator: Any = None

    def errors(self, value: Any) -> list[str]:
        """What is wrong with ``value`` (empty when it is valid), at most five, with JSON paths."""
        if self.validator is None:
            return [] if isinstance(value, dict) else [f"$: expected a JSON object, got {type(value).__name__}"]
        out = []
        for err in sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
            out.append(f"{err.json_path}: {err.message}")
            if len(out) == _MAX_ERRORS:
                break
        return out


def compile_format(fmt: ResponseFormat) -> CompiledFormat | None:
    """The checked form of ``fmt`` (None for plain text).

    Raises:
        InvalidArgument: ``fmt.schema`` is not a valid JSON Schema (reason
            ``INVALID_JSON_SCHEMA``); the violation's field is the bad key's path under
            ``response_format.schema``.
    """
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return CompiledFormat(wants_object=True)
    if not isinstance(fmt.schema, dict):
        raise InvalidArgument(
            "response_format json_schema needs a schema object",
            [("response_format.schema", "missing or not an object")],
            reason="INVALID_JSON_SCHEMA",
        )
    try:
        canonical = json.dumps(fmt.schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        why = f"not JSON: {exc}"
        raise InvalidArgument(
            f"response_format.schema is {why}", [("response_format.schema", why)], reason="INVALID_JSON_SCHEMA"
        ) from None
    return _compiled(canonical)


@functools.lru_cache(maxsize=256)
def _compiled(canonical: str) -> CompiledFormat:
    # Schemas repeat across requests (one per feature); building a validator is the dear part.
    schema = json.loads(canonical)
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema_errors.SchemaError as exc:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        field = f"response_format.schema{path}"
        raise InvalidArgument(
            f"response_format.schema is not a valid JSON Schema: {field}: {exc.message}",
            [(field, exc.message)],
            reason="INVALID_JSON_SCHEMA",
            metadata={"path": field},
        ) from None
    return CompiledFormat(wants_object=False, validator=cls(schema))


@frozen
class ParseOutcome:
    """What :func:`lenient_parse` made of an answer.

    Attributes:
        ok: Whether a JSON value was found.
        value: The value (None when not ok).
        repaired: Whether it took more than ``json.loads`` of the stripped text (a fence
            removed, a value cut out of prose, or a repair).
        error: Why nothing was found, for the feedback ("" when ok).
    """

    ok: bool
    value: Any = None
    repaired: bool = False
    error: str = ""


def lenient_parse(text: str) -> ParseOutcome:
    """Finds the JSON value in a model's answer, repairing it where it must.

    Tries, in order: the text as it is; the body of a Markdown code fence; the span from the
    first ``{`` or ``[`` to its matching close (or to the end); and ``json_repair`` on that
    span (trailing commas, single quotes, unquoted keys, a missing close).
    """
    stripped = text.strip()
    if not stripped:
        return ParseOutcome(False, error="the answer was empty")
    try:
        return ParseOutcome(True, json.loads(stripped))
    except ValueError:
        pass
    fence = _FENCE.search(stripped)
    candidate = fence.group(1).strip() if fence else stripped
    start = _first_bracket(candidate)
    if start < 0:
        return ParseOutcome(False, error="the answer holds no JSON object or array")
    span = candidate[start : _matching_close(candidate, start)]
    try:
        return ParseOutcome(True, json.loads(span), repaired=True)
    except ValueError as exc:
        first_error = f"not valid JSON: {exc}"
    repaired = json_repair.repair_json(span, return_objects=True)
    # json_repair answers "" for text it cannot read as JSON at all.
    if repaired == "" and span.strip() not in ('""', "''"):
        return ParseOutcome(False, error=first_error)
    return ParseOutcome(True, repaired, repaired=True)


def _first_bracket(text: str) -> int:
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return min(starts) if starts else -1


def _matching_close(text: str, start: int) -> int:
    """The end (exclusive) of the bracketed value opening at ``start``, strings respected;
    the text's end when it never closes (a cut answer, left to the repair)."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


@frozen
class StructuredResult:
    """A valid structured answer.

    Attributes:
        value: The parsed value.
        text: The value as compact JSON text (what the client receives).
        attempts: Calls made (1 when the first answer was valid).
        repaired: Whether the accepted answer needed the lenient parse.
        answers: Every attempt's raw answer text, in order (for usage and the record's
            counts; never stored as such).
    """

    value: Any
    text: str
    attempts: int
    repaired: bool
    answers: tuple[str, ...]


Attempt = Callable[[tuple[ChatMessage, ...]], Awaitable[str]]
"""One call to the model: the messages to send, the whole answer text back."""


def feedback(answer: str, errors: Sequence[str]) -> tuple[ChatMessage, ChatMessage]:
    """The turns appended for a retry: the model's answer, then what was wrong with it."""
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        ChatMessage("assistant", answer),
        ChatMessage(
            "user",
            "Your previous answer is not valid for the required JSON format:\n"
            f"{listed}\nAnswer again with only the corrected JSON, no other text.",
        ),
    )


async def generate_structured(
    attempt: Attempt,
    messages: Sequence[ChatMessage],
    compiled: CompiledFormat,
    *,
    max_retries: int = MAX_RETRIES,
    model: str = "",
) -> StructuredResult:
    """Calls the model until its answer parses and validates, at most ``1 + max_retries`` times.

    Args:
        attempt: Makes one call (the gateway's: through the router, each call reserving and
            settling its own budget) and returns the whole answer text.
        messages: The request's turns.
        compiled: The checked response format.
        max_retries: Further calls after the first (0 to 2).
        model: Names the model in the error.

    Raises:
        StructuredOutputInvalid: The last answer still did not parse or validate.
        TollwayError: Whatever ``attempt`` raises, unchanged.
    """
    max_retries = max(0, min(max_retries, MAX_RETRIES))
    turns = tuple(messages)
    answers: list[str] = []
    errors: list[str] = []
    for n in range(1, max_retries + 2):
        answer = await attempt(turns)
        answers.append(answer)
        parsed = lenient_parse(answer)
        errors = [f"$: {parsed.error}"] if not parsed.ok else compiled.errors(parsed.value)
        if not errors:
            text = json.dumps(parsed.value, ensure_ascii=False, separators=(",", ":"))
            return StructuredResult(parsed.value, text, n, parsed.repaired, tuple(answers))
        turns = (*turns, *feedback(answer, errors))
    raise StructuredOutputInvalid(
        f"the model{' ' + model if model else ''} did not produce valid JSON for the requested format after "
        f"{len(answers)} attempts ({errors[0]}); retry, simplify the schema or use a larger model",
        attempts=len(answers),
        errors=errors,
        model=model,
    )
