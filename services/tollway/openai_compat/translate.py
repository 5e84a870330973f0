"""OpenAI Chat Completions JSON <-> Tollway gateway messages. Pure functions, no I/O."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

import grpc
import orjson

from tollway.common import codec
from tollway.common.caching import CacheMode
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import tools
from tollway.openai_compat.fields import INT32_MAX, INT64_MAX, INT64_MIN
from tollway.openai_compat.fields import bad as _bad
from tollway.openai_compat.fields import integer as _integer
from tollway.openai_compat.fields import string as _string


def finish(value: int) -> str:
    """OpenAI's finish_reason for a proto one (Tollway's names are OpenAI's)."""
    return codec.finish_reason_from_proto(value, "stop")


def tier(value: int) -> str:
    """The ``x-tollway-cache-tier`` header value: the tier's name, or "none" when the cache was not asked."""
    return codec.cache_tier_from_proto(value).value or "none"


# gRPC status -> (HTTP status, OpenAI error type), as OpenAI clients expect them.
HTTP_ERRORS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


_INT32_MAX, _INT64_MIN, _INT64_MAX = INT32_MAX, INT64_MIN, INT64_MAX


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is list:
        parts = []
        for i, part in enumerate(value):
            if type(part) is not dict or part.get("type") != "text":
                raise InvalidArgument(
                    f"{where}[{i}]: only text content parts are supported",
                    [(f"{where}[{i}].type", "only 'text' parts are supported")],
                )
            text = part.get("text")
            if type(text) is not str:
                raise _bad(f"{where}[{i}].text", "a string", text)
            parts.append(text)
        return "".join(parts)
    raise _bad(where, "a string or an array of text parts", value)


def chat_request(body: Any) -> tuple[gateway_pb2.GenerateRequest, bool, bool]:
    """Translates a chat-completions body.

    Every field Tollway reads is type-checked here, and integers are checked against their
    proto field's range, so any JSON value is either translated or refused with the field
    named; the gateway then checks the values (lengths, limits, roles).

    Returns:
        The gateway request, whether the client asked for a stream, and whether it asked
        for a final usage chunk (``stream_options.include_usage``).

    Raises:
        InvalidArgument: The body is not a chat-completions request Tollway can serve.
    """
    try:
        return _chat_request(body)
    except UnicodeEncodeError as exc:
        # JSON may escape half a surrogate pair ("\\ud800"), which no proto string can hold.
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise InvalidArgument(
            f"a string in the body holds an unpaired UTF-16 surrogate ({bad}); strings must be Unicode text",
            [("body", "strings of Unicode text")],
        ) from None


# The keys a prompt_ref object may hold; another one is refused, so a misspelt "lable" never
# silently falls back to the production label.
_PROMPT_REF_KEYS = frozenset({"template", "label", "version", "variables"})
# Nesting of prompt_ref.variables, in JSON levels. Every level is two protobuf levels (Struct,
# Value) and protobuf parses at most 100, so a deeper value could not reach the prompt store.
MAX_VARIABLES_DEPTH = 32


