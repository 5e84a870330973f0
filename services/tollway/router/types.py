"""The router's provider-neutral request, stream events and errors.

Every adapter translates :class:`ChatRequest` into its wire format and its wire format
back into :data:`StreamEvent` values; nothing provider-specific leaves an adapter except
the provider's own error message, carried in :class:`ProviderError`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", ""]
Policy = Literal["interactive", "background"]


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One conversation turn.

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


@dataclasses.dataclass(frozen=True)
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
    parameters: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "object", "properties": {}})
    cache_breakpoint: bool = False


ToolChoiceMode = Literal["auto", "none", "required", "tool"]


@dataclasses.dataclass(frozen=True)
class ToolChoice:
    """Whether and which tool the model must call; ``name`` is set when mode is "tool"."""

    mode: ToolChoiceMode = "auto"
    name: str = ""


@dataclasses.dataclass(frozen=True)
class ResponseFormat:
    """The shape the answer must have.

    Attributes:
        type: "text", "json_object" (any JSON object) or "json_schema" (``schema``).
        name: The schema's name (OpenAI requires one).
        schema: The JSON Schema the answer must satisfy, for "json_schema".
        strict: Ask the provider to enforce the schema exactly where it can.
    """

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "answer"
    schema: dict[str, Any] | None = None
    strict: bool = True

    @property
    def wants_json(self) -> bool:
        return self.type != "text"


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A provider-neutral chat request; adapters translate it to their wire format.

    Attributes:
        policy: How hard to try: "interactive" (fail fast) or "background" (back off and retry).
        cascade: Try the small tier first and escalate on a failed validation; None means the
            catalog's default. Only used when ``model`` is "auto".
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """The next piece of the answer."""

    text: str


@dataclasses.dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same index belong to one call.

    ``id`` and ``name`` arrive once (in the first fragment); ``arguments`` are pieces of
    the JSON text, concatenated in arrival order.
    """

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclasses.dataclass(frozen=True)
class UsageUpdate:
    """What the provider has reported about usage so far (cumulative, not a delta).

    Lets a stream cut in the middle still report the provider's input and cache counts.
    """

    usage: Usage


@dataclasses.dataclass(frozen=True)
class StreamEnd:
    """The provider finished the answer.

    Attributes:
        finish_reason: Why it stopped ("" when the provider did not say).
        usage: Token counts; None when the provider did not report them.
    """

    finish_reason: FinishReason
    usage: Usage | None


def merge_deltas(a: object, b: object) -> TextDelta | None:
    """Joins two consecutive text deltas (for ``tollway.mesh.streams.coalesce``); None for anything else."""
    if isinstance(a, TextDelta) and isinstance(b, TextDelta):
        return TextDelta(a.text + b.text)
    return None


StreamEvent = TextDelta | ToolCallDelta | UsageUpdate | StreamEnd


@dataclasses.dataclass(frozen=True)
class Completion:
    """A whole answer from a non-streaming call."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    usage: Usage | None


class ErrorKind(enum.Enum):
    """Why a provider call failed; decides retry, fallback and the caller's status."""

    RATE_LIMITED = "RATE_LIMITED"  # 429
    OVERLOADED = "OVERLOADED"  # 503, Anthropic 529
    SERVER_ERROR = "SERVER_ERROR"  # any other 5xx
    TIMEOUT = "TIMEOUT"  # 408, connect/read timeout, no first token in time
    CONNECTION = "CONNECTION"  # refused, reset, cut mid-stream
    MALFORMED = "MALFORMED"  # the provider sent something its own format does not allow
    BAD_REQUEST = "BAD_REQUEST"  # 400, 413, 422: the request itself is wrong
    AUTH = "AUTH"  # 401, 403: our key for this deployment is wrong
    NOT_FOUND = "NOT_FOUND"  # 404: the deployment or model does not exist there

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later."""
        return self in _RETRYABLE

    @property
    def deployment_fault(self) -> bool:
        """Whether the failure says something about the deployment (counts against its breaker).

        A request the provider rejects as malformed says nothing about the provider's health.
        """
        return self is not ErrorKind.BAD_REQUEST


_RETRYABLE = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.MALFORMED,
    }
)


def kind_for_status(status: int) -> ErrorKind:
    """The error kind of an HTTP status a provider answered with."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 408:
        return ErrorKind.TIMEOUT
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.NOT_FOUND
    return ErrorKind.BAD_REQUEST


class ProviderError(Exception):
    """A provider call failed.

    Attributes:
        provider: The provider name ("openai", "local", ...).
        kind: What kind of failure it is.
        status: The HTTP status, or 0 for a transport failure (refused, reset, timeout).
        retry_after_s: The provider's retry-after, when it sent one.
        message: What the provider said, or what went wrong on the wire.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        kind: ErrorKind,
        status: int = 0,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (see :class:`ErrorKind`)."""
        return self.kind.retryable

    @classmethod
    def from_status(cls, provider: str, status: int, message: str, retry_after_s: float | None = None) -> ProviderError:
        """The error for an HTTP error answer, with the provider's own message."""
        return cls(
            provider,
            f"HTTP {status}: {message}",
            kind=kind_for_status(status),
            status=status,
            retry_after_s=retry_after_s,
        )


def is_retryable_status(status: int) -> bool:
    """429, 408 and every 5xx may succeed if tried again; other 4xx never will."""
    return kind_for_status(status).retryable


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a retry-after header (delta-seconds form only; dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
