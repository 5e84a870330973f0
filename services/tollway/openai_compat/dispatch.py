"""The HTTP surface's front door: the API calls go straight to their handlers, the rest through Starlette.

Starlette's routing, its two error middlewares and the metrics middleware wrap every request in
seven more awaits and three more ``send`` wrappers, about as much Python as the chat surface's own
translation. The four POST routes that carry model traffic are found here with one dict lookup and
called directly, with what those layers did for them done once: the request counted and timed, and
a handler's unexpected exception answered as Starlette's handler answers it (a 500 in OpenAI's
shape, the traceback in the log). Everything else (models, files, batches, health, the OpenAPI
document, unknown paths and methods, the lifespan) goes to the Starlette app as before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollway.openai_compat import metrics
from tollway.openai_compat.service import OpenAICompatApp, server_error

Handler = Callable[[Request], Awaitable[Response]]


class Dispatch:
    """The ASGI app of the OpenAI (and Anthropic, Responses) surface."""

    def __init__(self, api: OpenAICompatApp) -> None:
        self._routed = metrics.RequestMetrics(api.app)
        self._direct: dict[str, Handler] = {
            "/v1/chat/completions": api.chat_completions,
            "/v1/messages": api.messages,
            "/v1/responses": api.responses,
            "/v1/embeddings": api.embeddings,
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._direct.get(scope["path"])
            if handler is not None:
                await _serve(handler, scope, receive, send)
                return
        await self._routed(scope, receive, send)


async def _serve(handler: Handler, scope: dict[str, Any], receive: Any, send: Any) -> None:
    start = time.perf_counter()
    status = 500  # what the client sees if the response cannot be sent
    request = Request(scope, receive, send)
    try:
        try:
            response = await handler(request)
        except Exception as exc:  # a bug: answered like any other, logged with its traceback
            response = server_error(request, exc)
        status = response.status_code
        # An exception while the body is sent (a stream's) leaves to the server, which closes the
        # connection: the status is out already, as with Starlette.
        await response(scope, receive, send)
    finally:
        metrics.observe(scope["path"], status, time.perf_counter() - start)
