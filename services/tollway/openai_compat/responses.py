"""OpenAI Responses (``POST /v1/responses``), the text and function-call subset, <-> the gateway.

Stateless: Tollway keeps no responses, so every answer says ``store: false``; a request with
``store: true`` or ``previous_response_id`` is refused with a 400 that says to send the whole
conversation as ``input`` instead. Hosted tools, images, files and reasoning options are refused
by name. A stream is Responses' typed events (``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta``,
... ``response.function_call_arguments.delta`` ..., ``response.completed``), each with its
``sequence_number``; a failure after the start is ``response.failed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import http, tools, translate
from tollway.openai_compat.errors import ApiError, from_invalid, stream_failure
from tollway.openai_compat.fields import bad, integer, string
from tollway.openai_compat.json_response import JsonResponse
from tollway.openai_compat.translate import sse

_KEYS = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "store",
        "previous_response_id", "tools", "tool_choice", "text", "metadata", "user", "parallel_tool_calls",
        "truncation", "reasoning", "include", "cache", "feature", "priority", "stream_options",
    }
)  # fmt: skip
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _refusals(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for /v1/responses",
            [(k, "unknown parameter") for k in unknown],
        )
    if body.get("store") is True:
        raise InvalidArgument(
            "Tollway's Responses API is stateless and keeps no responses: send store: false (or leave it out), "
            "and the whole conversation as 'input'",
            [("store", "false")],
            reason="STATELESS",
        )
    if body.get("previous_response_id") is not None:
        raise InvalidArgument(
            "'previous_response_id' cannot be used: Tollway's Responses API is stateless (store: false) and "
            "keeps no responses; send the whole conversation as 'input' instead",
            [("previous_response_id", "not supported (stateless)")],
            reason="STATELESS",
        )
    for key, what in (("reasoning", "reasoning options"), ("include", "extra output")):
        if body.get(key):
            raise InvalidArgument(
                f"{key!r} ({what}) is not supported by Tollway's Responses API; remove it",
                [(key, "not supported")],
                reason="CAPABILITY_UNSUPPORTED",
            )
    if body.get("truncation") not in (None, "disabled"):
        raise InvalidArgument("'truncation' must be 'disabled'", [("truncation", "'disabled'")])
    if body.get("parallel_tool_calls") is False:
        raise InvalidArgument(
            "'parallel_tool_calls' false is not supported: providers may return several calls; leave it out",
            [("parallel_tool_calls", "true or absent")],
            reason="CAPABILITY_UNSUPPORTED",
        )


def _text(content: Any, where: str) -> str:
    if type(content) is str:
        return content
    if type(content) is not list:
        raise bad(where, "a string or an array of input_text parts", content)
    parts = []
    for i, part in enumerate(content):
        kind = part.get("type") if type(part) is dict else None
        if kind not in ("input_text", "output_text", "text"):
            raise InvalidArgument(
                f"{where}[{i}] is a {kind!r} part; only text parts (input_text, output_text) are supported",
                [(f"{where}[{i}].type", "input_text or output_text")],
                reason="CAPABILITY_UNSUPPORTED",
            )
        parts.append(string(part.get("text"), f"{where}[{i}].text"))
    return "".join(parts)


def _input(value: Any, req: gateway_pb2.GenerateRequest) -> None:
    """Adds the ``input`` items as turns: messages, and function calls with their outputs."""
    if type(value) is str:
        req.messages.add(role="user", content=value)
        return
    if type(value) is not list or not value:
        raise bad("input", "a string or a non-empty array of input items", value)
    calls: common_pb2.MessageExtras | None = None
    for i, item in enumerate(value):
        at = f"input[{i}]"
        if type(item) is not dict:
            raise bad(at, "an input item object", item)
        kind = item.get("type", "message")
        if kind == "function_call":
            if calls is None:  # consecutive calls are one assistant turn
                req.messages.add(role="assistant", content="")
                calls = req.message_extras.add(message_index=len(req.messages) - 1)
            calls.tool_calls.add(
                id=string(item.get("call_id"), f"{at}.call_id"),
                name=string(item.get("name"), f"{at}.name"),
                arguments_json=string(item.get("arguments"), f"{at}.arguments") or "{}",
                index=len(calls.tool_calls),
            )
            continue
        calls = None
        if kind == "function_call_output":
            output = item.get("output")
            req.messages.add(role="tool", content=output if type(output) is str else json.dumps(output))
            req.message_extras.add(
                message_index=len(req.messages) - 1, tool_call_id=string(item.get("call_id"), f"{at}.call_id")
            )
        elif kind == "message":
            role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
            if role is None:
                raise InvalidArgument(
                    f"{at}.role is {item.get('role')!r}; use user, assistant, system or developer",
                    [(f"{at}.role", "user, assistant, system or developer")],
                )
            req.messages.add(role=role, content=_text(item.get("content"), f"{at}.content"))
        else:
            raise InvalidArgument(
                f"{at} is a {kind!r} item; supported: message, function_call, function_call_output",
                [(f"{at}.type", "message, function_call or function_call_output")],
                reason="CAPABILITY_UNSUPPORTED",
            )


def responses_request(body: Any) -> tuple[gateway_pb2.GenerateRequest, bool]:
    """Translates a Responses body.

    Returns:
        The gateway request and whether the client asked for a stream.

    Raises:
        InvalidArgument: Not a request Tollway can serve; names the field.
    """
    if type(body) is not dict:
        raise InvalidArgument("the request body must be a JSON object", [("body", "JSON object")])
    _refusals(body)
    req = gateway_pb2.GenerateRequest(model=string(body.get("model"), "model"))
    instructions = body.get("instructions")
    if instructions is not None:
        req.messages.add(role="system", content=string(instructions, "instructions"))
    _input(body.get("input"), req)
    if body.get("max_output_tokens") is not None:
        req.max_tokens = integer(body["max_output_tokens"], "max_output_tokens", 1, 2**31 - 1)
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if type(value) is not float and type(value) is not int:
                raise bad(name, "a number", value)
            setattr(req, name, float(value))
    req.user = string(body.get("user"), "user")
    if body.get("tools"):
        req.tools.extend(tools.responses_tools(body["tools"]))
        if body.get("tool_choice") is not None:
            req.tool_choice.CopyFrom(tools.openai_tool_choice(body["tool_choice"]))
    text = body.get("text")
    if text is not None:
        if type(text) is not dict:
            raise bad("text", "an object {format}", text)
        if text.get("format") is not None:
            req.response_format.CopyFrom(tools.responses_text_format(text["format"]))
    metadata = body.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise bad("metadata", "an object of strings", metadata)
        req.feature = string(metadata.get("feature"), "metadata.feature")
    translate.tollway_options(body, req)
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise bad("stream", "a boolean", stream)
    return req, stream is True


def usage_json(usage: common_pb2.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _message_item(request_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": f"msg_{request_id}", "status": status, "role": "assistant", "content": content}


def _call_item(request_id: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{request_id}_{index}",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_json(
    request_id: str,
    model: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: common_pb2.Usage | None,
    finish: int = common_pb2.FINISH_REASON_STOP,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    incomplete = status == "incomplete"
    return {
        "id": f"resp_{request_id}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "store": False,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "usage": usage_json(usage) if usage is not None else None,
        "metadata": {},
    }


def _status(finish: int) -> str:
    return "incomplete" if finish == common_pb2.FINISH_REASON_LENGTH else "completed"


def whole_json(reply: gateway_pb2.CompleteResponse) -> dict[str, Any]:
    output = []
    if reply.text or not reply.tool_calls:
        output.append(_message_item(reply.request_id, reply.text, "completed"))
    for i, c in enumerate(reply.tool_calls):
        output.append(_call_item(reply.request_id, i, c.id, c.name, c.arguments_json, "completed"))
    status = _status(reply.finish_reason)
    return response_json(reply.request_id, reply.model, int(time.time()), status, output, reply.usage)


class _Events:
    """Builds one stream's events in order, numbering them and keeping the items it opened."""

    def __init__(self, started: gateway_pb2.Started) -> None:
        self.rid, self.model, self.created = started.request_id, started.model, int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text: list[str] | None = None  # the open message's text, while one is open
        self.calls: dict[int, int] = {}  # tool-call index -> output index

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(kind, payload)

    def lifecycle(self, kind: str, status: str, usage: common_pb2.Usage | None = None, **extra: Any) -> bytes:
        return self.event(
            kind, response=response_json(self.rid, self.model, self.created, status, self.output, usage, **extra)
        )

    def _open_text(self) -> list[bytes]:
        self.text = []
        item = _message_item(self.rid, "", "in_progress")
        self.output.append(item)
        index = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            self.event("response.output_item.added", output_index=index, item=item),
            self.event(
                "response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
        ]

    def text_delta(self, text: str) -> list[bytes]:
        out = self._open_text() if self.text is None else []
        assert self.text is not None
        self.text.append(text)
        index = len(self.output) - 1
        item_id = f"msg_{self.rid}"
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def close_text(self) -> list[bytes]:
        if self.text is None:
            return []
        text, self.text = "".join(self.text), None
        index = next(i for i, item in enumerate(self.output) if item["type"] == "message")
        item = _message_item(self.rid, text, "completed")
        self.output[index] = item
        part = item["content"][0]
        return [
            self.event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self.event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def call_delta(self, piece: gateway_pb2.ToolCallDelta) -> list[bytes]:
        out = self.close_text()
        if piece.index not in self.calls:
            item = _call_item(self.rid, piece.index, piece.id, piece.name, "", "in_progress")
            self.output.append(item)
            self.calls[piece.index] = len(self.output) - 1
            out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=item))
        index = self.calls[piece.index]
        item = self.output[index]
        item["arguments"] += piece.arguments_fragment
        out.append(
            self.event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=piece.arguments_fragment,
            )
        )
        return out

    def finish(self, completed: gateway_pb2.Completed) -> list[bytes]:
        # An answer with neither text nor calls is still one (empty) message.
        out = self._open_text() if not self.output else []
        out += self.close_text()
        for index in self.calls.values():
            item = self.output[index]
            item["status"] = "completed"
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            out.append(self.event("response.output_item.done", output_index=index, item=item))
        status = _status(completed.finish_reason)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        out.append(self.lifecycle(kind, status, completed.usage))
        return out


