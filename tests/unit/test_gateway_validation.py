from __future__ import annotations

import pytest

from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2
from tollway.gateway.validation import Limits, check, check_metadata, validate
from tollway.mesh.errors import InvalidArgument

LIMITS = Limits(max_input_chars=100, max_messages=3, default_max_tokens=256)


def req(**kw: object) -> gateway_pb2.GenerateRequest:
    base: dict[str, object] = {"model": "m", "messages": [common_pb2.Message(role="user", content="hi")]}
    base.update(kw)
    return gateway_pb2.GenerateRequest(**base)


def fields(r: gateway_pb2.GenerateRequest) -> list[str]:
    return [f for f, _ in validate(r, LIMITS)]


def test_a_plain_request_is_valid() -> None:
    assert validate(req(), LIMITS) == []
    assert validate(req(temperature=0.0, top_p=1.0, max_tokens=32768, stop=["a"] * 4), LIMITS) == []


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"model": " "}, "model"),
        ({"model": "x" * 129}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [common_pb2.Message(role="user", content="a")] * 4}, "messages"),
        ({"messages": [common_pb2.Message(role="bot", content="a")]}, "messages[0].role"),
        ({"messages": [common_pb2.Message(role="user", content="")]}, "messages[0].content"),
        ({"messages": [common_pb2.Message(role="user", content="x" * 101)]}, "messages"),
        ({"max_tokens": 32769}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": ["a"] * 5}, "stop"),
        ({"stop": [""]}, "stop[0]"),
        ({"user": "u" * 129}, "user"),
        ({"feature": "f" * 65}, "feature"),
        ({"request_id": "has space"}, "request_id"),
    ],
)
def test_each_bad_field_is_named(kw: dict[str, object], field: str) -> None:
    assert field in fields(req(**kw))


def test_an_empty_assistant_turn_is_allowed() -> None:
    r = req(messages=[common_pb2.Message(role="user", content="a"), common_pb2.Message(role="assistant", content="")])
    assert validate(r, LIMITS) == []


def test_check_raises_with_every_violation() -> None:
    with pytest.raises(InvalidArgument) as err:
        check(req(model="", messages=[]), LIMITS)
    assert [f for f, _ in err.value.violations] == ["model", "messages"]
    assert "model" in err.value.message


def test_headers_the_gateway_reads_must_be_printable_ascii() -> None:
    check_metadata([("authorization", "Bearer tw-abc"), ("user-agent", "curl/8 é"), ("x-trace-bin", b"\xff")])
    # gRPC hands a non-UTF-8 value over as Latin-1.
    for key in ("authorization", "x-canary", "x-tollway-cache-mode"):
        with pytest.raises(InvalidArgument) as err:
            check_metadata([(key, "Bearer tw-\xff\xfesecret")])
        assert err.value.violations == [(key, "printable ASCII")]
        assert "secret" not in err.value.message and "2 character(s)" in err.value.message
