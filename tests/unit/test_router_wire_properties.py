"""Generated inputs for what the router reads from providers: the SSE parser, each adapter's
stream and whole-answer parsers, and the paths that repair or wrap JSON (tool-call fragments,
Gemini's function responses, error bodies).

The property of every parser: whatever a provider sends (any JSON, any bytes), the router gets
events or a ProviderError, never another exception that would end the call as INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatMessage, ChatRequest
from tollway.router.providers import anthropic, gemini, openai_compat
from tollway.router.providers.wire import SSEEvent, error_text, sse_events
from tollway.router.tools import ToolCallAssembler, ToolCallError
from tollway.router.types import ProviderError, ToolCallDelta

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEP = Deployment("p", "http://x", "up-model", default_max_tokens=64)
REQ = ChatRequest("m", (ChatMessage("user", "hi"),))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def _shaped(keys: list[str], types: list[str]) -> st.SearchStrategy[Any]:
    """JSON objects that use the provider's own keys and type names, so parsing goes deep."""
    key = st.sampled_from(keys) | st.text(max_size=6)
    value = st.sampled_from(types) | JSON
    leaf = st.dictionaries(key, value, max_size=5)
    return st.recursive(
        leaf, lambda inner: st.dictionaries(key, inner | st.lists(inner, max_size=3), max_size=4), max_leaves=8
    )


OPENAI_DOCS = _shaped(
    ["choices", "delta", "message", "content", "tool_calls", "function", "arguments", "name", "index", "id",
     "finish_reason", "usage", "prompt_tokens", "completion_tokens", "prompt_tokens_details", "error"],
    ["stop", "length", "tool_calls"],
)
ANTHROPIC_DOCS = _shaped(
    ["type", "message", "usage", "content_block", "index", "delta", "text", "partial_json", "stop_reason",
     "input_tokens", "output_tokens", "cache_read_input_tokens", "content", "name", "id", "input", "error"],
    ["message_start", "content_block_start", "content_block_delta", "message_delta", "message_stop", "error",
     "text", "tool_use", "text_delta", "input_json_delta", "end_turn", "tool_use", "max_tokens"],
)
GEMINI_DOCS = _shaped(
    ["candidates", "content", "parts", "text", "functionCall", "name", "args", "finishReason", "usageMetadata",
     "promptTokenCount", "candidatesTokenCount", "error", "code", "message", "status"],
    ["STOP", "MAX_TOKENS", "SAFETY"],
)


class _Response:
    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.headers: dict[str, str] = {}
        self._body = body

    async def aread(self) -> bytes:
        return self._body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        yield self._body


