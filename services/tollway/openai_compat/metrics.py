"""The OpenAI surface's Prometheus metrics: requests by route and status, and their latency.

:class:`RequestMetrics` wraps the ASGI app (alone and in a process group alike), so every
response is counted, errors from the app's own handlers included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tollway.mesh.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

REQUESTS = LoopCounter(
    "tollway_openai_compat_requests_total", "HTTP requests by route and status code.", ["route", "status"]
)
REQUEST_SECONDS = LoopHistogram(
    "tollway_openai_compat_request_seconds",
    "Time from the request to the end of the response (the whole stream for stream: true), by route.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)

# Routes keep their own label; any other path is "other", so a scanner cannot grow the series.
_ROUTES = ("/v1/chat/completions", "/v1/embeddings", "/v1/models", "/openapi.json", "/healthz")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def route_of(path: str) -> str:
    """The metric label of a request path: a served route, or ``other``."""
    for route in _ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


class RequestMetrics:
    """ASGI middleware counting each HTTP response by route and status, and timing it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            observe(scope.get("path", ""), status, time.perf_counter() - start)


def observe(path: str, status: int, seconds: float) -> None:
    """Counts one response to ``path`` and its time."""
    route = route_of(path)
    REQUESTS.labels(route, str(status)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
