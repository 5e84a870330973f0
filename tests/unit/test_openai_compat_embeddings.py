"""OpenAI embeddings bodies -> GatewayService.Embed, and the answer back (both encodings)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from tollway.gateway.embed import EmbedCall, check, count_input_tokens
from tollway.gateway.v1 import gateway_pb2
from tollway.gateway.validation import Limits
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat.embeddings import embed_request, embeddings_json


def test_a_string_or_a_list_of_strings() -> None:
    req, fmt = embed_request({"model": "m", "input": "hello"})
    assert list(req.inputs) == ["hello"] and req.model == "m" and fmt == "float"
    req, fmt = embed_request({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 384})
    assert list(req.inputs) == ["a", "b"] and fmt == "base64" and req.dimensions == 384


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": [1, 2, 3]}, "input"),
        ({"model": "m", "input": [[1, 2]]}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["a", 3]}, "input[1]"),
        ({"model": "m", "input": None}, "input"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "a", "dimensions": "384"}, "dimensions"),
        ({"model": "m", "input": "a", "priority": "urgent"}, "priority"),
        ({"model": "m", "input": "a", "temperature": 1}, "temperature"),
        ({"model": 7, "input": "a"}, "model"),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        embed_request(body)
    assert exc.value.violations[0][0] == param


def test_float_and_base64_answers_carry_the_same_vector() -> None:
    reply = gateway_pb2.EmbedResponse(model="m", dimensions=3)
    reply.embeddings.add(values=[0.25, -0.5, 0.125])
    reply.usage.input_tokens = 7
    plain = json.loads(embeddings_json(reply, "float"))
    assert plain["object"] == "list" and plain["model"] == "m"
    assert plain["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert plain["data"] == [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}]
    packed = json.loads(embeddings_json(reply, "base64"))["data"][0]["embedding"]
    assert list(struct.unpack("<3f", base64.b64decode(packed))) == [0.25, -0.5, 0.125]


def test_gateway_checks_every_field_before_spending() -> None:
    limits = Limits(max_input_chars=10)
    with pytest.raises(InvalidArgument) as exc:
        check(EmbedCall(model="m", inputs=("", "x" * 11), dimensions=-1, feature="f" * 65), limits)
    fields = [f for f, _ in exc.value.violations]
    assert fields == ["inputs[0]", "inputs", "dimensions", "feature"]
    with pytest.raises(InvalidArgument, match="at least one"):
        check(EmbedCall(model="m", inputs=()), limits)
    with pytest.raises(InvalidArgument, match="at most 256"):
        check(EmbedCall(model="m", inputs=("a",) * 257), Limits())
    check(EmbedCall(model="m", inputs=("fine",)), limits)


def test_tokens_are_counted_per_input_without_chat_framing() -> None:
    assert count_input_tokens(["hello world"]) == 2
    assert count_input_tokens(["hello world", "hello world"]) == 4
