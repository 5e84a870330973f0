"""Anthropic Messages through Envoy, driven by the official `anthropic` SDK (issue 16)."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(90)
NO_CACHE = {"x-tollway-cache-mode": "bypass"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def sdk(stack: Stack, api_key: str) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key, and anthropic-version, as it does to Anthropic.
    return anthropic.Anthropic(base_url=stack.edge_url, api_key=api_key, max_retries=0)


def test_message_with_a_system_prompt(sdk: anthropic.Anthropic) -> None:
    raw = sdk.messages.with_raw_response.create(
        model="fake-ok", max_tokens=50, system="be brief", messages=HI, extra_headers=NO_CACHE
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello from fake-ok."
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4 and message.usage.input_tokens > 0
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["x-tollway-model"] == "fake-ok"
    assert raw.headers["x-tollway-attempts"] == "1"


def test_max_tokens_stop_reason(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model="fake-long", max_tokens=5, messages=HI, extra_headers=NO_CACHE)
    assert message.stop_reason == "max_tokens"


def test_cached_prompt_tokens_are_reported_as_cache_reads(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model="fake-cached", max_tokens=50, messages=HI, extra_headers=NO_CACHE)
    assert message.usage.cache_read_input_tokens > 0


def test_streamed_message_events_in_order(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="fake-words-20", max_tokens=100, messages=HI, extra_headers=NO_CACHE) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[:3] == ["message_start", "content_block_start", "ping"] or kinds[0] == "message_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == "".join(f"w{i} " for i in range(20))
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 20


def test_raw_sse_framing(stack: Stack, api_key: str) -> None:
    body = {"model": "fake-ok", "max_tokens": 20, "messages": HI, "stream": True}
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01", **NO_CACHE}
    with httpx.stream("POST", stack.edge_url + "/v1/messages", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw())
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    names = []
    for frame in frames[:-1]:
        event, data = frame.split(b"\n")
        assert event.startswith(b"event: ") and data.startswith(b"data: ")
        name = event[len(b"event: ") :].decode()
        assert json.loads(data[len(b"data: ") :])["type"] == name
        names.append(name)
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * (len(names) - 6),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert len(names) > 6


def test_count_tokens(sdk: anthropic.Anthropic) -> None:
    counted = sdk.messages.count_tokens(model="fake-ok", system="be brief", messages=HI)
    assert counted.input_tokens > 0
    longer = sdk.messages.count_tokens(
        model="fake-ok", system="be brief", messages=[{"role": "user", "content": "hi " * 50}]
    )
    assert longer.input_tokens > counted.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="no-such-model", messages=HI)


def test_error_classes(sdk: anthropic.Anthropic, stack: Stack) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(model="fake-ok", max_tokens=10, messages=[{"role": "system", "content": "x"}])
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "messages[0].role" in bad.value.message
    with pytest.raises(anthropic.BadRequestError, match="extended thinking"):
        sdk.messages.create(
            model="fake-ok", max_tokens=10, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="no-such-model", max_tokens=10, messages=HI)
    # 429 on this surface: test_sdk_budget_and_disconnect.py (a budget refusal); a provider's own 429
    # here would count toward the fake's shared circuit breaker and turn other tests' 429 into 503.
    with pytest.raises(anthropic.InternalServerError) as down:
        sdk.messages.create(model="unreachable", max_tokens=10, messages=HI, extra_headers=NO_CACHE)
    assert down.value.status_code == 503
    with pytest.raises(anthropic.RequestTooLargeError) as large:
        sdk.messages.create(model="fake-ok", max_tokens=10, messages=[{"role": "user", "content": "x" * 2_000_000}])
    assert large.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    stranger = anthropic.Anthropic(base_url=stack.edge_url, api_key="tw-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        stranger.messages.create(model="fake-ok", max_tokens=10, messages=HI)
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_anthropic_version_is_required(stack: Stack, api_key: str) -> None:
    r = httpx.post(
        stack.edge_url + "/v1/messages",
        json={"model": "fake-ok", "max_tokens": 5, "messages": HI},
        headers={"x-api-key": api_key},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in r.json()["error"]["message"]


TOOLS = [
    {"name": "get_weather", "description": "The weather.", "input_schema": {"type": "object", "properties": {}}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]


def test_tool_use_whole_and_streamed(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model="fake-tools", max_tokens=100, messages=HI, tools=TOOLS)
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert uses[0].input["city"] == "Paris"  # type: ignore[index]
    with sdk.messages.stream(model="fake-tools", max_tokens=100, messages=HI, tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in streamed] == [(u.id, u.name, u.input) for u in uses]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    # The results go back as tool_result blocks.
    follow = sdk.messages.create(
        model="fake-tools",
        max_tokens=100,
        tools=TOOLS,
        tool_choice={"type": "any"},
        messages=[
            *HI,
            {"role": "assistant", "content": [u.model_dump() for u in uses]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "ok"} for u in uses]},
        ],
    )
    assert follow.stop_reason == "tool_use"


@pytest.mark.model
def test_messages_against_the_local_model(sdk: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "Name one colour."}]
    message = sdk.messages.create(model="smollm2", max_tokens=12, messages=ask, extra_headers=NO_CACHE)
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens > 0
    with sdk.messages.stream(model="smollm2", max_tokens=12, messages=ask, extra_headers=NO_CACHE) as stream:
        text = "".join(stream.text_stream)
    assert text and stream.get_final_message().usage.output_tokens > 0
