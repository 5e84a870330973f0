"""OpenAI Responses through Envoy, driven by the official `openai` SDK (issue 16): text and
function calls, whole and streamed, stateless."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(90)
NO_CACHE = {"x-tollway-cache-mode": "bypass"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture
def sdk(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=api_key, max_retries=0)


def test_text_response(sdk: openai.OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(
        model="fake-ok", input="hi", instructions="be brief", extra_headers=NO_CACHE
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.store is False
    assert response.output_text == "Hello from fake-ok."
    assert response.usage is not None and response.usage.output_tokens == 4
    assert raw.headers["x-tollway-model"] == "fake-ok"


def test_incomplete_at_max_output_tokens(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="fake-long", input="hi", max_output_tokens=16, extra_headers=NO_CACHE)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


def test_streamed_text_events(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(model="fake-words-20", input="hi", extra_headers=NO_CACHE) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") >= 1
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "".join(f"w{i} " for i in range(20))


def test_function_calls_whole_and_streamed(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="fake-tools", input="weather?", tools=[WEATHER, TIME])
    calls = [item for item in response.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    with sdk.responses.stream(model="fake-tools", input="weather?", tools=[WEATHER, TIME]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    streamed = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in streamed] == [(c.name, json.loads(c.arguments)) for c in calls]
    # The calls and their outputs go back as input items (no previous_response_id).
    follow = sdk.responses.create(
        model="fake-tools",
        tools=[WEATHER, TIME],
        input=[
            {"role": "user", "content": "weather?"},
            *[{"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls],
            *[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls],
        ],
    )
    assert follow.status == "completed"


def test_json_schema_text_format(sdk: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = sdk.responses.create(
        model="fake-json",
        input="where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert set(json.loads(response.output_text)) == {"city"}


def test_stateless_refusals_and_error_classes(sdk: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as previous:
        sdk.responses.create(model="fake-ok", input="hi", previous_response_id="resp_123")
    assert previous.value.param == "previous_response_id" and "stateless" in previous.value.message
    with pytest.raises(openai.BadRequestError) as stored:
        sdk.responses.create(model="fake-ok", input="hi", store=True)
    assert stored.value.param == "store"
    with pytest.raises(openai.BadRequestError) as hosted:
        sdk.responses.create(model="fake-ok", input="hi", tools=[{"type": "web_search"}])
    assert hosted.value.param == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="no-such-model", input="hi")
    # 429 on this surface: test_sdk_budget_and_disconnect.py (a budget refusal); a provider's own 429
    # here would count toward the fake's shared circuit breaker and turn other tests' 429 into 503.
    with pytest.raises(openai.InternalServerError) as down:
        sdk.responses.create(model="unreachable", input="hi", extra_headers=NO_CACHE)
    assert down.value.status_code == 503
    with pytest.raises(openai.APIStatusError) as large:
        sdk.responses.create(model="fake-ok", input="x" * 2_000_000)
    assert large.value.status_code == 413
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.edge_url + "/v1", api_key="tw-no", max_retries=0).responses.create(
            model="fake-ok", input="hi"
        )


def test_raw_sse_framing(stack: Stack, api_key: str) -> None:
    body = {"model": "fake-ok", "input": "hi", "stream": True}
    headers = {"authorization": f"Bearer {api_key}", **NO_CACHE}
    with httpx.stream("POST", stack.edge_url + "/v1/responses", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw())
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    numbers = []
    for frame in frames[:-1]:
        event, data = frame.split(b"\n")
        payload = json.loads(data.removeprefix(b"data: "))
        assert event == b"event: " + payload["type"].encode()
        numbers.append(payload["sequence_number"])
    assert numbers == list(range(len(numbers)))
    assert json.loads(frames[-2].split(b"\n")[1].removeprefix(b"data: "))["response"]["status"] == "completed"


@pytest.mark.model
def test_responses_against_the_local_model(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model="smollm2", input="Name one colour.", max_output_tokens=16, extra_headers=NO_CACHE
    )
    assert response.output_text and response.status in ("completed", "incomplete")
