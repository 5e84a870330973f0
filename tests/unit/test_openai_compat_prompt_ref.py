"""The OpenAI surface's ``prompt_ref`` (SDKs send it through ``extra_body``): strict types,
every refusal naming its field, and the prompt headers and OpenAPI description."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.gateway.v1 import gateway_pb2
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import openapi, translate


def translated(**body: Any) -> gateway_pb2.GenerateRequest:
    req, _, _ = translate.chat_request(translate.parse_body(json.dumps({"model": "m", **body}).encode()))
    return req


def refused(**body: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        translated(**body)
    return err.value


def test_a_prompt_ref_with_no_messages_is_translated() -> None:
    variables = {"ticket": "down", "n": 2, "tags": ["a", None], "meta": {"vip": True}}
    req = translated(messages=[], prompt_ref={"template": "triage", "label": "staging", "variables": variables})
    assert req.prompt_ref.template == "triage" and req.prompt_ref.WhichOneof("selector") == "label"
    assert req.prompt_ref.label == "staging" and len(req.messages) == 0
    assert json_format.MessageToDict(req.prompt_ref.variables) == {**variables, "n": 2.0}
    # `messages` may be left out when a prompt brings them (the SDK still wants messages=[]).
    versioned = translated(prompt_ref={"template": "triage", "version": 3})
    assert versioned.prompt_ref.WhichOneof("selector") == "version" and versioned.prompt_ref.version == 3
    assert not translated(messages=[{"role": "user", "content": "x"}]).HasField("prompt_ref")
    assert not translated(messages=[], prompt_ref=None).HasField("prompt_ref")


@pytest.mark.parametrize(
    ("prompt_ref", "param"),
    [
        ("triage", "prompt_ref"),
        ([], "prompt_ref"),
        ({}, "prompt_ref.template"),
        ({"template": 3}, "prompt_ref.template"),
        ({"template": "t", "label": 1}, "prompt_ref.label"),
        ({"template": "t", "version": "2"}, "prompt_ref.version"),
        ({"template": "t", "version": 2.5}, "prompt_ref.version"),
        ({"template": "t", "version": True}, "prompt_ref.version"),
        ({"template": "t", "version": 0}, "prompt_ref.version"),
        ({"template": "t", "version": 2**63}, "prompt_ref.version"),
        ({"template": "t", "label": "a", "version": 1}, "prompt_ref.version"),
        ({"template": "t", "variables": ["x"]}, "prompt_ref.variables"),
        ({"template": "t", "variables": "x"}, "prompt_ref.variables"),
        ({"template": "t", "lable": "staging"}, "prompt_ref.lable"),
    ],
)
def test_a_bad_prompt_ref_names_the_field(prompt_ref: Any, param: str) -> None:
    err = refused(messages=[], prompt_ref=prompt_ref)
    assert err.violations[0][0] == param


def test_variables_nested_too_deeply_are_refused() -> None:
    deep: Any = "leaf"
    for _ in range(translate.MAX_VARIABLES_DEPTH):
        deep = {"x": deep}
    translated(prompt_ref={"template": "t", "variables": deep})
    err = refused(prompt_ref={"template": "t", "variables": {"x": deep}})
    assert err.violations[0][0] == "prompt_ref.variables"


def test_messages_are_still_required_without_a_prompt_ref() -> None:
    assert refused().violations[0][0] == "messages"


def test_prompt_headers_name_the_version_and_only_with_one() -> None:
    started = gateway_pb2.Started(prompt_template="triage", prompt_version=4, prompt_resolution="variant")
    assert translate.prompt_headers(started) == {
        "x-tollway-prompt-template": "triage",
        "x-tollway-prompt-version": "4",
        "x-tollway-prompt-resolution": "variant",
    }
    assert translate.prompt_headers(gateway_pb2.CompleteResponse()) == {}


def test_the_document_describes_prompt_ref_on_both_surfaces() -> None:
    doc = openapi.document()
    schemas = doc["components"]["schemas"]
    openai = schemas["openai.ChatCompletionRequest"]
    assert openai["required"] == ["model"] and {"required": ["prompt_ref"]}.items() <= openai["anyOf"][1].items()
    assert schemas["openai.PromptRef"]["properties"]["version"]["minimum"] == 1
    native = schemas["tollway.gateway.v1.GenerateRequest.Input"]
    assert native["required"] == ["model"] and len(native["anyOf"]) == 2
    variables = schemas["tollway.gateway.v1.PromptRef.Input"]["properties"]["variables"]
    assert variables["type"] == "object" and variables["nullable"]  # a Struct is any JSON object
    headers = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["headers"]
    assert {"x-tollway-prompt-template", "x-tollway-prompt-version", "x-tollway-prompt-resolution"} <= set(headers)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_REFS = _JSON | st.fixed_dictionaries(
    {}, optional={"template": _JSON, "label": _JSON, "version": _JSON, "variables": _JSON}
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_REFS)
def test_any_prompt_ref_is_translated_or_refused_with_invalid_argument(value: Any) -> None:
    try:
        req = translated(messages=[], prompt_ref=value)
    except InvalidArgument as exc:
        assert exc.violations and exc.message
    else:
        assert value is None or req.HasField("prompt_ref")
        gateway_pb2.GenerateRequest.FromString(req.SerializeToString())