async def events(call: Any, started: gateway_pb2.Started) -> AsyncIterator[bytes]:
    """The typed events of one Generate stream. The call is cancelled on every exit, so a client
    that leaves cancels the provider call."""
    out = _Events(started)
    try:
        yield out.lifecycle("response.created", "in_progress")
        yield out.lifecycle("response.in_progress", "in_progress")
        while (event := await call.read()) is not grpc.aio.EOF:
            kind = event.WhichOneof("event")
            pieces: list[bytes] = []
            if kind == "delta":
                pieces = out.text_delta(event.delta.text)
            elif kind == "tool_call":
                pieces = out.call_delta(event.tool_call)
            elif kind == "completed":
                pieces = out.finish(event.completed)
            elif kind == "error":
                error = {"code": event.error.reason.lower() or "server_error", "message": event.error.message}
                yield out.lifecycle("response.failed", "failed", event.error.partial_usage, error=error)
                return
            for piece in pieces:
                yield piece
    except grpc.aio.AioRpcError as err:
        message, code = stream_failure(err)
        yield out.lifecycle("response.failed", "failed", None, error={"code": code, "message": message})
    finally:
        call.cancel()


async def handle(stub: gateway_pb2_grpc.GatewayServiceStub, request: Request, max_body_bytes: int) -> Response:
    """``POST /v1/responses``."""
    try:
        body = await http.json_body(request, max_body_bytes)
        metadata = http.metadata(request)
        try:
            req, stream = responses_request(body)
            translate.apply_cache_headers(req, request.headers)
            http.apply_budget_headers(req, request)
        except InvalidArgument as exc:
            raise from_invalid(exc) from None
        if not stream:
            reply, headers = await http.complete(stub, translate.complete_request(req), metadata, request)
            return JsonResponse(whole_json(reply), headers=headers)
        call, started, headers = await http.open_stream(stub, req, metadata)
    except ApiError as exc:
        return exc.openai()
    except http.ClientGone:
        return Response(status_code=499)
    return StreamingResponse(
        events(call, started), media_type="text/event-stream", headers={"cache-control": "no-cache", **headers}
    )
