"""prompt_ref through Envoy, on the native JSON API and the OpenAI API: the prompt store's
rendering reaches the provider, the version used comes back in ``started``, the response and
the ``x-tollway-prompt-*`` headers, the call record names it, the cache keeps versions apart
(a label move changes which answers are served; rolling back serves the old ones again), and
the store's refusals pass through unchanged."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest
import redis

from tests.support.polling import eventually_sync
from tollway.launcher.stack import Stack
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc

pytestmark = pytest.mark.timeout(60)

SCHEMA = {
    "type": "object",
    "required": ["name", "topic"],
    "properties": {"name": {"type": "string"}, "topic": {"type": "string", "enum": ["billing", "api"]}},
}
VARIABLES = {"name": "Ada", "topic": "api"}


@pytest.fixture
def client(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30) as c:
        yield c


@pytest.fixture
def sdk(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.edge_url + "/v1", api_key=api_key, max_retries=0)


@pytest.fixture
def prompts(stack: Stack) -> Iterator[prompts_pb2_grpc.PromptsServiceStub]:
    with grpc.insecure_channel(stack.address("prompts")) as channel:
        yield prompts_pb2_grpc.PromptsServiceStub(channel)


def publish(stub: prompts_pb2_grpc.PromptsServiceStub, template: str, greeting: str, max_tokens: int) -> int:
    """Publishes a version of ``template`` (created on first use); returns its number."""
    stub.CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id=template, description="a test", actor="ci"))
    content = prompts_pb2.PromptContent(
        messages=[
            prompts_pb2.MessageTemplate(role="system", content=f"{greeting}. Answer about one topic only."),
            prompts_pb2.MessageTemplate(role="user", content="I am {{ name }}; my question is about {{ topic }}."),
        ],
        variables_schema_json=json.dumps(SCHEMA),
        parameters=prompts_pb2.ModelParameters(max_tokens=max_tokens, temperature=0.0),
    )
    reply = stub.PublishVersion(
        prompts_pb2.PublishVersionRequest(template_id=template, content=content, author="ci"), timeout=10
    )
    return reply.version.version


def set_label(
    stub: prompts_pb2_grpc.PromptsServiceStub, template: str, version: int, label: str = "production"
) -> None:
    stub.SetLabel(prompts_pb2.SetLabelRequest(template_id=template, label=label, version=version, actor="ci"))


@pytest.fixture
def template(prompts: prompts_pb2_grpc.PromptsServiceStub) -> str:
    """A fresh template with version 1 (3-word answers) on production."""
    tid = f"gw-{uuid.uuid4().hex[:10]}"
    set_label(prompts, tid, publish(prompts, tid, "Be brief", 3))
    return tid


def generate(
    client: httpx.Client, payload: dict[str, Any]
) -> tuple[httpx.Response, dict[str, Any], str, dict[str, Any]]:
    r = client.post("/v1/generate", json=payload)
    assert r.status_code == 200, r.text
    events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: ")]
    text = "".join(e["delta"]["text"] for e in events if "delta" in e)
    return r, events[0]["started"], text, events[-1]["completed"]


def ref(template: str, **extra: Any) -> dict[str, Any]:
    return {"template": template, "variables": VARIABLES, **extra}


def violations(r: httpx.Response) -> list[str]:
    details = next(d for d in r.json()["details"] if d["@type"].endswith("BadRequest"))
    return [v["field"] for v in details["field_violations"]]


def call_record(stack: Stack, request_id: str) -> dict[str, str]:
    db = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        found: list[dict[str, str]] = []

        def seen() -> bool:
            found[:] = [f for _, f in db.xrevrange("tollway:calls", count=200) if f.get("request_id") == request_id]
            return bool(found)

        eventually_sync(seen, what=f"the call record of {request_id!r}")
        return found[0]
    finally:
        db.close()


def test_native_generate_renders_the_prompt_and_names_the_version(
    client: httpx.Client, stack: Stack, template: str
) -> None:
    rid = f"p-{uuid.uuid4().hex[:12]}"
    payload = {"model": "fake-words-20", "prompt_ref": ref(template), "request_id": rid, "user": "u1"}
    r, started, text, completed = generate(client, payload)
    assert (started["prompt_template"], started["prompt_version"], started["prompt_resolution"]) == (
        template,
        "1",  # int64 is a JSON string
        "label",
    )
    assert r.headers["x-tollway-prompt-template"] == template
    assert (r.headers["x-tollway-prompt-version"], r.headers["x-tollway-prompt-resolution"]) == ("1", "label")
    assert len(text.split()) == 3  # the version's max_tokens, as the request set none

    # The provider saw the rendered messages: the same prompt sent by hand costs the same tokens.
    by_hand = {
        "model": "fake-words-20",
        "max_tokens": 3,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Be brief. Answer about one topic only."},
            {"role": "user", "content": "I am Ada; my question is about api."},
        ],
        "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
    }
    _, plain_started, _, plain = generate(client, by_hand)
    assert completed["usage"]["input_tokens"] == plain["usage"]["input_tokens"] > 0
    assert plain_started["prompt_template"] == "" and plain_started["prompt_version"] == "0"

    record = call_record(stack, rid)
    assert (record["prompt_template"], record["prompt_version"]) == (template, "1")
    assert record["prompt_hash"] and record["status"] == "OK"


def test_native_complete_with_a_version_and_own_messages(client: httpx.Client, template: str) -> None:
    body = {
        "model": "fake-words-20",
        "prompt_ref": ref(template, version=1),
        "messages": [{"role": "user", "content": "And one more thing."}],
        "max_tokens": 2,
    }
    r = client.post("/v1/complete", json=body)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert (reply["prompt_template"], reply["prompt_version"], reply["prompt_resolution"]) == (template, "1", "version")
    assert r.headers["x-tollway-prompt-resolution"] == "version"
    assert len(reply["text"].split()) == 2  # the request's own max_tokens wins over the version's


def test_a_label_move_changes_the_answer_served_and_rollback_serves_the_old_one(
    client: httpx.Client, prompts: prompts_pb2_grpc.PromptsServiceStub, template: str
) -> None:
    payload = {"model": "fake-words-20", "prompt_ref": ref(template)}
    _, first, v1_text, _ = generate(client, payload)
    assert (first["cache_tier"], first["prompt_version"]) == ("CACHE_TIER_MISS", "1")

    def served() -> tuple[dict[str, Any], str]:
        _, started, text, _ = generate(client, payload)
        return started, text

    # Stored off the response path: wait until version 1's answer is served from the cache.
    eventually_sync(lambda: served()[0]["cache_tier"] == "CACHE_TIER_EXACT", what="version 1's answer cached")

    v2 = publish(prompts, template, "Be thorough", 5)
    started, text = served()
    assert started["prompt_version"] == "1", "publishing a version moves no label"
    set_label(prompts, template, v2)
    started, v2_text = served()
    # Version 1's cached answer is not served for version 2: the model answers again.
    assert (started["cache_tier"], started["prompt_version"]) == ("CACHE_TIER_MISS", str(v2))
    assert len(v2_text.split()) == 5 and len(v1_text.split()) == 3
    eventually_sync(lambda: served()[0]["cache_tier"] == "CACHE_TIER_EXACT", what="version 2's answer cached")
    started, text = served()
    assert (started["prompt_version"], text) == (str(v2), v2_text)

    prompts.RollbackLabel(prompts_pb2.RollbackLabelRequest(template_id=template, label="production", actor="ci"))
    started, text = served()
    assert (started["cache_tier"], started["prompt_version"], text) == ("CACHE_TIER_EXACT", "1", v1_text)


def test_missing_variables_are_400_listing_every_name(client: httpx.Client, sdk: openai.OpenAI, template: str) -> None:
    for path in ("/v1/generate", "/v1/complete"):
        r = client.post(path, json={"model": "fake-ok", "prompt_ref": {"template": template}})
        assert r.status_code == 400, r.text
        assert sorted(violations(r)) == ["prompt_ref.variables.name", "prompt_ref.variables.topic"]
        assert "name" in r.json()["message"] and "topic" in r.json()["message"]
    r = client.post(
        "/v1/complete", json={"model": "fake-ok", "prompt_ref": ref(template, variables={"name": "A", "topic": 3})}
    )
    assert r.status_code == 400 and set(violations(r)) == {"prompt_ref.variables.topic"}  # type and enum
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="fake-ok", messages=[], extra_body={"prompt_ref": {"template": template}})
    assert "name" in bad.value.message and "topic" in bad.value.message


def test_unknown_template_label_or_version_is_404(client: httpx.Client, sdk: openai.OpenAI, template: str) -> None:
    for prompt_ref in (
        ref(f"nope-{uuid.uuid4().hex[:8]}"),
        ref(template, label="no-such-label"),
        ref(template, version=99),
    ):
        r = client.post("/v1/complete", json={"model": "fake-ok", "prompt_ref": prompt_ref})
        assert r.status_code == 404, r.text
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="fake-ok", messages=[], extra_body={"prompt_ref": ref("nope-at-all")})


def test_bad_prompt_refs_are_refused_before_any_call(client: httpx.Client) -> None:
    r = client.post("/v1/complete", json={"model": "fake-ok", "prompt_ref": {"template": ""}})
    assert r.status_code == 400 and violations(r) == ["prompt_ref.template"]
    r = client.post("/v1/complete", json={"model": "fake-ok", "prompt_ref": {"template": "t", "version": "0"}})
    assert r.status_code == 400 and violations(r) == ["prompt_ref.version"]
    r = client.post("/v1/complete", json={"model": "fake-ok", "messages": []})
    assert r.status_code == 400 and violations(r) == ["messages"]


def test_the_openai_sdk_sends_prompt_ref_through_extra_body(sdk: openai.OpenAI, template: str) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake-words-20", messages=[], user="u7", extra_body={"prompt_ref": ref(template)}
    )
    assert raw.headers["x-tollway-prompt-template"] == template
    assert (raw.headers["x-tollway-prompt-version"], raw.headers["x-tollway-prompt-resolution"]) == ("1", "label")
    assert len(raw.parse().choices[0].message.content.split()) == 3

    with sdk.chat.completions.with_streaming_response.create(
        model="fake-words-20",
        messages=[{"role": "user", "content": "Also this."}],
        stream=True,
        extra_body={"prompt_ref": ref(template, version=1)},
    ) as streamed:
        assert streamed.headers["x-tollway-prompt-resolution"] == "version"
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    assert len(text.split()) == 3

    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="fake-ok", messages=[], extra_body={"prompt_ref": {"template": template, "label": "a", "version": 1}}
        )
    assert bad.value.body["param"] == "prompt_ref.version"  # type: ignore[index]