class _Client:
    """Answers every call with one body, as a provider's HTTP server would."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, **kw: Any) -> AsyncIterator[_Response]:
        yield _Response(self.body)

    async def aclose(self) -> None:
        pass


def _sse(docs: list[Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs)


async def _drain(adapter: Any) -> None:
    with contextlib.suppress(ProviderError):
        async for _ in adapter.stream(REQ, DEP):
            pass


async def _complete(adapter: Any) -> None:
    with contextlib.suppress(ProviderError):
        await adapter.complete(REQ, DEP)


ADAPTERS = {
    "openai": (lambda client: openai_compat.OpenAICompatAdapter(client=client), OPENAI_DOCS),
    "anthropic": (lambda client: anthropic.AnthropicAdapter(client=client), ANTHROPIC_DOCS),
    "gemini": (lambda client: gemini.GeminiAdapter(client=client), GEMINI_DOCS),
}


def _check_stream(name: str, docs: list[Any]) -> None:
    make, _ = ADAPTERS[name]
    asyncio.run(_drain(make(_Client(_sse(docs)))))


def _check_complete(name: str, doc: Any) -> None:
    make, _ = ADAPTERS[name]
    asyncio.run(_complete(make(_Client(json.dumps(doc).encode()))))


@SETTINGS
@given(st.lists(OPENAI_DOCS | JSON, max_size=5))
def test_openai_stream_parser_raises_only_provider_errors(docs: list[Any]) -> None:
    _check_stream("openai", docs)


@SETTINGS
@given(st.lists(ANTHROPIC_DOCS | JSON, max_size=5))
def test_anthropic_stream_parser_raises_only_provider_errors(docs: list[Any]) -> None:
    _check_stream("anthropic", docs)


@SETTINGS
@given(st.lists(GEMINI_DOCS | JSON, max_size=5))
def test_gemini_stream_parser_raises_only_provider_errors(docs: list[Any]) -> None:
    _check_stream("gemini", docs)


@SETTINGS
@given(OPENAI_DOCS | JSON)
def test_openai_answer_parser_raises_only_provider_errors(doc: Any) -> None:
    _check_complete("openai", doc)


@SETTINGS
@given(ANTHROPIC_DOCS | JSON)
def test_anthropic_answer_parser_raises_only_provider_errors(doc: Any) -> None:
    _check_complete("anthropic", doc)


@SETTINGS
@given(GEMINI_DOCS | JSON)
def test_gemini_answer_parser_raises_only_provider_errors(doc: Any) -> None:
    _check_complete("gemini", doc)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_are_events_or_a_provider_error(body: bytes) -> None:
    for make, _ in ADAPTERS.values():
        asyncio.run(_drain(make(_Client(body))))
        asyncio.run(_complete(make(_Client(body))))


# -- The SSE parser --------------------------------------------------------------------------

# What a body can carry: any character but line ends, and no lone surrogate (not UTF-8).
_LINE_TEXT = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
_FIELD_LINES = st.lists(st.tuples(st.sampled_from(["data", "event", "id", "retry", ""]), _LINE_TEXT), max_size=4)


async def _events(lines: list[str], piece: int = 0) -> list[SSEEvent]:
    """The events of a body of ``lines``, read whole or ``piece`` bytes at a time."""
    body = "".join(line + "\n" for line in lines).encode()

    async def source() -> AsyncIterator[bytes]:
        step = piece or len(body) or 1
        for i in range(0, len(body), step):
            yield body[i : i + step]

    return [e async for e in sse_events(source())]


@SETTINGS
@given(st.lists(_FIELD_LINES, max_size=4))
def test_sse_events_come_back_as_they_were_written(written: list[list[tuple[str, str]]]) -> None:
    """Events written by the spec's rules (data lines joined with newlines, the last `event:`
    wins, comments and other fields ignored) are read back exactly, whatever their text."""
    lines: list[str] = []
    expected: list[SSEEvent] = []
    for fields in written:
        data = [value for field, value in fields if field == "data"]
        events = [value for field, value in fields if field == "event"]
        lines.append(": a comment")
        for field, value in fields:
            lines.append(f"{field}: {value}" if field else f":{value}")
        lines.append("")
        if data:
            expected.append(SSEEvent((events[-1] if events else "") or "message", "\n".join(data)))
    assert asyncio.run(_events(lines)) == expected
    assert asyncio.run(_events(lines, piece=3)) == expected  # reads cut mid-line and mid-character


@SETTINGS
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=10))
def test_sse_parser_accepts_any_lines_and_never_returns_an_unfinished_event(lines: list[str]) -> None:
    events = asyncio.run(_events([*lines, "data: cut"]))
    assert all(isinstance(e.data, str) for e in events)
    assert "cut" not in [e.data.split("\n")[-1] for e in events]


# -- JSON repair and wrapping ----------------------------------------------------------------

OBJECTS = st.dictionaries(st.text(max_size=8), JSON, max_size=4)


@SETTINGS
@given(OBJECTS, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_tool_call_fragments_split_anywhere_reassemble(arguments: dict[str, Any], cuts: list[int]) -> None:
    text = json.dumps(arguments)
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    assembler = ToolCallAssembler()
    for i, (start, end) in enumerate(itertools.pairwise(points)):
        assembler.add(ToolCallDelta(3, id="c" if i == 0 else "", name="f" if i == 0 else "", arguments=text[start:end]))
    (call,) = assembler.calls()
    assert json.loads(call.arguments) == arguments and call.name == "f" and call.index == 0


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3), st.text(max_size=3), st.text(max_size=12)), max_size=8))
def test_tool_call_assembly_fails_only_with_tool_call_error(fragments: list[tuple[int, str, str]]) -> None:
    assembler = ToolCallAssembler()
    for index, name, arguments in fragments:
        assembler.add(ToolCallDelta(index, name=name, arguments=arguments))
    try:
        calls = assembler.calls()
    except ToolCallError:
        return
    assert all(isinstance(json.loads(c.arguments), dict) for c in calls)


@SETTINGS
@given(st.text(max_size=40) | JSON.map(json.dumps))
def test_gemini_function_responses_are_always_objects(content: str) -> None:
    wrapped = gemini._response_object(content)
    assert isinstance(wrapped, dict)
    json.dumps(wrapped)


@SETTINGS
@given(st.binary(max_size=100) | JSON.map(lambda v: json.dumps(v).encode()))
def test_error_text_reads_any_body(raw: bytes) -> None:
    assert isinstance(error_text(raw), str)
