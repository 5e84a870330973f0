"""The OpenAI surface as the official `openai` SDK sees it through Envoy (issue 16): embeddings,
models, the rest of chat completions, and the SDK's error classes."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import openai
import pytest

from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.launcher.stack import Stack
from tollway.mesh import clients

pytestmark = pytest.mark.timeout(90)
NO_CACHE = {"x-tollway-cache-mode": "bypass"}
EMBED_MODEL = "minilm-l6-v2-int8"


@pytest.fixture
def sdk(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=api_key, max_retries=0)


def _service_vectors(stack: Stack, texts: list[str]) -> np.ndarray:
    async def call() -> list[list[float]]:
        async with clients.channel(stack.address("embedding")) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=texts, model=EMBED_MODEL), timeout=30)
            return [list(e.values) for e in reply.embeddings]

    return np.array(asyncio.run(call()), dtype=np.float32)


def test_embeddings_float_and_base64_match_the_embedding_service(sdk: openai.OpenAI, stack: Stack) -> None:
    texts = ["the cat sat on the mat", "quarterly revenue grew by 4 percent"]
    expected = _service_vectors(stack, texts)
    as_floats = sdk.embeddings.with_raw_response.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    floats = as_floats.parse()
    assert [d.index for d in floats.data] == [0, 1]
    assert np.allclose(np.array([d.embedding for d in floats.data], dtype=np.float32), expected, atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    assert as_floats.headers["x-tollway-model"] == EMBED_MODEL
    # The SDK asks for base64 by default and decodes it itself.
    packed = sdk.embeddings.create(model=EMBED_MODEL, input=texts[0])
    assert np.array_equal(np.array(packed.data[0].embedding, dtype=np.float32), expected[0])
    raw = httpx.post(
        stack.edge_url + "/v1/embeddings",
        json={"model": EMBED_MODEL, "input": texts[1], "encoding_format": "base64"},
        headers={"authorization": f"Bearer {sdk.api_key}"},
    )
    vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), "<f4")
    assert np.array_equal(vector, expected[1])


def test_embeddings_refusals(sdk: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as dims:
        sdk.embeddings.create(model=EMBED_MODEL, input="x", dimensions=128)
    assert dims.value.code == "dimensions_unsupported" and "384" in dims.value.message
    with pytest.raises(openai.BadRequestError) as tokens:
        sdk.embeddings.create(model=EMBED_MODEL, input=[1, 2, 3])
    assert tokens.value.param == "input"
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert EMBED_MODEL in unknown.value.message
    anonymous = openai.OpenAI(base_url=stack.edge_url + "/v1", api_key="tw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.embeddings.create(model=EMBED_MODEL, input="x")


def test_models_retrieve(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve("fake-ok")
    assert model.id == "fake-ok" and model.object == "model" and model.owned_by == "fakeai"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("no-such-model")
    assert "fake-ok" in missing.value.message


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
HI = [{"role": "user", "content": "hi"}]


def test_tool_calls_whole_and_streamed(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="fake-tools", messages=HI, tools=[WEATHER, TIME])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"
    stream = sdk.chat.completions.create(model="fake-tools", messages=HI, tools=[WEATHER, TIME], stream=True)
    pieces: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = pieces.setdefault(delta_call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta_call.id or ""
            entry["name"] += (delta_call.function.name or "") if delta_call.function else ""
            entry["arguments"] += (delta_call.function.arguments or "") if delta_call.function else ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    assert [pieces[i]["name"] for i in sorted(pieces)] == ["get_weather", "get_time"]
    assert [json.loads(pieces[i]["arguments"]) for i in sorted(pieces)] == [
        json.loads(c.function.arguments) for c in calls
    ]
    # The calls go back as an assistant turn with tool results: the request is accepted.
    follow = sdk.chat.completions.create(
        model="fake-tools",
        tools=[WEATHER, TIME],
        messages=[
            *HI,
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
            *[{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls],
        ],
    )
    assert follow.choices[0].finish_reason == "tool_calls"


def test_json_mode_and_schema(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="fake-json", messages=HI, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    shaped = sdk.chat.completions.create(
        model="fake-json",
        messages=HI,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}},
    )
    assert set(json.loads(shaped.choices[0].message.content or "")) == {"city"}
    # A model that never answers JSON: the gateway's retries end in a 500 that says so.
    with pytest.raises(openai.InternalServerError) as no_json:
        sdk.chat.completions.create(model="fake-bad-json", messages=HI, response_format={"type": "json_object"})
    assert "JSON" in no_json.value.message


def test_n_is_served_by_fan_out_and_refused_when_streamed(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="fake-ok", messages=HI, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == "Hello from fake-ok." for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    with pytest.raises(openai.BadRequestError) as streamed:
        sdk.chat.completions.create(model="fake-ok", messages=HI, n=2, stream=True)
    assert streamed.value.param == "n"
    with pytest.raises(openai.BadRequestError) as logprobs:
        sdk.chat.completions.create(model="fake-ok", messages=HI, logprobs=True)
    assert logprobs.value.param == "logprobs"


def test_parameters_options_and_headers(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake-ok",
        messages=[{"role": "user", "content": "sdk options test"}],
        user="u-1",
        seed=7,
        stop=["zzz"],
        max_completion_tokens=30,
        extra_body={"cache": {"mode": "bypass"}, "feature": "sdk-test", "priority": "interactive"},
    )
    assert raw.parse().choices[0].message.content == "Hello from fake-ok."
    headers = raw.headers
    assert headers["x-tollway-cache-tier"] == "none"  # the body's cache option bypassed it
    assert headers["x-tollway-model"] == "fake-ok" and headers["x-tollway-provider"] == "fakeai"
    assert headers["x-tollway-attempts"] == "1"
    assert float(headers["x-tollway-cost-usd"]) >= 0
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="fake-ok", messages=HI, extra_body={"priority": "urgent"})
    assert bad.value.param == "priority"


def test_error_classes_for_each_status(sdk: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="fake-ok", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.edge_url + "/v1", api_key="tw-no", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=HI)
    with pytest.raises(openai.APIStatusError) as large:
        sdk.chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "x" * 2_000_000}])
    assert large.value.status_code == 413
    # 429 on this surface: test_sdk_budget_and_disconnect.py (a budget refusal); a provider's own 429
    # here would count toward the fake's shared circuit breaker and turn other tests' 429 into 503.
    with pytest.raises(openai.InternalServerError) as down:
        sdk.chat.completions.create(model="unreachable", messages=HI, extra_headers=NO_CACHE)
    assert down.value.status_code == 503


def test_raw_sse_framing_of_a_chat_stream(stack: Stack, api_key: str) -> None:
    body = {"model": "fake-ok", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {api_key}", **NO_CACHE}
    with httpx.stream("POST", stack.edge_url + "/v1/chat/completions", json=body, headers=headers) as r:
        raw = b"".join(r.iter_raw())
    frames = raw.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(f.removeprefix(b"data: ")) for f in frames[:-2]]
    assert all(f.startswith(b"data: {") and b"\n" not in f for f in frames[:-2])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_retrieval_option_reaches_the_gateway(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(
            model="fake-ok", messages=HI, extra_body={"retrieval": {"collection": "no-such-collection"}}
        )
    assert "no-such-collection" in missing.value.message
