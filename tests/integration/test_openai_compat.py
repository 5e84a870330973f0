"""The OpenAI-compatible API through Envoy, driven by the official OpenAI SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from tollway.launcher.stack import Stack

NO_CACHE = {"x-tollway-cache-mode": "bypass"}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sdk(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=api_key, max_retries=0)


def test_chat_completion(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="fake-ok", messages=[{"role": "user", "content": "hi"}], extra_headers=NO_CACHE
    )
    assert reply.choices[0].message.content == "Hello from fake-ok."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_streamed_chat_completion_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="fake-words-20",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=NO_CACHE,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"w{i} " for i in range(20))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_models_lists_the_catalog(sdk: openai.OpenAI) -> None:
    ids = {m.id for m in sdk.models.list()}
    assert {"fake-ok", "smollm2"} <= ids


def test_errors_come_back_as_openai_errors(sdk: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="fake-ok", messages=[{"role": "wizard", "content": "hi"}])
    assert "role" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="fake-429", messages=[{"role": "user", "content": "hi"}])
    assert limited.value.response.headers["retry-after"] == "1"
    anonymous = openai.OpenAI(base_url=stack.edge_url + "/v1", api_key="tw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "hi"}])


def test_malformed_json_is_400(stack: Stack, api_key: str) -> None:
    r = httpx.post(
        stack.edge_url + "/v1/chat/completions",
        content=b"{nope",
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_cache_headers_choose_the_mode_and_report_the_tier(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "openai-compat cache header test"}]
    first = sdk.chat.completions.with_raw_response.create(model="fake-ok", messages=messages)
    assert first.headers["x-tollway-cache-tier"] == "miss"
    second = sdk.chat.completions.with_raw_response.create(model="fake-ok", messages=messages)
    assert second.headers["x-tollway-cache-tier"] == "exact"
    assert second.parse().choices[0].message.content == "Hello from fake-ok."
    bypassed = sdk.chat.completions.with_raw_response.create(model="fake-ok", messages=messages, extra_headers=NO_CACHE)
    assert bypassed.headers["x-tollway-cache-tier"] == "none"
