"""What the router's adapters stream back, and how a provider call fails.

Every adapter translates :class:`tollway.common.chat.ChatRequest` into its wire format and
its wire format back into :data:`StreamEvent` values; nothing provider-specific leaves an
adapter except the provider's own error message, carried in :class:`ProviderError`. The
values other services speak too (the request, usage, text deltas) live in
:mod:`tollway.common.chat`.
"""

from __future__ import annotations

import enum

from tollway.common.chat import FinishReason, TextDelta, ToolCall, Usage
from tollway.mesh.frozen import frozen


@frozen
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same index belong to one call.

    ``id`` and ``name`` arrive once (in the first fragment); ``arguments`` are pieces of
    the JSON text, concatenated in arrival order.
    """

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@frozen
class UsageUpdate:
    """What the provider has reported about usage so far (cumulative, not a delta).

    Lets a stream cut in the middle still report the provider's input and cache counts.
    """

    usage: Usage


@frozen
class StreamEnd:
    """The provider finished the answer.

    Attributes:
        finish_reason: Why it stopped ("" when the provider did not say).
        usage: Token counts; None when the provider did not report them.
    """

    finish_reason: FinishReason
    usage: Usage | None


StreamEvent = TextDelta | ToolCallDelta | UsageUpdate | StreamEnd


@frozen
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
        timeout: For a TIMEOUT, which catalog limit ran out: "connect_timeout_s",
            "first_token_timeout_s", "stall_timeout_s" or "timeout_s"; "" otherwise.
        refused: For a CONNECTION, connecting failed at once (refused, unreachable): no
            request reached the provider, so trying it again soon costs the provider nothing
            (its breaker probes again after a short cooldown, see BreakerSettings).
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        kind: ErrorKind,
        status: int = 0,
        retry_after_s: float | None = None,
        timeout: str = "",
        refused: bool = False,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        self.message = message
        self.timeout = timeout
        self.refused = refused

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
