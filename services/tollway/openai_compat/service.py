"""The OpenAI-compatible HTTP API (Starlette), translated to tollway.gateway.v1.

Switching an OpenAI SDK client to Tollway is a base-URL change: the same paths, bodies,
SSE chunks, ``[DONE]`` terminator and error objects. The caller's API key is passed
through to the gateway, which authenticates it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_status import rpc_status
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tollway.common import capabilities
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh import clients
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import anthropic, embeddings, openapi, translate

log = logging.getLogger("tollway.openai_compat")

_RPC_RETRY_AFTER = "retry-after"
# A client's per-request model-fallback policy, passed on to the gateway (and so the router).
_ALLOW_FALLBACK = "x-tollway-allow-fallback"
_RATE_LIMIT_PREFIX = "x-ratelimit-"
# Budget fields OpenAI's body has no place for: request headers (see the README's budget section).
_PRIORITY = "x-tollway-priority"
_CONVERSATION_ID = "x-tollway-conversation-id"
_PRIORITIES = {
    "interactive": gateway_pb2.PRIORITY_INTERACTIVE,
    "normal": gateway_pb2.PRIORITY_NORMAL,
    "batch": gateway_pb2.PRIORITY_BATCH,
}


def _apply_budget_headers(req: gateway_pb2.GenerateRequest, request: Request) -> None:
    """Sets the request's budget priority and conversation from ``x-tollway-priority`` and
    ``x-tollway-conversation-id`` (the gateway checks the conversation id).

    Raises:
        InvalidArgument: The priority is not interactive, normal or batch.
    """
    priority = request.headers.get(_PRIORITY)
    if priority is not None:
        if priority.strip().lower() not in _PRIORITIES:
            raise InvalidArgument(
                f"header {_PRIORITY} is {priority!r}; use interactive, normal or batch",
                [(_PRIORITY, "interactive, normal or batch")],
            )
        req.priority = _PRIORITIES[priority.strip().lower()]
    conversation = request.headers.get(_CONVERSATION_ID)
    if conversation:
        req.conversation_id = conversation


# OpenAI's error type for each HTTP status Starlette itself answers (unknown path, wrong method).
_HTTP_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


def _error_response(
    status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(translate.error_json(message, kind, code), status_code=status, headers=headers)


def _rate_limit_headers(metadata: Any) -> dict[str, str]:
    """The gateway's ``x-ratelimit-*`` budget headers, passed on as OpenAI's (same names)."""
    return {k: str(v) for k, v in metadata or () if k.startswith(_RATE_LIMIT_PREFIX)}


def _gateway_unreachable(err: grpc.aio.AioRpcError) -> bool:
    """Whether the gateway itself did not answer (down, restarting, or gone mid-call).

    Every status the gateway sends carries a google.rpc.Status with its ErrorInfo (the
    mesh's error decorator), so an UNAVAILABLE without one came from the channel: nothing
    accepted the connection, or it broke.
    """
    return err.code() == grpc.StatusCode.UNAVAILABLE and rpc_status.from_call(err) is None


def _gateway_unavailable_message(err: grpc.aio.AioRpcError) -> str:
    # The channel's own text ("failed to connect to all addresses ...") is kept in brackets for
    # operators, but the sentence names the part a client can wait for.
    return f"the gateway is unavailable ({err.details() or 'no connection'}); retry shortly"


def _rpc_error_response(err: grpc.aio.AioRpcError) -> JSONResponse:
    if _gateway_unreachable(err):
        return _error_response(
            503, _gateway_unavailable_message(err), "service_unavailable", "gateway_unavailable", {"retry-after": "1"}
        )
    status, kind = translate.HTTP_ERRORS.get(err.code(), (500, "api_error"))
    headers = _rate_limit_headers(err.trailing_metadata())
    for key, value in err.trailing_metadata() or ():
        if key == _RPC_RETRY_AFTER:
            headers["retry-after"] = str(value)
    return _error_response(status, err.details() or err.code().name, kind, err.code().name.lower(), headers)


def _invalid(exc: InvalidArgument) -> JSONResponse:
    param = exc.violations[0][0] if exc.violations else None
    return JSONResponse(translate.error_json(exc.message, "invalid_request_error", None, param), status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such path: {request.method} {request.url.path}; {openapi.SERVED}"
    else:
        message = f"{request.method} is not allowed on {request.url.path}"
    kind = _HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    return _error_response(exc.status_code, message, kind, headers=dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug, answered in OpenAI's shape without its text (the traceback goes to the log)."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(500, "internal error in openai_compat; see the service log", "api_error")


def _route_headers(model: str, fallback_path: Any) -> dict[str, str]:
    """Who answered: ``x-tollway-model``, and ``x-tollway-fallback`` (the models left, or "none")."""
    return {"x-tollway-model": model, "x-tollway-fallback": " > ".join(fallback_path) or "none"}


def _model_json(m: gateway_pb2.ModelInfo) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": 0, "owned_by": m.provider}


class OpenAICompatApp:
    """Holds the gateway stub; ``app`` is the ASGI application."""

    def __init__(self, gateway_addr: str, max_body_bytes: int) -> None:
        self.gateway_addr = gateway_addr
        self.max_body_bytes = max_body_bytes
        self.channel: grpc.aio.Channel | None = None
        self.stub: gateway_pb2_grpc.GatewayServiceStub | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id}", self.model, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
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
        self.channel = clients.channel(self.gateway_addr)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        try:
            yield
        finally:
            await self.channel.close()

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self._openapi)

    @staticmethod
    def _metadata(request: Request) -> list[tuple[str, str]]:
        """The gRPC metadata for the gateway call.

        Raises:
            InvalidArgument: A header Tollway reads is not printable ASCII (gRPC could not send it).
        """
        translate.check_headers(request.headers.raw)
        auth = request.headers.get("authorization")
        metadata = [("authorization", auth)] if auth else []
        allow = request.headers.get(_ALLOW_FALLBACK)
        if allow is not None:
            metadata.append((_ALLOW_FALLBACK, allow))
        return metadata

    async def models(self, request: Request) -> Response:
        assert self.stub is not None
        try:
            metadata = self._metadata(request)
        except InvalidArgument as exc:
            return _invalid(exc)
        try:
            reply = await self.stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            return _rpc_error_response(err)
        data = [_model_json(m) for m in reply.models]
        return JSONResponse({"object": "list", "data": data})

    async def _catalog(self, request: Request) -> gateway_pb2.ListModelsResponse | Response:
        assert self.stub is not None
        try:
            metadata = self._metadata(request)
        except InvalidArgument as exc:
            return _invalid(exc)
        try:
            return await self.stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            return _rpc_error_response(err)

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``: one model of the catalog, 404 in OpenAI's shape for others."""
        reply = await self._catalog(request)
        if isinstance(reply, Response):
            return reply
        model_id = request.path_params["model_id"]
        for m in reply.models:
            if m.name == model_id:
                return JSONResponse(_model_json(m))
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

    async def messages(self, request: Request) -> Response:
        assert self.stub is not None
        return await anthropic.handle_messages(self.stub, request, self.max_body_bytes)

    async def count_tokens(self, request: Request) -> Response:
        assert self.stub is not None
        return await anthropic.handle_count_tokens(self.stub, request, self.max_body_bytes)

    async def chat_completions(self, request: Request) -> Response:
        assert self.stub is not None
        raw = await request.body()
        if len(raw) > self.max_body_bytes:
            return _error_response(
                413, f"request body is {len(raw)} bytes; the limit is {self.max_body_bytes}", "invalid_request_error"
            )
        try:
            body = translate.parse_body(raw)
        except ValueError as exc:
            return _error_response(400, f"the body is not valid JSON: {exc}", "invalid_request_error")
        try:
            # Before translating: a parameter Tollway cannot carry is refused, never dropped.
            capabilities.check_openai_body(body)
        except InvalidArgument as exc:
            param = exc.violations[0][0] if exc.violations else None
            error = translate.error_json(exc.message, "invalid_request_error", exc.reason.lower(), param)
            return JSONResponse(error, status_code=400)
        try:
            metadata = self._metadata(request)
            req, stream, include_usage = translate.chat_request(body)
            translate.apply_cache_headers(req, request.headers)
            _apply_budget_headers(req, request)
        except InvalidArgument as exc:
            return _invalid(exc)
        if not stream:
            try:
                unary = self.stub.Complete(translate.complete_request(req), metadata=metadata)
                reply = await unary
                budget = _rate_limit_headers(await unary.initial_metadata())
            except grpc.aio.AioRpcError as err:
                return _rpc_error_response(err)
            return JSONResponse(
                translate.completion_json(reply),
                headers={
                    "x-tollway-request-id": reply.request_id,
                    "x-tollway-provider": reply.provider,
                    "x-tollway-cache-tier": translate.tier(reply.cache_tier),
                    "x-tollway-degraded": "true" if reply.degraded else "false",
                    **_route_headers(reply.model, reply.fallback_path),
                    **translate.prompt_headers(reply),
                    **budget,
                },
            )
        call = self.stub.Generate(req, metadata=metadata)
        # Read the first event before answering, so a refusal is a real HTTP status.
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            return _rpc_error_response(err)
        if first is grpc.aio.EOF or not first.HasField("started"):
            call.cancel()
            return _error_response(502, "the gateway ended the stream before it started", "api_error")
        started = first.started
        budget = _rate_limit_headers(await call.initial_metadata())
        return StreamingResponse(
            self._chunks(call, started, include_usage),
            media_type="text/event-stream",
            headers={
                "cache-control": "no-cache",
                "x-tollway-request-id": started.request_id,
                "x-tollway-provider": started.provider,
                "x-tollway-cache-tier": translate.tier(started.cache_tier),
                "x-tollway-degraded": "true" if started.degraded else "false",
                **_route_headers(started.model, started.fallback_path),
                **translate.prompt_headers(started),
                **budget,
            },
        )

    async def _chunks(
        self, call: grpc.aio.UnaryStreamCall, started: gateway_pb2.Started, include_usage: bool
    ) -> AsyncIterator[bytes]:
        chunk_id, model, created = f"chatcmpl-{started.request_id}", started.model, int(time.time())
        try:
            yield translate.chunk_bytes(chunk_id, model, created, {"role": "assistant", "content": ""}, None)
            while (event := await call.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    yield translate.chunk_bytes(chunk_id, model, created, {"content": event.delta.text}, None)
                elif kind == "completed":
                    c = event.completed
                    yield translate.chunk_bytes(chunk_id, model, created, {}, translate.finish(c.finish_reason))
                    if include_usage:
                        yield translate.usage_chunk_bytes(chunk_id, model, created, c.usage)
                elif kind == "error":
                    body = translate.error_json(event.error.message, "api_error", event.error.reason.lower())
                    yield b"data: " + json.dumps(body).encode() + b"\n\n"
                    return
            yield b"data: [DONE]\n\n"
        except grpc.aio.AioRpcError as err:
            if _gateway_unreachable(err):
                body = translate.error_json(_gateway_unavailable_message(err), "api_error", "gateway_unavailable")
            else:
                body = translate.error_json(err.details() or "stream failed", "api_error", err.code().name.lower())
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        finally:
            call.cancel()
