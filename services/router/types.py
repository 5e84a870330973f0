"""The router's provider-neutral request, stream events and errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", ""]


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One conversation turn."""

    role: str
    content: str
    name: str = ""


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A provider-neutral chat request; adapters translate it to their wire format."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    request_id: str = ""
    tenant: str = ""


@dataclasses.dataclass(frozen=True)
class Usage:
    """Token counts of one call."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """The next piece of the answer."""

    text: str


@dataclasses.dataclass(frozen=True)
class StreamEnd:
    """The provider finished the answer.

    Attributes:
        finish_reason: Why it stopped ("" when the provider did not say).
        usage: Token counts; None when the provider did not report them.
    """

    finish_reason: FinishReason
    usage: Usage | None


StreamEvent = TextDelta | StreamEnd


class ProviderError(Exception):
    """A provider call failed.

    Attributes:
        provider: The adapter name ("openai", "local", ...).
        status: The HTTP status, or 0 for a transport failure (refused, reset, timeout).
        retryable: Whether the same call may succeed later (429, 408, 5xx, transport).
        retry_after_s: The provider's retry-after, when it sent one.
        message: What the provider said, or what went wrong on the wire.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int = 0,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.message = message


def is_retryable_status(status: int) -> bool:
    """429, 408 and every 5xx may succeed if tried again; other 4xx never will."""
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a retry-after header (delta-seconds form only; dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
