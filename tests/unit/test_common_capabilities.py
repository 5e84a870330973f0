"""The OpenAI surface refuses what the gateway API cannot carry, naming the parameter, capability and model."""

from __future__ import annotations

from typing import Any

import pytest

from tollway.common.capabilities import check_openai_body
from tollway.mesh.errors import InvalidArgument


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    ("extra", "param", "capability"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tools"),
        ({"functions": [{"name": "f"}]}, "functions", "tools"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format", "json"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "json"),
        ({"logprobs": True}, "logprobs", "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs", "logprobs"),
        ({"n": 2}, "n", "n"),
    ],
)
def test_each_uncarried_ask_is_refused_naming_it(extra: dict[str, Any], param: str, capability: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_openai_body(body(**extra))
    err = info.value
    assert err.reason == "CAPABILITY_UNSUPPORTED"
    assert err.violations[0][0] == param and capability in err.violations[0][1]
    assert err.metadata == {"model": "gpt-4o", "capability": capability}
    assert f"'{param}'" in err.message and "'gpt-4o'" in err.message


def test_several_asks_are_all_listed() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_openai_body(body(tools=[{"type": "function"}], logprobs=True, n=3))
    assert [v[0] for v in info.value.violations] == ["tools", "logprobs", "n"]
    assert info.value.metadata["capability"] == "tools,logprobs,n"


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tools": []},
        {"tool_choice": "none"},
        {"response_format": {"type": "text"}},
        {"logprobs": False},
        {"top_logprobs": 0},
        {"n": 1},
        {"n": "2"},  # a wrong type is the translation's to refuse, with its own message
    ],
)
def test_what_can_be_honoured_passes(extra: dict[str, Any]) -> None:
    check_openai_body(body(**extra))


def test_a_body_that_is_not_an_object_is_left_to_the_translation() -> None:
    check_openai_body([1, 2])
