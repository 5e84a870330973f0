"""``tollway.mesh.frozen``: the same frozen dataclass as ``dataclasses`` makes, with a cheaper
``__init__``; every behaviour a caller can see is compared with dataclasses' own."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from tollway.mesh.frozen import frozen


@frozen
class Record:
    name: str
    count: int = 3
    tags: list[str] = dataclasses.field(default_factory=list)
    note: str = dataclasses.field(default="n", init=False)
    made: list[int] = dataclasses.field(default_factory=lambda: [1], init=False)


@dataclasses.dataclass(frozen=True)
class Reference:
    name: str
    count: int = 3
    tags: list[str] = dataclasses.field(default_factory=list)
    note: str = dataclasses.field(default="n", init=False)
    made: list[int] = dataclasses.field(default_factory=lambda: [1], init=False)


@frozen(slots=True)
class Slotted:
    a: int
    b: str = "b"


@frozen(slots=True)
class SlottedChild(Slotted):
    c: int = 0


@dataclasses.dataclass(frozen=True)
class PlainBase:
    a: int


@frozen(slots=True)
class SlottedOnPlain(PlainBase):
    b: int = 0


@frozen
class Derived:
    a: int
    double: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", 2 * self.a)


@frozen
class WithInitVar:
    a: int
    scale: dataclasses.InitVar[int] = 1

    def __post_init__(self, scale: int) -> None:
        object.__setattr__(self, "a", self.a * scale)


@frozen
class OwnInit:
    a: int

    def __init__(self, text: str) -> None:
        object.__setattr__(self, "a", int(text))


def fields_of(obj: object) -> dict[str, object]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


def test_fields_defaults_and_factories_are_those_dataclasses_gives() -> None:
    for args, kwargs in ((("x",), {}), (("x", 5), {}), (("x",), {"tags": ["t"]}), ((), {"name": "y", "count": 0})):
        assert fields_of(Record(*args, **kwargs)) == fields_of(Reference(*args, **kwargs))
    one, two = Record("x"), Record("x")
    assert one.tags is not two.tags and one.made is not two.made  # a new value per instance


def test_equality_hash_repr_replace_and_pickling_are_unchanged() -> None:
    r = Record("x", 5, ["t"])
    assert r == Record("x", 5, ["t"]) and r != Record("x", 6, ["t"])
    assert hash(Slotted(1)) == hash(Slotted(1))
    assert repr(r) == repr(Reference("x", 5, ["t"])).replace("Reference", "Record")
    assert dataclasses.replace(r, count=7) == Record("x", 7, ["t"])
    assert pickle.loads(pickle.dumps(r)) == r
    assert pickle.loads(pickle.dumps(Slotted(2, "c"))) == Slotted(2, "c")


def test_instances_stay_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Record("x").count = 4  # type: ignore[misc]
    s = Slotted(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.a = 2  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


def test_bad_arguments_fail_as_they_do_for_dataclasses() -> None:
    with pytest.raises(TypeError):
        Record()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Record("x", unknown=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Record("x", note="no")  # type: ignore[call-arg]  # init=False


def test_post_init_runs_and_init_vars_keep_dataclasses_own_init() -> None:
    assert Derived(4).double == 8
    assert WithInitVar(3, 2).a == 6
    assert WithInitVar.__init__.__code__.co_filename == "<string>"  # dataclasses' own
    assert Record.__init__.__code__.co_filename.startswith("<frozen")


def test_a_class_with_its_own_init_keeps_it() -> None:
    assert OwnInit("7").a == 7


def test_slotted_records_inherit_fields_from_slotted_and_plain_bases() -> None:
    child = SlottedChild(1, "x", 2)
    assert (child.a, child.b, child.c) == (1, "x", 2) and child == SlottedChild(1, "x", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        child.c = 3  # type: ignore[misc]
    mixed = SlottedOnPlain(1, 2)  # dataclasses gives the subclass a slot for the base's field too
    assert (mixed.a, mixed.b) == (1, 2) and mixed == SlottedOnPlain(1, 2)
