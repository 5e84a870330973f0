"""Routes one chat request to a provider and streams the answer back.

Errors before the first token are raised as typed errors (the caller sees a status);
after the first token the stream ends with :class:`StreamFailed` carrying the partial
usage, so two answers are never spliced together.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

from tollway.mesh import errors
from tollway.router.catalog import Catalog
from tollway.router.providers.base import ProviderAdapter
from tollway.router.tokens import count_prompt_tokens, count_tokens
from tollway.router.types import ChatRequest, FinishReason, ProviderError, StreamEnd, TextDelta, Usage


@dataclasses.dataclass(frozen=True)
class RouteStarted:
    """The provider accepted the call."""

    model: str
    provider: str
    attempt_count: int
    fallback_path: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RouteCompleted:
    """The answer is complete."""

    finish_reason: FinishReason
    usage: Usage
    usage_reported: bool
    provider_ttft_ms: int


@dataclasses.dataclass(frozen=True)
class StreamFailed:
    """The provider failed after text was streamed."""

    code: int
    message: str
    reason: str
    partial_usage: Usage


RouteEvent = RouteStarted | TextDelta | RouteCompleted | StreamFailed


def provider_error(exc: ProviderError) -> errors.TollwayError:
    """The typed error a caller sees for a provider failure before any text."""
    meta = {"provider": exc.provider, "http_status": str(exc.status)}
    if exc.status in (400, 404, 413, 422):
        return errors.InvalidArgument(
            f"provider {exc.provider} rejected the request: {exc.message}",
            reason="PROVIDER_REJECTED_REQUEST",
            metadata=meta,
        )
    if exc.status in (401, 403):
        return errors.FailedPrecondition(
            f"provider {exc.provider} refused Tollway's credentials ({exc.message}); check the API key "
            "configured for it in the model catalog",
            reason="PROVIDER_AUTH_FAILED",
            metadata=meta,
        )
    if exc.status == 429:
        return errors.ResourceExhausted(
            f"provider {exc.provider} is rate-limiting: {exc.message}",
            retry_after_s=exc.retry_after_s,
            reason="PROVIDER_RATE_LIMITED",
            metadata=meta,
        )
    return errors.Unavailable(
        f"provider {exc.provider} is unavailable: {exc.message}",
        retry_after_s=exc.retry_after_s,
        reason="PROVIDER_UNAVAILABLE",
        metadata=meta,
    )


class Router:
    """Picks the model's deployment, calls its adapter, and normalises the stream."""

    def __init__(self, catalog: Catalog, adapters: dict[str, ProviderAdapter]) -> None:
        self.catalog = catalog
        self.adapters = adapters

    async def generate(self, request: ChatRequest) -> AsyncIterator[RouteEvent]:
        """Streams RouteStarted, TextDelta..., then RouteCompleted or StreamFailed.

        Raises:
            errors.NotFound: The model is not in the catalog.
            errors.TollwayError: The provider failed before the first token.
        """
        model = self.catalog.resolve(request.model)
        if model is None:
            raise errors.NotFound(
                f"model {request.model!r} is not in the catalog; known models: {', '.join(self.catalog.names())}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": request.model},
            )
        deployment = model.deployments[0]
        adapter = self.adapters[model.wire]
        start = time.perf_counter()
        ttft_ms = 0
        text_parts: list[str] = []
        started = False
        try:
            async for event in adapter.stream(request, deployment):
                if not started:
                    started = True
                    yield RouteStarted(model=model.name, provider=deployment.provider, attempt_count=1)
                if isinstance(event, TextDelta):
                    if not text_parts:
                        ttft_ms = int((time.perf_counter() - start) * 1000)
                    text_parts.append(event.text)
                    yield event
                elif isinstance(event, StreamEnd):
                    usage, reported = event.usage, event.usage is not None
                    if usage is None:
                        usage = self._count(request, "".join(text_parts))
                    yield RouteCompleted(event.finish_reason or "stop", usage, reported, ttft_ms)
                    return
        except ProviderError as exc:
            if not text_parts:
                raise provider_error(exc) from exc
            yield StreamFailed(
                code=14,
                message=f"provider {exc.provider} failed mid-answer: {exc.message}; the answer is incomplete",
                reason="PROVIDER_STREAM_CUT",
                partial_usage=self._count(request, "".join(text_parts)),
            )

    @staticmethod
    def _count(request: ChatRequest, answer: str) -> Usage:
        return Usage(
            input_tokens=count_prompt_tokens([(m.role, m.content) for m in request.messages]),
            output_tokens=count_tokens(answer),
        )
