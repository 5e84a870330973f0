"""The interface every provider adapter implements, one module per wire format."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol

from tollway.router.types import ChatRequest, StreamEvent


@dataclasses.dataclass(frozen=True)
class Deployment:
    """One place a model can be called.

    Attributes:
        provider: The adapter's name, as the catalog and call records say it.
        base_url: The API root, e.g. ``https://api.openai.com/v1``.
        upstream_model: The model name the provider expects.
        api_key: The secret, read from the environment variable the catalog names.
        timeout_s: Connect and read timeout for one attempt.
    """

    provider: str
    base_url: str
    upstream_model: str
    api_key: str = ""
    timeout_s: float = 60.0


class ProviderAdapter(Protocol):
    """Speaks one provider wire format."""

    def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncIterator[StreamEvent]:
        """Yields text deltas as they arrive, then exactly one StreamEnd.

        Raises:
            ProviderError: The call failed; ``retryable`` says whether to try again.
        """
        ...

    async def aclose(self) -> None:
        """Closes pooled connections."""
        ...
