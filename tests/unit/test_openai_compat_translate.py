"""The OpenAI body -> gateway request translation: every JSON value is translated or refused by field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import translate

MESSAGES = [{"role": "user", "content": "hi"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, **extra}


def refused(value: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        translate.chat_request(value)
    return err.value


def test_a_full_request_translates() -> None:
    req, stream, usage = translate.chat_request(
        body(
            messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            max_completion_tokens=5,
            max_tokens=9,
            temperature=1,
            top_p=0.5,
            stop="END",
            seed=-(2**63),
            user="u",
            metadata={"feature": "f"},
            n=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert req.messages[0].content == "ab" and req.max_tokens == 5 and req.temperature == 1.0
    assert list(req.stop) == ["END"] and req.seed == -(2**63) and req.feature == "f"
    assert stream and usage


def test_nulls_mean_absent() -> None:
    nulls = dict.fromkeys(
        ("max_tokens", "temperature", "top_p", "stop", "seed", "user", "metadata", "n", "stream", "stream_options")
    )
    req, stream, usage = translate.chat_request(body(**nulls))
    assert not req.HasField("temperature") and not req.HasField("seed") and req.max_tokens == 0
    assert (stream, usage) == (False, False)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": 5}, "stop"),  # issue 10: a traceback before
        ({"stop": ["a", 5]}, "stop[1]"),
        ({"stream_options": [1]}, "stream_options"),  # issue 10: a traceback before
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stream": "true"}, "stream"),
        ({"max_tokens": 2**40}, "max_tokens"),  # issue 10: "not valid JSON" before
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"seed": 2**70}, "seed"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": False}, "temperature"),
        ({"model": 5}, "model"),
        ({"user": ["u"]}, "user"),
        ({"metadata": "x"}, "metadata"),
        ({"metadata": {"feature": 1}}, "metadata.feature"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": {"role": "user"}}, "messages"),
    ],
)
def test_a_bad_field_is_refused_by_name(extra: dict[str, Any], param: str) -> None:
    err = refused(body(**extra))
    assert err.violations[0][0] == param
    assert param.split("[")[0].split(".")[0] in err.message or param == "messages[0]"


def test_the_message_names_the_type_not_the_value() -> None:
    err = refused(body(user={"secret": "tw-xyz"}))
    assert "tw-xyz" not in err.message and "an object" in err.message


def test_an_unpaired_surrogate_is_refused() -> None:
    err = refused(translate.parse_body(b'{"model": "m\\ud800", "messages": []}'))
    assert "\\ud800" in err.message


@pytest.mark.parametrize("raw", [b"NaN", b'{"temperature": Infinity}', b"[" * 100_000, b"\xff", b"{"])
def test_parse_body_refuses_what_is_not_strict_json(raw: bytes) -> None:
    with pytest.raises(ValueError):
        translate.parse_body(raw)


def test_headers_with_bytes_beyond_printable_ascii_are_refused_without_echo() -> None:
    translate.check_headers([(b"authorization", b"Bearer tw-abc"), (b"user-agent", "é".encode())])
    for name in (b"authorization", b"x-tollway-cache-mode"):
        with pytest.raises(InvalidArgument) as err:
            translate.check_headers([(name, b"Bearer tw-\xff\xfesecret")])
        assert "secret" not in err.value.message and "2 byte(s)" in err.value.message
        assert err.value.violations[0][0] == name.decode()


# Any JSON value at all, shaped like a request often enough to reach the inner fields.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",
        "metadata",
        "n",
        "stream",
        "stream_options",
    ]
)
_MESSAGE = st.fixed_dictionaries({}, optional={"role": _JSON | st.just("user"), "content": _JSON, "name": _JSON})
_BODIES = _JSON | st.fixed_dictionaries({"messages": st.lists(_MESSAGE | _JSON, max_size=3)}, optional={}).flatmap(
    lambda base: st.dictionaries(_FIELDS, _JSON, max_size=6).map(lambda extra: {**base, **extra})
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODIES)
def test_any_json_is_translated_or_refused_with_invalid_argument(value: Any) -> None:
    # Round trip through the wire form, as the service sees it.
    raw = json.dumps(value).encode()
    try:
        req, stream, usage = translate.chat_request(translate.parse_body(raw))
    except InvalidArgument as exc:
        assert exc.violations and exc.message
    else:
        assert isinstance(stream, bool) and isinstance(usage, bool)
        req.SerializeToString()


def test_an_sse_event_is_compact_json_the_standard_library_reads_back() -> None:
    payload = {"a": [1, 2.5, None, True], "text": 'héllo \u2028 "quoted"\n', "nested": {"k": "v"}}
    named = translate.sse("content_block_delta", payload)
    assert named.startswith(b"event: content_block_delta\ndata: {") and named.endswith(b"}\n\n")
    assert json.loads(named.split(b"data: ", 1)[1]) == payload
    plain = translate.sse(None, payload)
    assert plain.startswith(b"data: {") and b", " not in plain.split(b'"text"')[0]
    assert json.loads(plain[len(b"data: ") :]) == payload


def test_an_sse_event_keeps_integers_beyond_64_bits() -> None:
    # orjson refuses them; a tool's arguments may carry one, and it must arrive exactly.
    payload = {"arguments": {"id": 2**70}}
    assert json.loads(translate.sse(None, payload)[len(b"data: ") :]) == payload
