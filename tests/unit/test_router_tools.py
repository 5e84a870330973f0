"""Tool-call fragments reassemble by index into calls with valid JSON arguments."""

from __future__ import annotations

import json

import pytest

from tests.fakes.scenarios import split_awkwardly
from tollway.router.tools import ToolCallAssembler, ToolCallError
from tollway.router.types import ToolCallDelta


def test_interleaved_fragments_reassemble_by_index() -> None:
    a = json.dumps({"city": "Paris", "note": 'say "hi" \\ bye', "n": [1, 2.5, None]})
    b = json.dumps({"tz": "Europe/Paris"})
    asm = ToolCallAssembler()
    asm.add(ToolCallDelta(1, id="call_b", name="get_time"))
    asm.add(ToolCallDelta(0, id="call_a", name="get_weather"))
    pa, pb = split_awkwardly(a), split_awkwardly(b)
    for i in range(max(len(pa), len(pb))):
        if i < len(pb):
            asm.add(ToolCallDelta(1, arguments=pb[i]))
        if i < len(pa):
            asm.add(ToolCallDelta(0, arguments=pa[i]))
    calls = asm.calls()
    assert [(c.index, c.id, c.name) for c in calls] == [(0, "call_a", "get_weather"), (1, "call_b", "get_time")]
    assert json.loads(calls[0].arguments) == json.loads(a)
    assert json.loads(calls[1].arguments) == json.loads(b)


def test_split_points_fall_inside_strings_and_escapes() -> None:
    text = json.dumps({"note": 'say "hi" \\ bye'})
    pieces = split_awkwardly(text)
    assert "".join(pieces) == text and len(pieces) > 4
    assert any(p.endswith("\\") for p in pieces) or any(p.count('"') % 2 for p in pieces)


def test_empty_arguments_are_an_empty_object() -> None:
    asm = ToolCallAssembler()
    asm.add(ToolCallDelta(0, id="c", name="ping"))
    assert asm.calls()[0].arguments == "{}"


def test_sparse_indexes_are_renumbered_in_order() -> None:
    asm = ToolCallAssembler()
    asm.add(ToolCallDelta(3, id="x", name="b", arguments="{}"))
    asm.add(ToolCallDelta(1, id="y", name="a", arguments="{}"))
    assert [(c.index, c.name) for c in asm.calls()] == [(0, "a"), (1, "b")]


def test_a_missing_id_gets_one() -> None:
    asm = ToolCallAssembler()
    asm.add(ToolCallDelta(0, name="a", arguments="{}"))
    assert asm.calls()[0].id == "call_0"


@pytest.mark.parametrize("args", ['{"city": "Par', "[1, 2]", '"text"'])
def test_arguments_that_are_not_a_json_object_fail_naming_the_call(args: str) -> None:
    asm = ToolCallAssembler()
    asm.add(ToolCallDelta(0, id="c", name="get_weather", arguments=args))
    with pytest.raises(ToolCallError, match="get_weather"):
        asm.calls()


def test_a_call_without_a_name_fails() -> None:
    asm = ToolCallAssembler()
    asm.add(ToolCallDelta(0, arguments="{}"))
    with pytest.raises(ToolCallError, match="no function name"):
        asm.calls()
