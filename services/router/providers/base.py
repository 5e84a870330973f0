"""The interface every provider adapter implements, one module per wire format."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol

from tollway.router.types import ChatRequest, Completion, StreamEvent


@dataclasses.dataclass(frozen=True)
class Deployment:
    """One place a model can be called: a base URL and key serving one upstream model.

    Attributes:
        provider: The provider's name, as the catalog and call records say it.
        base_url: The API root, e.g. ``https://api.openai.com/v1``.
        upstream_model: The model name the provider expects.
        api_key: The secret, read from the environment variable the catalog names.
        timeout_s: Longest wait for any read: the response headers, the first chunk, or the
            next chunk of a stream. A stalled stream fails after this long.
        name: The deployment's name within its model ("default", "eu", "key2").
        model: The catalog model it serves.
        weight: Its share of the model's traffic among healthy deployments (relative).
        first_token_timeout_s: Longest wait from the request to the first output; past it the
            router gives up on this deployment and falls through. 0 means ``timeout_s``.
        default_max_tokens: Sent when the request sets none and the wire requires a value
            (Anthropic).
        wire: The adapter that speaks to it ("openai_compat", "anthropic", "gemini").
        api_key_env: The environment variable the key comes from; "" when none is needed.
    """

    provider: str
    base_url: str
    upstream_model: str
    api_key: str = ""
    timeout_s: float = 60.0
    name: str = "default"
    model: str = ""
    weight: float = 1.0
    first_token_timeout_s: float = 0.0
    default_max_tokens: int = 1024
    wire: str = "openai_compat"
    api_key_env: str = ""

    @property
    def key(self) -> str:
        """The breaker and balancer identity: ``provider/model/name``."""
        return f"{self.provider}/{self.model or self.upstream_model}/{self.name}"

    @property
    def missing_key(self) -> bool:
        """A key is required (``api_key_env`` is set) but the variable is empty: never call it."""
        return bool(self.api_key_env) and not self.api_key

    @property
    def ttft_timeout_s(self) -> float:
        return self.first_token_timeout_s or self.timeout_s


class ProviderAdapter(Protocol):
    """Speaks one provider wire format; one instance serves every deployment of it."""

    def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncIterator[StreamEvent]:
        """Yields deltas as they arrive, then exactly one StreamEnd.

        Text arrives as TextDelta, tool calls as ToolCallDelta fragments, and whatever the
        provider reports about usage before the end as UsageUpdate. Closing the iterator
        closes the provider connection.

        Raises:
            ProviderError: The call failed; its ``kind`` says whether to try again.
        """
        ...

    async def complete(self, request: ChatRequest, deployment: Deployment) -> Completion:
        """Makes one non-streaming call and returns the whole answer.

        Raises:
            ProviderError: The call failed; its ``kind`` says whether to try again.
        """
        ...

    async def aclose(self) -> None:
        """Closes pooled connections. Safe to call more than once."""
        ...
