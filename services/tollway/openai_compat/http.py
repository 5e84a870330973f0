"""What every HTTP surface shares: the body, the key, the Tollway headers, and the gateway calls
(a whole answer cancelled when its client leaves, a stream started before the HTTP status)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from starlette.requests import Request

from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh.errors import InvalidArgument
from tollway.mesh.httpserver import DISCONNECT_WATCH, DisconnectWatch
from tollway.openai_compat import translate
from tollway.openai_compat.errors import ApiError, bad_json, from_invalid, from_rpc, rate_limit_headers, too_large

# A client's per-request model-fallback policy, passed on to the gateway (and so the router).
ALLOW_FALLBACK = "x-tollway-allow-fallback"


async def json_body(request: Request, max_body_bytes: int) -> Any:
    """The request's JSON body.

    Raises:
        ApiError: 413 above the limit, 400 for a body that is not strict JSON.
    """
    raw = await request.body()
    if len(raw) > max_body_bytes:
        raise too_large(len(raw), max_body_bytes)
    try:
        return translate.parse_body(raw)
    except ValueError as exc:
        raise bad_json(exc) from None


def metadata(request: Request, *, api_key_header: bool = False) -> list[tuple[str, str]]:
    """The gRPC metadata of the gateway call: the key, and the fallback policy.

    With ``api_key_header`` (Anthropic's SDK), ``x-api-key: K`` is accepted as well as
    ``authorization: Bearer K``; the gateway reads the bearer form.

    Raises:
        ApiError: 400 when a header Tollway reads is not printable ASCII.
    """
    try:
        translate.check_headers(request.headers.raw)
    except InvalidArgument as exc:
        raise from_invalid(exc) from None
    if api_key_header:
        check_api_key_ascii(request)
    auth = request.headers.get("authorization")
    if not auth and api_key_header:
        key = request.headers.get("x-api-key")
        auth = f"Bearer {key}" if key else None
    out = [("authorization", auth)] if auth else []
    allow = request.headers.get(ALLOW_FALLBACK)
    if allow is not None:
        out.append((ALLOW_FALLBACK, allow))
    return out


def check_api_key_ascii(request: Request) -> None:
    """Refuses an ``x-api-key`` that gRPC metadata could not carry (never repeating it).

    Raises:
        ApiError: 400 naming the header.
    """
    key = request.headers.get("x-api-key")
    if key is not None and not (key.isascii() and key.isprintable()):
        raise ApiError(400, "the x-api-key header must be printable ASCII", "invalid_request_error", None, "x-api-key")


# Budget fields the APIs' bodies have no place for: request headers (see the README's budget section).
_PRIORITY = "x-tollway-priority"
_CONVERSATION_ID = "x-tollway-conversation-id"
PRIORITIES = {
    "interactive": gateway_pb2.PRIORITY_INTERACTIVE,
    "normal": gateway_pb2.PRIORITY_NORMAL,
    "batch": gateway_pb2.PRIORITY_BATCH,
}


def apply_budget_headers(req: gateway_pb2.GenerateRequest, request: Request) -> None:
    """Sets the request's budget priority and conversation from ``x-tollway-priority`` and
    ``x-tollway-conversation-id`` (the gateway checks the conversation id).

    Raises:
        InvalidArgument: The priority is not interactive, normal or batch.
    """
    priority = request.headers.get(_PRIORITY)
    if priority is not None:
        if priority.strip().lower() not in PRIORITIES:
            raise InvalidArgument(
                f"header {_PRIORITY} is {priority!r}; use interactive, normal or batch",
                [(_PRIORITY, "interactive, normal or batch")],
            )
        req.priority = PRIORITIES[priority.strip().lower()]
    conversation = request.headers.get(_CONVERSATION_ID)
    if conversation:
        req.conversation_id = conversation


def tollway_headers(reply: gateway_pb2.Started | gateway_pb2.CompleteResponse) -> dict[str, str]:
    """Tollway's own facts about an answer, as ``x-tollway-*`` response headers: who answered
    (model, provider, the models left before it), the cache tier, the provider attempts, and
    for a whole answer its cost (a stream's cost is only known at its end)."""
    headers = {
        "x-tollway-request-id": reply.request_id,
        "x-tollway-model": reply.model,
        "x-tollway-provider": reply.provider,
        "x-tollway-cache-tier": translate.tier(reply.cache_tier),
        "x-tollway-attempts": str(reply.attempt_count),
        "x-tollway-degraded": "true" if reply.degraded else "false",
        "x-tollway-fallback": " > ".join(reply.fallback_path) or "none",
        **translate.prompt_headers(reply),
    }
    if isinstance(reply, gateway_pb2.CompleteResponse):
        headers["x-tollway-cost-usd"] = f"{reply.cost.cost_usd_micros / 1e6:.6f}"
    return headers


class ClientGone(Exception):
    """The client closed the connection before the answer was ready (the gateway call was cancelled)."""


async def _disconnected(request: Request) -> None:
    # The body was read already, so the next message is the disconnect, whenever it comes.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def complete(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    req: gateway_pb2.CompleteRequest,
    metadata: list[tuple[str, str]],
    request: Request,
) -> tuple[gateway_pb2.CompleteResponse, dict[str, str]]:
    """Calls Complete, cancelling it when the client goes away meanwhile.

    Returns:
        The answer and the response headers (``x-tollway-*``, ``x-ratelimit-*``).

    Raises:
        ApiError: The gateway refused or failed.
        ClientGone: The client left; the call (and so the provider's) was cancelled.
    """
    call = stub.Complete(req, metadata=metadata)
    watch: DisconnectWatch | None = request.scope.get(DISCONNECT_WATCH)
    watcher: asyncio.Future[None] | None = None
    if watch is None:  # another server than the mesh's: a task waits for the disconnect
        watch = DisconnectWatch()
        watcher = asyncio.ensure_future(_disconnected(request))
        watcher.add_done_callback(lambda task: task.cancelled() or watch.connection_lost())
    gone = False

    def left() -> None:
        nonlocal gone
        gone = True
        call.cancel()

    watch.watch(left)
    try:
        reply = await call
        budget = rate_limit_headers(await call.trailing_metadata())
    except asyncio.CancelledError:
        if gone:
            raise ClientGone from None
        raise
    except grpc.aio.AioRpcError as err:
        raise from_rpc(err) from None
    finally:
        watch.clear()
        if watcher is not None:
            watcher.cancel()
    return reply, {**tollway_headers(reply), **budget}


async def open_stream(
    stub: gateway_pb2_grpc.GatewayServiceStub, req: gateway_pb2.GenerateRequest, metadata: list[tuple[str, str]]
) -> tuple[Any, gateway_pb2.Started, dict[str, str]]:
    """Starts Generate and reads its first event, so that a refusal is a real HTTP status.

    Returns:
        The call (read the rest from it, cancel it when done), its ``started`` event, and the
        response headers.

    Raises:
        ApiError: The gateway refused, or ended the stream before it started (502).
    """
    call = stub.Generate(req, metadata=metadata)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as err:
        raise from_rpc(err) from None
    if first is grpc.aio.EOF or not first.HasField("started"):
        call.cancel()
        raise ApiError(502, "the gateway ended the stream before it started", "api_error")
    budget = rate_limit_headers(await call.initial_metadata())
    return call, first.started, {**tollway_headers(first.started), **budget}