def _depth(value: Any) -> int:
    """How deep JSON containers nest in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if type(item) is dict:
            stack.extend((v, level + 1) for v in item.values())
        elif type(item) is list:
            stack.extend((v, level + 1) for v in item)
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
    return deepest


def _prompt_ref(value: Any, out: gateway_pb2.PromptRef) -> None:
    """Reads Tollway's ``prompt_ref`` extension (OpenAI SDKs send it through ``extra_body``).

    Raises:
        InvalidArgument: Not an object, an unknown key, a field of the wrong JSON type, both a
            label and a version, a version below 1, or variables nested too deeply; each names
            the field (``prompt_ref.version``...).
    """
    if type(value) is not dict:
        raise _bad("prompt_ref", "an object {template, label | version, variables}", value)
    unknown = sorted(set(value) - _PROMPT_REF_KEYS)
    if unknown:
        raise InvalidArgument(
            f"'prompt_ref' has unknown key(s) {', '.join(map(repr, unknown))}; "
            "it holds template, label or version, and variables",
            [(f"prompt_ref.{k}", "unknown key") for k in unknown],
        )
    template = value.get("template")
    if type(template) is not str:
        raise _bad("prompt_ref.template", "a string (the template's id)", template)
    out.template = template
    label, version = value.get("label"), value.get("version")
    if label is not None and version is not None:
        raise InvalidArgument(
            "'prompt_ref' names both a label and a version; name one (neither means the production label)",
            [("prompt_ref.version", "set together with label")],
        )
    if label is not None:
        out.label = _string(label, "prompt_ref.label")
    elif version is not None:
        out.version = _integer(version, "prompt_ref.version", 1, _INT64_MAX)
    variables = value.get("variables")
    if variables is not None:
        if type(variables) is not dict:
            raise _bad("prompt_ref.variables", "an object", variables)
        if _depth(variables) > MAX_VARIABLES_DEPTH:
            raise InvalidArgument(
                f"'prompt_ref.variables' nests deeper than {MAX_VARIABLES_DEPTH} levels",
                [("prompt_ref.variables", f"at most {MAX_VARIABLES_DEPTH} levels of nesting")],
            )
        out.variables.update(variables)


def _chat_request(body: Any) -> tuple[gateway_pb2.GenerateRequest, bool, bool]:
    if type(body) is not dict:
        raise InvalidArgument("the request body must be a JSON object", [("body", "JSON object")])
    messages = body.get("messages")
    prompt_ref = body.get("prompt_ref")
    if messages is None and prompt_ref is not None:
        messages = []  # the prompt brings the messages
    if type(messages) is not list:
        raise InvalidArgument("'messages' is required and must be a list", [("messages", "list of messages")])
    # n is read by the chat handler: above 1 it is served by fan-out (tollway.openai_compat.chat).
    req = gateway_pb2.GenerateRequest(model=_string(body.get("model"), "model"))
    if prompt_ref is not None:
        _prompt_ref(prompt_ref, req.prompt_ref)
    for i, m in enumerate(messages):
        if type(m) is not dict:
            raise _bad(f"messages[{i}]", "an object", m)
        req.messages.add(
            role=_string(m.get("role"), f"messages[{i}].role"),
            content=_content(m.get("content"), f"messages[{i}].content"),
            name=_string(m.get("name"), f"messages[{i}].name"),
        )
        calls, call_id = m.get("tool_calls"), m.get("tool_call_id")
        if calls or call_id is not None:
            extras = req.message_extras.add(message_index=i)
            if calls:
                extras.tool_calls.extend(tools.openai_tool_calls(calls, f"messages[{i}].tool_calls"))
            extras.tool_call_id = _string(call_id, f"messages[{i}].tool_call_id")
    if body.get("tools"):
        req.tools.extend(tools.openai_tools(body["tools"]))
        if body.get("tool_choice") is not None:
            req.tool_choice.CopyFrom(tools.openai_tool_choice(body["tool_choice"]))
    elif body.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidArgument("'tool_choice' names a tool but 'tools' is empty", [("tool_choice", "needs tools")])
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and parallel is not True:
        raise InvalidArgument(
            "'parallel_tool_calls' false is not supported: providers may return several calls; leave it out",
            [("parallel_tool_calls", "true or absent")],
            reason="CAPABILITY_UNSUPPORTED",
        )
    if body.get("response_format") is not None:
        req.response_format.CopyFrom(tools.openai_response_format(body["response_format"]))
    tollway_options(body, req)
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            req.max_tokens = _integer(value, name, 0, _INT32_MAX)
            break
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            # json.loads refuses NaN and Infinity (see parse_body), so a number here is finite.
            if type(value) is not float and type(value) is not int:
                raise _bad(name, "a number", value)
            setattr(req, name, float(value))
    stop = body.get("stop")
    if type(stop) is str:
        req.stop.append(stop)
    elif type(stop) is list:
        for i, s in enumerate(stop):
            if type(s) is not str:
                raise _bad(f"stop[{i}]", "a string", s)
        req.stop.extend(stop)
    elif stop is not None:
        raise _bad("stop", "a string or an array of strings", stop)
    seed = body.get("seed")
    if seed is not None:
        req.seed = _integer(seed, "seed", _INT64_MIN, _INT64_MAX)
    req.user = _string(body.get("user"), "user")
    metadata = body.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise _bad("metadata", "an object of strings", metadata)
        req.feature = _string(metadata.get("feature"), "metadata.feature")
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _bad("stream", "a boolean", stream)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if type(options) is not dict:
            raise _bad("stream_options", "an object", options)
        include_usage = options.get("include_usage")
        if include_usage is not None and type(include_usage) is not bool:
            raise _bad("stream_options.include_usage", "a boolean", include_usage)
    return req, stream is True, include_usage is True


# Tollway's own options, in the body (OpenAI SDKs send them with ``extra_body``).
_CACHE_KEYS = frozenset({"mode", "namespace"})


def tollway_options(body: dict[str, Any], req: gateway_pb2.GenerateRequest) -> None:
    """Reads ``cache {mode, namespace}``, ``tier``, ``feature`` and ``priority`` from the body (headers, read
    after, may set the same; the header wins).

    Raises:
        InvalidArgument: A value of the wrong type or outside its choices, naming the field.
    """
    cache = body.get("cache")
    if cache is not None:
        if type(cache) is not dict or set(cache) - _CACHE_KEYS:
            raise _bad("cache", "an object {mode, namespace}", cache)
        mode = _string(cache.get("mode"), "cache.mode").strip().lower()
        if mode and mode not in _HEADER_MODES:
            raise InvalidArgument(
                f"'cache.mode' is {mode!r}; use default, bypass or refresh",
                [("cache.mode", "default, bypass or refresh")],
            )
        req.cache_policy.mode = _HEADER_MODES[mode or "default"]
        req.cache_policy.namespace = _string(cache.get("namespace"), "cache.namespace").strip()
    tier = body.get("tier")
    if tier is not None:
        # With model "auto": the gateway picks the catalog's model for that tier, or says why it cannot.
        req.tier = _string(tier, "tier")
    retrieval = body.get("retrieval")
    if retrieval is not None:
        _retrieval(retrieval, req.retrieval)
    feature = body.get("feature")
    if feature is not None:
        req.feature = _string(feature, "feature")
    priority = body.get("priority")
    if priority is not None:
        names = {"interactive": 1, "normal": 2, "batch": 3}
        if priority not in names:
            raise InvalidArgument(
                f"'priority' is {priority!r}; use interactive, normal or batch",
                [("priority", "interactive, normal or batch")],
            )
        req.priority = names[priority]


_RETRIEVAL_KEYS = frozenset({"collection", "top_k", "filters", "max_context_tokens"})


def _retrieval(value: Any, out: gateway_pb2.Retrieval) -> None:
    """Reads Tollway's ``retrieval {collection, top_k, filters, max_context_tokens}`` option (the
    gateway checks the collection and the filters before anything is spent).

    Raises:
        InvalidArgument: Not an object, an unknown key or a value of the wrong type; names the field.
    """
    if type(value) is not dict:
        raise _bad("retrieval", "an object {collection, top_k, filters, max_context_tokens}", value)
    unknown = sorted(set(value) - _RETRIEVAL_KEYS)
    if unknown:
        raise InvalidArgument(
            f"'retrieval' has unknown key(s) {', '.join(map(repr, unknown))}; "
            "it holds collection, top_k, filters and max_context_tokens",
            [(f"retrieval.{k}", "unknown key") for k in unknown],
        )
    collection = value.get("collection")
    if type(collection) is not str or not collection:
        raise _bad("retrieval.collection", "a collection id", collection)
    out.collection = collection
    for name in ("top_k", "max_context_tokens"):
        if value.get(name) is not None:
            setattr(out, name, _integer(value[name], f"retrieval.{name}", 0, _INT32_MAX))
    filters = value.get("filters")
    if filters is not None:
        if type(filters) is not dict:
            raise _bad("retrieval.filters", "an object of field: value", filters)
        out.filters.update(filters)


def citations_json(citations: Iterable[gateway_pb2.Citation]) -> list[dict[str, Any]]:
    """The sources a grounded answer cites (Tollway's extension of the answer objects)."""
    return [
        {
            "index": c.index,
            "document": c.document,
            "chunk_id": c.chunk_id,
            "score": c.score,
            "title": c.title,
            "snippet": c.snippet,
        }
        for c in citations
    ]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Made once: json.loads(..., parse_constant=...) would build a decoder on every call (about 1 us).
_STRICT_JSON = json.JSONDecoder(parse_constant=_no_constant)


def parse_body(raw: bytes) -> Any:
    """Decodes a request body as strict JSON (RFC 8259).

    Python's decoder also accepts ``NaN`` and ``Infinity``; they are refused here, so every
    number that reaches :func:`chat_request` is finite.

    Raises:
        ValueError: The bytes are not UTF-8 JSON (RFC 8259 allows no other encoding); the
            message says where.
    """
    try:
        return _STRICT_JSON.decode(raw.decode())
    except RecursionError:
        # A body of nested arrays nests deeper than the decoder's stack (1 MiB allows 500k levels).
        raise ValueError("the JSON nests too deeply") from None


# The header names a mode as CacheMode does; "default" (or nothing) is the normal mode.
_HEADER_MODES = {
    **{m.value: codec.cache_mode_to_proto(m) for m in CacheMode},
    "default": common_pb2.CACHE_MODE_UNSPECIFIED,
}


def apply_cache_headers(req: gateway_pb2.GenerateRequest, headers: Any) -> None:
    """Reads ``x-tollway-cache-mode`` and ``x-tollway-cache-namespace``; each one sent wins over
    the body's ``cache`` option.

    Raises:
        InvalidArgument: The mode is not default, bypass or refresh.
    """
    if "x-tollway-cache-mode" not in headers and "x-tollway-cache-namespace" not in headers:
        return
    mode = headers.get("x-tollway-cache-mode", "").strip().lower()
    if mode not in _HEADER_MODES:
        raise InvalidArgument(
            f"x-tollway-cache-mode is {mode!r}; use default, bypass or refresh",
            [("x-tollway-cache-mode", "default, bypass or refresh")],
        )
    req.cache_policy.mode = _HEADER_MODES[mode]
    req.cache_policy.namespace = headers.get("x-tollway-cache-namespace", "").strip()


# gRPC metadata values (all but "-bin" keys) are printable ASCII; the gateway call could not carry others.
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


def check_headers(raw: Iterable[tuple[bytes, bytes]]) -> None:
    """Refuses a request whose ``authorization`` or ``x-tollway-*`` header is not printable ASCII.

    The message names the header and counts the bad bytes; it never repeats the value,
    which may be a key.

    Raises:
        InvalidArgument: A header Tollway reads holds a byte outside 0x20-0x7e.
    """
    for name, value in raw:
        if (name == b"authorization" or name.startswith(b"x-tollway-")) and _NOT_PRINTABLE.search(value):
            header = name.decode("latin-1")
            count = len(_NOT_PRINTABLE.findall(value))
            raise InvalidArgument(
                f"the {header} header holds {count} byte(s) that are not printable ASCII; "
                "header values must be printable ASCII",
                [(header, "printable ASCII")],
            )


_PROMPT_HEADERS = ("x-tollway-prompt-template", "x-tollway-prompt-version", "x-tollway-prompt-resolution")


def prompt_headers(reply: gateway_pb2.Started | gateway_pb2.CompleteResponse) -> dict[str, str]:
    """The ``x-tollway-prompt-*`` headers naming the prompt version used (none without one)."""
    if not reply.prompt_template:
        return {}
    values = (reply.prompt_template, str(reply.prompt_version), reply.prompt_resolution)
    return dict(zip(_PROMPT_HEADERS, values, strict=True))


def complete_request(req: gateway_pb2.GenerateRequest) -> gateway_pb2.CompleteRequest:
    """The same request, for the unary RPC (the two messages share field numbers)."""
    return gateway_pb2.CompleteRequest.FromString(req.SerializeToString())


def usage_json(usage: common_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def completion_json(reply: gateway_pb2.CompleteResponse) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{reply.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish(reply.finish_reason),
            }
        ],
        "usage": usage_json(reply.usage),
    }


def chunk_bytes(chunk_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return sse(None, payload)


def usage_chunk_bytes(chunk_id: str, model: str, created: int, usage: common_pb2.Usage) -> bytes:
    payload = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_json(usage),
    }
    return sse(None, payload)


def error_json(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON.

    Every answer and every streamed delta pays for this encoding, so it is orjson's; the standard
    library's encoder takes only what orjson refuses (an integer beyond 64 bits in a tool call's
    arguments).
    """
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def sse(event: str | None, payload: dict[str, Any]) -> bytes:
    """One Server-Sent Event (an ``event:`` line only when named) of compact JSON."""
    data = b"data: " + json_bytes(payload) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data
