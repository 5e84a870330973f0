"""``POST /v1/chat/completions``: the body translated (:mod:`translate`), the gateway called, the
answer in OpenAI's shape, whole or as chunks (text and tool-call deltas, the usage chunk). A
grounded answer (the ``retrieval`` option) also carries Tollway's ``citations``: a top-level list
in the whole answer, a chunk without choices before the first text in a stream.

``n`` above 1 is served by fan-out: n gateway calls at once, each its own request (its own
budget reservation and call record, the cache bypassed so the choices differ), their answers
as choices 0..n-1. A stream with ``n`` above 1 is refused: its chunks would interleave n
streams, which no provider path here produces. ``logprobs`` are refused: no provider adapter
reports them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tollway.common import capabilities
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import http, tools, translate
from tollway.openai_compat.errors import ApiError, from_invalid, stream_failure
from tollway.openai_compat.fields import integer
from tollway.openai_compat.json_response import JsonResponse

# Parameters this surface now carries; capabilities.check_openai_body still refuses the rest
# (logprobs, top_logprobs, functions).
_CARRIED = frozenset({"tools", "tool_choice", "response_format", "n"})
MAX_CHOICES = 8


def _choices(body: dict[str, Any], stream: bool) -> int:
    n = body.get("n")
    if n is None:
        return 1
    count = integer(n, "n", 1, MAX_CHOICES)
    if count > 1 and stream:
        raise InvalidArgument(
            "'n' above 1 is served without streaming only (n separate answers); set stream false or n 1",
            [("n", "1 with stream: true")],
            reason="CAPABILITY_UNSUPPORTED",
        )
    return count


# Parameters of OpenAI's API that the gateway cannot carry, with the values that change nothing:
# any other value is refused, never dropped (the answer would not be the one asked for).
_UNCARRIED: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}


def _refuse_uncarried(body: dict[str, Any]) -> None:
    asked = [k for k, harmless in _UNCARRIED.items() if body.get(k) not in harmless]
    if asked:
        raise InvalidArgument(
            f"{', '.join(map(repr, asked))}: not supported through this API (the gateway cannot carry "
            f"{'it' if len(asked) == 1 else 'them'} to the provider); the request was not sent. Remove "
            "the parameter (Tollway never answers without honouring it)",
            [(k, "not supported") for k in asked],
            reason=capabilities.REASON,
        )


def parse(body: Any, request: Request) -> tuple[gateway_pb2.GenerateRequest, bool, bool, int]:
    """The gateway request, stream, include_usage and n of a chat body.

    Raises:
        InvalidArgument: What cannot be carried, or a bad field; names it.
    """
    if isinstance(body, dict):
        capabilities.check_openai_body({k: v for k, v in body.items() if k not in _CARRIED})
        _refuse_uncarried(body)
    req, stream, include_usage = translate.chat_request(body)
    translate.apply_cache_headers(req, request.headers)
    http.apply_budget_headers(req, request)
    return req, stream, include_usage, _choices(body, stream)


def message_json(reply: gateway_pb2.CompleteResponse, index: int = 0) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [tools.openai_call_json(c) for c in reply.tool_calls]
        message["content"] = reply.text or None
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": translate.finish(reply.finish_reason),
    }


def completion_json(replies: list[gateway_pb2.CompleteResponse]) -> dict[str, Any]:
    first = replies[0]
    usage = common_pb2.Usage()
    for r in replies:
        usage.input_tokens += r.usage.input_tokens
        usage.output_tokens += r.usage.output_tokens
        usage.cached_input_tokens += r.usage.cached_input_tokens
    out = {
        "id": f"chatcmpl-{first.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": first.model,
        "system_fingerprint": None,
        "choices": [message_json(r, i) for i, r in enumerate(replies)],
        "usage": translate.usage_json(usage),
    }
    if first.citations:
        out["citations"] = translate.citations_json(first.citations)
    return out


async def _fan_out(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    req: gateway_pb2.CompleteRequest,
    metadata: list[tuple[str, str]],
    request: Request,
    n: int,
) -> tuple[list[gateway_pb2.CompleteResponse], dict[str, str]]:
    """n answers at once; the first refusal fails the request and cancels the other calls."""
    calls = []
    for i in range(n):
        one = gateway_pb2.CompleteRequest()
        one.CopyFrom(req)
        # n different answers: never n copies of one cached answer.
        one.cache_policy.mode = common_pb2.CACHE_MODE_BYPASS
        if req.request_id:
            one.request_id = f"{req.request_id}.{i}"
        calls.append(asyncio.ensure_future(http.complete(stub, one, metadata, request)))
    try:
        results = await asyncio.gather(*calls)
    except BaseException:
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        raise
    cost = sum(r.cost.cost_usd_micros for r, _ in results)
    headers = {**results[0][1], "x-tollway-cost-usd": f"{cost / 1e6:.6f}"}
    return [r for r, _ in results], headers


async def handle(stub: gateway_pb2_grpc.GatewayServiceStub, request: Request, max_body_bytes: int) -> Response:
    """``POST /v1/chat/completions``."""
    try:
        body = await http.json_body(request, max_body_bytes)
        metadata = http.metadata(request)
        try:
            req, stream, include_usage, n = parse(body, request)
        except InvalidArgument as exc:
            raise from_invalid(exc) from None
        if not stream:
            unary = translate.complete_request(req)
            if n == 1:
                reply, headers = await http.complete(stub, unary, metadata, request)
                replies = [reply]
            else:
                replies, headers = await _fan_out(stub, unary, metadata, request, n)
            return JsonResponse(completion_json(replies), headers=headers)
        call, started, headers = await http.open_stream(stub, req, metadata)
    except ApiError as exc:
        return exc.openai()
    except http.ClientGone:
        return Response(status_code=499)
    return StreamingResponse(
        chunks(call, started, include_usage),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", **headers},
    )


async def chunks(call: Any, started: gateway_pb2.Started, include_usage: bool) -> AsyncIterator[bytes]:
    """The chunks of one stream, then ``[DONE]``; a failure after the start is an error object
    in the stream (the status was sent already). The call is cancelled on every exit, so a
    client that leaves cancels the provider call."""
    chunk_id, model, created = f"chatcmpl-{started.request_id}", started.model, int(time.time())
    announced: set[int] = set()
    try:
        yield translate.chunk_bytes(chunk_id, model, created, {"role": "assistant", "content": ""}, None)
        while (event := await call.read()) is not grpc.aio.EOF:
            kind = event.WhichOneof("event")
            if kind == "delta":
                yield translate.chunk_bytes(chunk_id, model, created, {"content": event.delta.text}, None)
            elif kind == "tool_call":
                yield translate.chunk_bytes(chunk_id, model, created, _tool_delta(event.tool_call, announced), None)
            elif kind == "citations":
                # Tollway's extension: a chunk without choices (as the usage chunk is) naming the sources.
                cited = translate.citations_json(event.citations.citations)
                yield translate.sse(
                    None,
                    {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "citations": cited,
                    },
                )
            elif kind == "completed":
                c = event.completed
                yield translate.chunk_bytes(chunk_id, model, created, {}, translate.finish(c.finish_reason))
                if include_usage:
                    yield translate.usage_chunk_bytes(chunk_id, model, created, c.usage)
            elif kind == "error":
                body = translate.error_json(event.error.message, "api_error", event.error.reason.lower())
                yield translate.sse(None, body)
                return
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as err:
        message, code = stream_failure(err)
        yield translate.sse(None, translate.error_json(message, "api_error", code))
    finally:
        call.cancel()


def _tool_delta(piece: gateway_pb2.ToolCallDelta, announced: set[int]) -> dict[str, Any]:
    """OpenAI's tool-call delta: the first piece of a call carries id, type and name."""
    entry: dict[str, Any] = {"index": piece.index}
    if piece.index not in announced:
        announced.add(piece.index)
        entry["id"] = piece.id
        entry["type"] = "function"
        entry["function"] = {"name": piece.name, "arguments": piece.arguments_fragment}
    else:
        entry["function"] = {"arguments": piece.arguments_fragment}
    return {"tool_calls": [entry]}
