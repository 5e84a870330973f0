"""The HTTP APIs clients already speak (Starlette), translated to tollway.gateway.v1.

Switching an OpenAI or Anthropic SDK client to Tollway is a base-URL change: the same paths,
bodies, SSE events and error objects. Routes only: each API lives in its own module
(:mod:`chat`, :mod:`embeddings`, :mod:`responses`, :mod:`anthropic`), and what they share in
:mod:`http` and :mod:`errors`. The caller's API key is passed through to the gateway, which
authenticates it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh import clients, telemetry
from tollway.openai_compat import anthropic, chat, embeddings, http, openapi, responses, translate
from tollway.openai_compat.batches import BatchesApi
from tollway.openai_compat.errors import ApiError, from_rpc
from tollway.openai_compat.json_response import JsonResponse

log = logging.getLogger("tollway.openai_compat")

# OpenAI's error type for each HTTP status Starlette itself answers (unknown path, wrong method).
_HTTP_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


def _error_response(
    status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JsonResponse:
    return JsonResponse(translate.error_json(message, kind, code), status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such path: {request.method} {request.url.path}; {openapi.SERVED}"
    else:
        message = f"{request.method} is not allowed on {request.url.path}"
    kind = _HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    return _error_response(exc.status_code, message, kind, headers=dict(exc.headers or {}))


def server_error(request: Request, exc: Exception) -> Response:
    """A bug, answered in OpenAI's shape without its text (the traceback goes to the log)."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(500, "internal error in openai_compat; see the service log", "api_error")


async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette runs a synchronous exception handler in a thread.
    return server_error(request, exc)


def _model_json(m: gateway_pb2.ModelInfo) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": 0, "owned_by": m.provider}


class OpenAICompatApp:
    """Holds the gateway stub; ``app`` is the ASGI application."""

    def __init__(self, gateway_addr: str, max_body_bytes: int, jobs_addr: str = "") -> None:
        self.gateway_addr = gateway_addr
        self.max_body_bytes = max_body_bytes
        self.channel: grpc.aio.Channel | None = None
        self.stub: gateway_pb2_grpc.GatewayServiceStub | None = None
        # /v1/files and /v1/batches, over the jobs service (issue 19).
        self.batches = BatchesApi(jobs_addr, max_body_bytes)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id}", self.model, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
                *self.batches.routes,
                Route("/healthz", self.health, methods=["GET"]),
                Route(openapi.PATH, self.openapi, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _http_error, Exception: _server_error},
            lifespan=self.lifespan,
        )
        self._openapi = openapi.document()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # The channel belongs to the server's event loop, so it is made here, not in __init__.
        self.channel = clients.channel(self.gateway_addr, tracer_provider=telemetry.current_provider())
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        try:
            yield
        finally:
            await self.channel.close()
            await self.batches.close()

    async def health(self, request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        return JsonResponse(self._openapi)

    async def _catalog(self, request: Request) -> gateway_pb2.ListModelsResponse:
        """The catalog, as the caller's key may see it.

        Raises:
            ApiError: A bad header, or the gateway's refusal (no key: 401).
        """
        assert self.stub is not None
        metadata = http.metadata(request)
        try:
            return await self.stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err) from None

    async def models(self, request: Request) -> Response:
        try:
            reply = await self._catalog(request)
        except ApiError as exc:
            return exc.openai()
        return JsonResponse({"object": "list", "data": [_model_json(m) for m in reply.models]})

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``: one model of the catalog, 404 in OpenAI's shape for others."""
        try:
            reply = await self._catalog(request)
        except ApiError as exc:
            return exc.openai()
        model_id = request.path_params["model_id"]
        for m in reply.models:
            if m.name == model_id:
                return JsonResponse(_model_json(m))
        known = ", ".join(m.name for m in reply.models)
        return _error_response(
            404,
            f"model {model_id!r} is not in the catalog; known models: {known}",
            "invalid_request_error",
            "model_not_found",
        )

    async def embeddings(self, request: Request) -> Response:
        assert self.stub is not None
        return await embeddings.handle(self.stub, request, self.max_body_bytes)

    async def responses(self, request: Request) -> Response:
        assert self.stub is not None
        return await responses.handle(self.stub, request, self.max_body_bytes)

    async def messages(self, request: Request) -> Response:
        assert self.stub is not None
        return await anthropic.handle_messages(self.stub, request, self.max_body_bytes)

    async def count_tokens(self, request: Request) -> Response:
        assert self.stub is not None
        return await anthropic.handle_count_tokens(self.stub, request, self.max_body_bytes)

    async def chat_completions(self, request: Request) -> Response:
        assert self.stub is not None
        return await chat.handle(self.stub, request, self.max_body_bytes)
