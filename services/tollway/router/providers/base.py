"""The interface every provider adapter implements, one module per wire format."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatRequest
from tollway.router.types import Completion, StreamEvent


class ProviderAdapter(Protocol):
    """Speaks one provider wire format; one instance serves every deployment of it."""

    def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncGenerator[StreamEvent, None]:
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
