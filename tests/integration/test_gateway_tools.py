"""Tools and answer formats through Envoy, as the OpenAI and Anthropic surfaces will use them:
tool calls streamed as events and returned whole, tool turns sent back, JSON answers, the cache
bypassed, and bad input refused before any provider call."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_gateway_cache import provider_requests
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(60)

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters_json": json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "integer"}},
    "required": ["city", "temp_c"],
}


@pytest.fixture
def client(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30) as c:
        yield c


def sse(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: ")]


def body(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def test_tool_calls_stream_as_events_and_end_with_finish_reason_tool_calls(client: httpx.Client) -> None:
    events = sse(client.post("/v1/generate", json=body("fake-tools", f"weather? {uuid.uuid4()}", tools=[WEATHER])))
    assert "started" in events[0] and "completed" in events[-1]
    assert events[0]["started"]["cache_tier"] == "CACHE_TIER_UNSPECIFIED"  # bypassed
    pieces = [e["tool_call"] for e in events if "tool_call" in e]
    completed = events[-1]["completed"]
    assert completed["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
    calls = completed["tool_calls"]
    assert len(calls) >= 1 and len(pieces) >= len(calls)
    for call in calls:
        fragments = "".join(
            p.get("arguments_fragment", "") for p in pieces if p.get("index", 0) == call.get("index", 0)
        )
        assert json.loads(fragments) == json.loads(call["arguments_json"])
        first = next(p for p in pieces if p.get("index", 0) == call.get("index", 0))
        assert (first["id"], first["name"]) == (call["id"], call["name"])
    last_tool_event = max(i for i, e in enumerate(events) if "tool_call" in e)
    assert last_tool_event == len(events) - 2


def test_complete_returns_the_whole_tool_calls(client: httpx.Client) -> None:
    r = client.post("/v1/complete", json=body("fake-tools", f"weather? {uuid.uuid4()}", tools=[WEATHER]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
    assert out["tool_calls"] and all(json.loads(c["arguments_json"]) is not None for c in out["tool_calls"])


def test_a_tool_result_turn_goes_back_to_the_model(client: httpx.Client) -> None:
    request = {
        "model": "fake-tools",
        "messages": [
            {"role": "user", "content": f"weather in Paris? {uuid.uuid4()}"},
            {"role": "assistant", "content": ""},
            {"role": "tool", "content": '{"temp_c": 21}'},
        ],
        "tools": [WEATHER],
        "message_extras": [
            {"message_index": 1, "tool_calls": [{"id": "c1", "name": "get_weather", "arguments_json": "{}"}]},
            {"message_index": 2, "tool_call_id": "c1"},
        ],
    }
    # The fake refuses a tool turn without its tool_call_id, as OpenAI does.
    assert client.post("/v1/complete", json=request).status_code == 200


def test_a_json_schema_answer_comes_back_as_json_of_that_shape(client: httpx.Client) -> None:
    fmt = {"type": "RESPONSE_FORMAT_TYPE_JSON_SCHEMA", "schema_name": "weather", "schema_json": json.dumps(SCHEMA)}
    r = client.post("/v1/complete", json=body("fake-json", f"weather? {uuid.uuid4()}", response_format=fmt))
    assert r.status_code == 200, r.text
    value = json.loads(r.json()["text"])
    assert set(SCHEMA["required"]) <= set(value)
    assert r.json()["cache_tier"] == "CACHE_TIER_UNSPECIFIED"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [{**WEATHER, "name": "get weather"}]}, "tools[0].name"),
        ({"tools": [{**WEATHER, "parameters_json": "{"}]}, "tools[0].parameters_json"),
        (
            {"tools": [WEATHER], "tool_choice": {"mode": "TOOL_CHOICE_MODE_TOOL", "tool_name": "x"}},
            "tool_choice.tool_name",
        ),
        (
            {
                "response_format": {
                    "type": "RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
                    "schema_json": json.dumps({"type": "object", "required": "city"}),
                }
            },
            "response_format.schema.required",
        ),
        ({"message_extras": [{"message_index": 5, "tool_call_id": "c"}]}, "message_extras[0].message_index"),
    ],
)
def test_bad_tool_input_is_a_400_naming_the_field_and_reaches_no_provider(
    client: httpx.Client, fake_openai: str, extra: dict[str, Any], field: str
) -> None:
    before = provider_requests(fake_openai)
    r = client.post("/v1/generate", json=body("fake-tools", "weather?", **extra))
    assert r.status_code == 400, r.text
    details = r.json()["details"]
    violations = [v["field"] for d in details for v in d.get("field_violations", ())]
    assert field in violations, r.text
    assert provider_requests(fake_openai) == before
