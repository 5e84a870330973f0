"""What each adapter sends (pure translation), and the shared SSE and error parsing."""

from __future__ import annotations

import json

import pytest

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, Tool, ToolCall, ToolChoice, Usage
from tollway.router.providers import anthropic, gemini, openai_compat
from tollway.router.providers.wire import error_text, sse_events
from tollway.router.types import ErrorKind, kind_for_status, parse_retry_after

DEP = Deployment("p", "http://x", "up-model", default_max_tokens=333)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
WEATHER = Tool(
    "get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}}, cache_breakpoint=True
)
CONVERSATION = (
    ChatMessage("system", "Be brief.", cache_breakpoint=True),
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "Checking.", tool_calls=(CALL,)),
    ChatMessage("tool", '{"temp_c": 21}', tool_call_id="call_1"),
    ChatMessage("tool", "sunny", tool_call_id="call_1"),
    ChatMessage("user", "Thanks!", name="ann"),
)


def req(**kw: object) -> ChatRequest:
    kw.setdefault("messages", CONVERSATION)
    return ChatRequest("m", **kw)  # type: ignore[arg-type]


async def _pieces(text: str, size: int = 0):  # type: ignore[no-untyped-def]
    """The body as network reads: whole, or cut every ``size`` bytes (mid-line, mid-character)."""
    body = text.encode()
    step = size or len(body) or 1
    for i in range(0, len(body), step):
        yield body[i : i + step]


async def parse(text: str) -> list[tuple[str, str]]:
    whole = [(e.event, e.data) async for e in sse_events(_pieces(text))]
    for size in (1, 2, 7):
        assert [(e.event, e.data) async for e in sse_events(_pieces(text, size))] == whole
    return whole


# -- OpenAI ---------------------------------------------------------------------------


def test_openai_body_carries_tools_results_and_schema() -> None:
    fmt = ResponseFormat("json_schema", "w", {"type": "object"}, strict=True)
    body = openai_compat.request_body(
        req(tools=(WEATHER,), tool_choice=ToolChoice("tool", "get_weather"), response_format=fmt, max_tokens=5), DEP
    )
    assert body["model"] == "up-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    msgs = body["messages"]
    assert msgs[2]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}
    assert msgs[5] == {"role": "user", "content": "Thanks!", "name": "ann"}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert body["max_tokens"] == 5


def test_openai_body_without_tools_has_no_tool_choice() -> None:
    body = openai_compat.request_body(ChatRequest("m", (ChatMessage("user", "hi"),)), DEP, stream=False)
    assert "tools" not in body and "tool_choice" not in body and "stream_options" not in body


# -- Anthropic ------------------------------------------------------------------------


def test_anthropic_body_moves_system_merges_tool_results_and_marks_cache() -> None:
    body = anthropic.request_body(req(tools=(WEATHER,), tool_choice=ToolChoice("required"), temperature=1.7), DEP)
    assert body["system"] == [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]  # strictly alternating
    assistant = body["messages"][1]["content"]
    assert assistant == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    results = body["messages"][2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[0]["tool_use_id"] == "call_1"
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    assert body["tool_choice"] == {"type": "any"}
    assert body["max_tokens"] == 333  # the model's default, since the wire requires one
    assert body["temperature"] == 1.0  # Anthropic's range is [0, 1]


def test_anthropic_json_answer_is_a_forced_tool() -> None:
    fmt = ResponseFormat("json_schema", "weather", {"type": "object", "properties": {"c": {"type": "string"}}})
    body = anthropic.request_body(ChatRequest("m", (ChatMessage("user", "hi"),), response_format=fmt), DEP)
    assert body["tools"] == [
        {"name": "weather", "description": "Return the answer as this JSON object.", "input_schema": fmt.schema}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}


def test_anthropic_usage_adds_cache_reads_and_writes_to_input() -> None:
    start = anthropic._usage(
        {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 1}
    )
    assert start == Usage(130, 1, 100, 20)
    # message_delta usually carries only the cumulative output count.
    assert anthropic._usage({"output_tokens": 42}, start) == Usage(130, 42, 100, 20)


# -- Gemini ---------------------------------------------------------------------------


def test_gemini_body_uses_model_role_system_instruction_and_function_parts() -> None:
    fmt = ResponseFormat("json_schema", "w", {"type": "object"})
    body = gemini.request_body(
        req(tools=(WEATHER,), tool_choice=ToolChoice("tool", "get_weather"), response_format=fmt, max_tokens=9, seed=3)
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"][1] == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    results = body["contents"][2]["parts"]
    # The function name is looked up from the call; non-object results are wrapped.
    assert results[0] == {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}
    assert results[1] == {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 9,
        "seed": 3,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_gemini_retry_delay_comes_from_retry_info() -> None:
    raw = json.dumps(
        {
            "error": {
                "code": 429,
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo"},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"},
                ],
            }
        }
    ).encode()
    assert gemini.retry_delay(raw) == 7.5
    assert gemini.retry_delay(b"not json") is None


# -- shared ---------------------------------------------------------------------------


async def test_sse_parser_follows_the_event_stream_rules() -> None:
    text = (
        ": a comment\n"
        'event: message_start\ndata: {"a":\r\ndata: 1}\n\n'
        "data: plain\nid: 7\nretry: 100\n\n"
        "data:no-space\n\n"
        "\n\n"
        "event: cut\ndata: never dispatched"
    )
    assert await parse(text) == [("message_start", '{"a":\n1}'), ("message", "plain"), ("message", "no-space")]


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'{"error": {"message": "Rate limit reached", "type": "requests"}}', "Rate limit reached"),
        (b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}', "Overloaded"),
        (
            b'{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}',
            "The model is overloaded.",
        ),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "(empty body)"),
    ],
)
def test_error_text_finds_the_providers_message(raw: bytes, text: str) -> None:
    assert error_text(raw) == text


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, ErrorKind.BAD_REQUEST, False),
        (413, ErrorKind.BAD_REQUEST, False),
        (422, ErrorKind.BAD_REQUEST, False),
        (401, ErrorKind.AUTH, False),
        (403, ErrorKind.AUTH, False),
        (404, ErrorKind.NOT_FOUND, False),
        (408, ErrorKind.TIMEOUT, True),
        (429, ErrorKind.RATE_LIMITED, True),
        (500, ErrorKind.SERVER_ERROR, True),
        (502, ErrorKind.SERVER_ERROR, True),
        (503, ErrorKind.OVERLOADED, True),
        (529, ErrorKind.OVERLOADED, True),
    ],
)
def test_status_taxonomy(status: int, kind: ErrorKind, retryable: bool) -> None:
    assert kind_for_status(status) is kind and kind.retryable is retryable


def test_retry_after_header() -> None:
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None and parse_retry_after(None) is None
