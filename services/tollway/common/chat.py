"""The chat request and answer as every service speaks them, and the rules a request obeys.

Gateway, router and cache exchange these values through :mod:`tollway.common.codec`, the
only place that knows their proto form. Router adapters translate :class:`ChatRequest` into
their provider's wire format; the cache keys answers by its messages and parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from tollway.mesh.errors import InvalidArgument
from tollway.mesh.frozen import frozen

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", ""]
Policy = Literal["interactive", "background"]
ToolChoiceMode = Literal["auto", "none", "required", "tool"]
ResponseFormatType = Literal["text", "json_object", "json_schema"]


@frozen
class ToolCall:
    """A complete call the model asks the caller to make.

    Attributes:
        id: The provider's id for the call; tool results refer to it.
        name: The tool's name.
        arguments: The arguments as a JSON object text (always valid JSON, ``{}`` when empty).
        index: Position of the call within the answer, from 0.
    """

    id: str
    name: str
    arguments: str
    index: int = 0


@frozen
class ChatMessage:
    """One conversation turn.

    Only ``role``, ``content`` and ``name`` travel in ``tollway.common.v1.Message``; the rest
    rides in the router's ``MessageExtras`` and never reaches the gateway or the cache.

    Attributes:
        role: "system", "user", "assistant" or "tool".
        content: The text of the turn.
        name: Optional author name (OpenAI passes it on; others ignore it).
        tool_calls: For an assistant turn, the tool calls it made.
        tool_call_id: For a tool turn, the id of the call it answers.
        cache_breakpoint: Ask providers with explicit prompt caching (Anthropic) to cache the
            prompt up to and including this turn.
    """

    role: str
    content: str
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    cache_breakpoint: bool = False

    @property
    def has_extras(self) -> bool:
        """Whether the turn carries anything beyond role, content and name."""
        return bool(self.tool_calls or self.tool_call_id or self.cache_breakpoint)


def _empty_object_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@frozen
class Tool:
    """A function the model may call.

    Attributes:
        name: The function name (``^[a-zA-Z0-9_-]{1,64}$``).
        description: What it does, for the model.
        parameters: A JSON Schema object describing the arguments.
        cache_breakpoint: Cache the tool definitions up to and including this one (Anthropic).
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=_empty_object_schema)
    cache_breakpoint: bool = False


@frozen
class ToolChoice:
    """Whether and which tool the model must call; ``name`` is set when mode is "tool"."""

    mode: ToolChoiceMode = "auto"
    name: str = ""


@frozen
class ResponseFormat:
    """The shape the answer must have.

    Attributes:
        type: "text", "json_object" (any JSON object) or "json_schema" (``schema``).
        name: The schema's name (OpenAI requires one).
        schema: The JSON Schema the answer must satisfy, for "json_schema".
        strict: Ask the provider to enforce the schema exactly where it can.
    """

    type: ResponseFormatType = "text"
    name: str = "answer"
    schema: dict[str, Any] | None = None
    strict: bool = True

    @property
    def wants_json(self) -> bool:
        """Whether the answer must be JSON (an object, or one matching ``schema``)."""
        return self.type != "text"


@frozen
class ChatRequest:
    """A provider-neutral chat request; adapters translate it to their wire format.

    Attributes:
        max_tokens: The answer's token limit; the gateway fills in its default, so 0 only
            reaches the router from callers that leave the choice to the provider.
        policy: How hard to try: "interactive" (fail fast) or "background" (back off and retry).
        cascade: Try the small tier first and escalate on a failed validation; None means the
            catalog's default. Only used when ``model`` is "auto".
        allow_model_fallback: Whether another model than ``model`` may answer when none of
            its deployments can; None means the catalog's ``routing.model_fallback``.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    request_id: str = ""
    tenant: str = ""
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    response_format: ResponseFormat = ResponseFormat()
    policy: Policy = "interactive"
    cascade: bool | None = None
    allow_model_fallback: bool | None = None


@frozen
class Usage:
    """Token counts of one call.

    Attributes:
        input_tokens: Prompt tokens, including cached ones and ones written to the cache.
        output_tokens: Generated tokens.
        cached_input_tokens: Prompt tokens read from the provider's prompt cache.
        cache_write_input_tokens: Prompt tokens written to the provider's prompt cache
            (Anthropic bills them at a premium).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_input_tokens + other.cache_write_input_tokens,
        )


@frozen
class TextDelta:
    """The next piece of the answer."""

    text: str


def merge_deltas(a: object, b: object) -> TextDelta | None:
    """Joins two consecutive text deltas (for ``tollway.mesh.streams.coalesce``); None for anything else."""
    if isinstance(a, TextDelta) and isinstance(b, TextDelta):
        return TextDelta(a.text + b.text)
    return None


# --- rules a request obeys ---------------------------------------------------------------
# Field paths in the errors are the API's (tollway.router.v1.GenerateRequest), so a caller can
# find the field it sent.


def check_message_indexes(indexes: Sequence[int], message_count: int) -> None:
    """Checks that per-message extras each name an existing message.

    Args:
        indexes: The ``message_index`` of each extra, in request order.
        message_count: How many messages the request has.

    Raises:
        InvalidArgument: The first index out of range, naming ``message_extras[i].message_index``.
    """
    for i, index in enumerate(indexes):
        if not 0 <= index < message_count:
            raise InvalidArgument(
                f"message_extras[{i}].message_index is {index}; there are {message_count} messages",
                [(f"message_extras[{i}].message_index", "out of range")],
            )


def check_tool_choice(choice: ToolChoice, tools: Sequence[Tool]) -> None:
    """Checks that a forced tool is one the request offers.

    Raises:
        InvalidArgument: ``choice`` forces a tool that is not in ``tools``.
    """
    if choice.mode == "tool" and choice.name not in {t.name for t in tools}:
        raise InvalidArgument(
            f"tool_choice.tool_name {choice.name!r} is not one of the tools",
            [("tool_choice.tool_name", "not one of the tools")],
        )


def check_response_format(fmt: ResponseFormat) -> None:
    """Checks that a schema-shaped answer comes with its schema.

    Raises:
        InvalidArgument: ``fmt`` asks for "json_schema" without a schema.
    """
    if fmt.type == "json_schema" and fmt.schema is None:
        raise InvalidArgument(
            "response_format.schema_json is required with RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
            [("response_format.schema_json", "required")],
        )
