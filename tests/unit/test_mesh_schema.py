"""The shared YAML reader: typed values from dataclasses, errors naming the path and the value."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tollway.mesh import schema
from tollway.mesh.schema import REQUIRED, Reader, SchemaError, load_yaml


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
    rpm: int = dataclasses.field(default=0, metadata=schema.rule(low=0))


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    ratio: float = dataclasses.field(default=0.5, metadata=schema.rule(low=0, high=1, low_open=True))
    on: bool = False
    colour: Colour = Colour.RED
    tier: str = dataclasses.field(default="small", metadata=schema.rule(choices=("small", "large"), noun="a tier"))
    tags: tuple[str, ...] = ()
    caps: frozenset[str] = dataclasses.field(default=frozenset(), metadata=schema.rule(choices=("a", "b")))
    inner: Inner = Inner()
    by_name: dict[str, Inner] = dataclasses.field(default_factory=dict)
    note: str | None = None
    window: int = dataclasses.field(default=10, metadata=schema.rule(key="window_size", low=1))


class FileError(SchemaError):
    pass


def fails(message: str) -> Any:
    return pytest.raises(FileError, match="^" + re.escape(message) + "$")


R = Reader("f.yaml", FileError)


def test_reads_typed_values_and_defaults() -> None:
    got = R.read(
        Outer,
        {
            "name": "x",
            "ratio": 1,
            "on": True,
            "colour": "blue",
            "tags": ["p", "q"],
            "caps": ["a", "a"],
            "inner": {"rpm": 3},
            "by_name": {"k": {"rpm": 1}, "j": None},
            "window_size": 4,
        },
    )
    assert got == Outer(
        name="x",
        ratio=1.0,
        on=True,
        colour=Colour.BLUE,
        tags=("p", "q"),
        caps=frozenset({"a"}),
        inner=Inner(3),
        by_name={"k": Inner(1), "j": Inner()},
        window=4,
    )
    assert isinstance(got.ratio, float) and got.colour is Colour.BLUE


def test_null_counts_as_absent() -> None:
    assert R.read(Outer, {"name": "x", "ratio": None, "inner": None}) == Outer(name="x")
    assert R.read(Inner, None) == Inner()


def test_given_values_are_not_read_from_the_file() -> None:
    assert R.read(Outer, {}, name="given").name == "given"
    with fails("f.yaml: m.name: unknown key (known here: by_name, caps, colour, inner, note, on, ratio, tags, tier, "
               "window_size)"):
        R.read(Outer, {"name": "x"}, "m", name="given")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "f.yaml: m.name: required key is missing"),
        ({"name": "x", "colur": "red"}, "f.yaml: m.colur: unknown key (known here: by_name, caps, colour, inner, "
                                        "name, note, on, ratio, tags, tier, window_size)"),
        ({"name": 3}, "f.yaml: m.name: 3 is not a string"),
        ({"name": "x", "on": "maybe"}, "f.yaml: m.on: 'maybe' is not true or false"),
        ({"name": "x", "on": 1}, "f.yaml: m.on: 1 is not true or false"),
        ({"name": "x", "ratio": "high"}, "f.yaml: m.ratio: 'high' is not a number"),
        ({"name": "x", "ratio": True}, "f.yaml: m.ratio: True is not a number"),
        ({"name": "x", "ratio": float("nan")}, "f.yaml: m.ratio: nan is not a finite number"),
        ({"name": "x", "ratio": 0}, "f.yaml: m.ratio: 0 is not in (0, 1]"),
        ({"name": "x", "ratio": 1.5}, "f.yaml: m.ratio: 1.5 is not in (0, 1]"),
        ({"name": "x", "window_size": 2.0}, "f.yaml: m.window_size: 2.0 is not an integer"),
        ({"name": "x", "window_size": 0}, "f.yaml: m.window_size: 0 is less than 1"),
        ({"name": "x", "colour": "green"}, "f.yaml: m.colour: 'green' is not a valid choice; use one of red, blue"),
        ({"name": "x", "tier": "huge"}, "f.yaml: m.tier: 'huge' is not a tier; use one of small, large"),
        ({"name": "x", "tags": "p"}, "f.yaml: m.tags: 'p' is not a list"),
        ({"name": "x", "tags": ["p", 2]}, "f.yaml: m.tags[1]: 2 is not a string"),
        ({"name": "x", "caps": ["c"]}, "f.yaml: m.caps[0]: 'c' is not a valid choice; use one of a, b"),
        ({"name": "x", "inner": {"rpm": -1}}, "f.yaml: m.inner.rpm: -1 is less than 0"),
        ({"name": "x", "inner": [1]}, "f.yaml: m.inner: [1] is not a mapping"),
        ({"name": "x", "by_name": {"k": {"tpm": 1}}}, "f.yaml: m.by_name.k.tpm: unknown key (known here: rpm)"),
        ({"name": "x", "by_name": {1: {}}}, "f.yaml: m.by_name.1: 1 is not a string key"),
    ],
)
def test_errors_name_the_path_and_the_value(raw: Mapping[str, Any], message: str) -> None:
    with fails(message):
        R.read(Outer, raw, "m")


def test_the_document_itself_is_named() -> None:
    with fails("f.yaml: the document: ['a'] is not a mapping"):
        R.read(Outer, ["a"])
    with fails("f.yaml: name: required key is missing"):
        R.read(Outer, {})


def test_layers_read_one_by_one_then_required_checked() -> None:
    base = R.fields(Outer, {"ratio": 0.25, "tags": ["a"]}, "defaults", exclude=("name",))
    own = R.fields(Outer, {"tags": ["b"]}, "entry", exclude=("name",))
    assert {**base, **own} == {"ratio": 0.25, "tags": ("b",)}
    with pytest.raises(FileError, match=r"^f.yaml: entry.name: unknown key"):
        R.fields(Outer, {"name": "x"}, "entry", exclude=("name",))
    with fails("f.yaml: entry.name: required key is missing"):
        R.require(Outer, {**base, **own}, "entry")


def test_parse_errors_become_the_reason() -> None:
    def parse(text: str) -> Colour:
        if text != "red":
            raise ValueError(f"{text!r} is not a colour we paint")
        return Colour.RED

    assert R.convert("red", Colour, "c", schema.Rule(parse=parse)) is Colour.RED
    with fails("f.yaml: c: 'teal' is not a colour we paint"):
        R.convert("teal", Colour, "c", schema.Rule(parse=parse))


def test_get_reads_one_key_by_hand() -> None:
    raw = {"port": 80, "flag": None}
    assert R.get(raw, "svc", "port", int, low=1, high=65535) == 80
    assert R.get(raw, "svc", "flag", bool, default=True) is True
    with fails("f.yaml: svc.missing: required key is missing"):
        R.get(raw, "svc", "missing", int, REQUIRED)
    with fails("f.yaml: svc.port: 80 is not in [1024, 65535]"):
        R.get(raw, "svc", "port", int, low=1024, high=65535)
    with fails("f.yaml: svc.port: 80 is more than 10"):
        R.get(raw, "svc", "port", int, high=10)
    with fails("f.yaml: svc.port: 80 is not a list"):
        R.get(raw, "svc", "port", list)


def test_fail_helpers_share_the_shape() -> None:
    assert str(R.fail("a.b", "v", "is bad")) == "f.yaml: a.b: 'v' is bad"
    assert str(R.fail_key("a.b", "required")) == "f.yaml: a.b: required"
    assert isinstance(R.fail("", 1, "x"), FileError) and isinstance(R.fail("", 1, "x"), ValueError)


def test_unsupported_types_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        R.convert(1, int | str, "x")
    with pytest.raises(TypeError):
        R.convert(1, complex, "x")


def test_load_yaml(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\n")
    doc = load_yaml(good, what="the test file", error=FileError)
    assert (doc.data, doc.text, doc.path) == ({"a": 1}, "a: 1\n", good)
    with pytest.raises(FileError, match=r"missing.yaml: cannot read the test file: No such file"):
        load_yaml(tmp_path / "missing.yaml", what="the test file", error=FileError)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(FileError, match=r"bad.yaml: not valid YAML"):
        load_yaml(bad, what="the test file", error=FileError)
