"""One strict reader for Tollway's YAML files (mesh.yaml, models.yaml, the cache namespaces).

A file's shape is written down as frozen dataclasses; :meth:`Reader.read` turns a parsed
YAML mapping into one of them by the fields' types and defaults, with the same strictness
everywhere: an unknown key, a wrong type or an out-of-range value fails, and the message
names the file, the dotted path and the value::

    models.yaml: models.big.deployments[0].weight: -1 is less than 0
    mesh.yaml: edge.listn: unknown key (known here: admin, listen, ...)

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``enum.Enum`` subclasses, a
nested dataclass, ``tuple[X, ...]``, ``frozenset[X]``, ``Mapping[str, X]`` / ``dict[str, X]``,
``X | None`` and ``Any`` (taken as is). Limits and choices go in the field's metadata with
:func:`rule`::

    @frozen
    class Limits:
        rpm: int = dataclasses.field(default=0, metadata=schema.rule(low=0))

A key set to null counts as absent (YAML's ``key:`` with nothing after it): the default
applies, and a field without a default reports ``required key is missing``.

Domain checks (a name that dangles, a port used twice) stay with the caller, which raises
them through :meth:`Reader.fail` so that every message has the same shape. For code that
walks a document by hand, :meth:`Reader.get` reads one key with the same conversions.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tollway.mesh.frozen import frozen

__all__ = ["REQUIRED", "Reader", "Rule", "SchemaError", "YamlDocument", "load_yaml", "rule"]

T = TypeVar("T")

_RULE_KEY = "tollway.mesh.schema.rule"


class SchemaError(ValueError):
    """A configuration file is unreadable or holds a bad value.

    The message starts with the file and the dotted key path and quotes the value. Each
    file has its own subclass (``MeshError``, ``CatalogError``, ``NamespaceConfigError``).
    """


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Passed as ``default`` to :meth:`Reader.get`: the key must be present."""


@frozen
class Rule:
    """Limits on one value; for a tuple or frozenset they apply to each element.

    Attributes:
        low: Smallest number allowed (None: no lower limit).
        high: Largest number allowed (None: no upper limit).
        low_open: ``low`` itself is not allowed.
        high_open: ``high`` itself is not allowed.
        choices: The only strings allowed (empty: any).
        noun: Names what a choice is in errors ("a tier": ``'huge' is not a tier; use one of ...``).
        parse: Turns the string into the value (enums); a ``ValueError`` it raises becomes the
            error's reason, so its message should quote the text.
        key: The YAML key, when it differs from the field's name.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    noun: str = ""
    parse: Callable[[str], Any] | None = None
    key: str = ""


_NO_RULE = Rule()


def rule(**limits: Any) -> dict[str, Rule]:
    """Field metadata carrying a :class:`Rule` (``dataclasses.field(metadata=rule(low=0))``)."""
    return {_RULE_KEY: Rule(**limits)}


@frozen
class _Field:
    name: str
    key: str
    type: Any
    rule: Rule
    required: bool


@functools.cache
def _fields(cls: type) -> tuple[_Field, ...]:
    # Resolved once per class: annotations are strings under `from __future__ import annotations`.
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        r = f.metadata.get(_RULE_KEY, _NO_RULE)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(_Field(f.name, r.key or f.name, hints[f.name], r, required))
    return tuple(out)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _bound(value: float) -> str:
    # 315360000, not 3.1536e+08; 0.001 and 0.5 as written.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_TYPE_NAMES: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


class Reader:
    """Reads values out of one parsed document, failing with its own error type.

    Args:
        source: Names the file in every message (``deploy/mesh.yaml``).
        error: The exception raised; a :class:`SchemaError` subclass of the caller's.
    """

    def __init__(self, source: str, error: type[SchemaError] = SchemaError) -> None:
        self.source = source
        self.error = error

    # --- errors ------------------------------------------------------------------------

    def fail(self, path: str, value: Any, why: str) -> SchemaError:
        """The error ``{source}: {path}: {value!r} {why}``, for the caller to raise."""
        return self.error(f"{self.source}: {path or 'the document'}: {value!r} {why}")

    def fail_key(self, path: str, why: str) -> SchemaError:
        """The error ``{source}: {path}: {why}``, for a key with no value to quote."""
        return self.error(f"{self.source}: {path or 'the document'}: {why}")

    # --- declarative ---------------------------------------------------------------------

    def read(self, cls: type[T], raw: Any, path: str = "", *, exclude: Iterable[str] = (), **given: Any) -> T:
        """Builds the dataclass ``cls`` from the mapping ``raw``.

        Args:
            cls: A dataclass whose fields describe the mapping's keys.
            raw: The parsed YAML (None reads as an empty mapping).
            path: Dotted path of ``raw`` in the document ("" for the root).
            exclude: Fields that are not read from ``raw`` (pass them in ``given``).
            **given: Values for fields that do not come from the file.

        Raises:
            SchemaError: An unknown key, a missing required key, a wrong type or an
                out-of-range value (as the reader's own error type).
        """
        values = self.fields(cls, raw, path, exclude=(*exclude, *given))
        self.require(cls, values, path, exclude=(*exclude, *given))
        return cls(**values, **given)

    def fields(self, cls: type, raw: Any, path: str = "", *, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """The keys present in ``raw``, converted to ``cls``'s field types, by field name.

        Missing keys are simply absent, so layers (defaults, a preset, the entry itself) can
        be read one by one and merged; :meth:`require` then checks the result.

        Raises:
            SchemaError: An unknown key, a wrong type or an out-of-range value.
        """
        raw = self.mapping(raw, path)
        skip = set(exclude)
        known = {f.key: f for f in _fields(cls) if f.name not in skip}
        self.known_keys(raw, path, known)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if value is not None:
                f = known[key]
                out[f.name] = self.convert(value, f.type, _join(path, key), f.rule)
        return out

    def require(self, cls: type, values: Mapping[str, Any], path: str = "", *, exclude: Iterable[str] = ()) -> None:
        """Fails naming the first required field of ``cls`` missing from ``values``."""
        skip = set(exclude)
        for f in _fields(cls):
            if f.required and f.name not in skip and f.name not in values:
                raise self.fail_key(_join(path, f.key), "required key is missing")

    # --- one value -----------------------------------------------------------------------

    def mapping(self, value: Any, path: str = "") -> Mapping[str, Any]:
        """``value`` as a mapping (None is an empty one).

        Raises:
            SchemaError: ``value`` is not a mapping, or a key is not a string.
        """
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, value, "is not a mapping")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(_join(path, key), key, "is not a string key")
        return value

    def known_keys(self, raw: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        """Fails on the first key of ``raw`` not in ``allowed``, listing the allowed ones."""
        allowed = set(allowed)
        for key in raw:
            if key not in allowed:
                raise self.fail_key(_join(path, key), f"unknown key (known here: {', '.join(sorted(allowed))})")

    def get(self, raw: Mapping[str, Any], path: str, key: str, typ: Any, default: Any = REQUIRED, **limits: Any) -> Any:
        """Reads ``raw[key]`` as ``typ`` (see the module docstring), or ``default`` when absent.

        Args:
            raw: The mapping holding the key.
            path: Dotted path of ``raw``.
            key: The key to read.
            typ: Its type (``int``, ``list``, ``dict``, a dataclass, ...).
            default: Returned when the key is absent or null; :data:`REQUIRED` fails instead.
            **limits: A :class:`Rule`'s fields (``low=1, high=64``).

        Raises:
            SchemaError: The key is missing (and required), of the wrong type or out of range.
        """
        value = raw.get(key)
        if value is None:
            if default is REQUIRED:
                raise self.fail_key(_join(path, key), "required key is missing")
            return default
        return self.convert(value, typ, _join(path, key), Rule(**limits) if limits else _NO_RULE)

    def convert(self, value: Any, typ: Any, path: str, limits: Rule = _NO_RULE) -> Any:
        """Checks ``value`` against ``typ`` and ``limits`` and returns it converted.

        Raises:
            SchemaError: The value has the wrong type or breaks a limit.
        """
        origin = typing.get_origin(typ)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(typ) if a is not type(None)]
            if len(options) != 1:
                raise TypeError(f"{path}: only `X | None` unions are supported, not {typ}")
            return self.convert(value, options[0], path, limits)
        if typ is Any:
            return value
        if origin in (tuple, frozenset, list):
            if not isinstance(value, list):
                raise self.fail(path, value, "is not a list")
            item = typing.get_args(typ)[0]
            items = [self.convert(v, item, f"{path}[{i}]", limits) for i, v in enumerate(value)]
            return frozenset(items) if origin is frozenset else (items if origin is list else tuple(items))
        if origin in (dict, Mapping) or typ in (dict, Mapping):
            args = typing.get_args(typ)
            item = args[1] if args else Any
            return {k: self.convert(v, item, _join(path, k), limits) for k, v in self.mapping(value, path).items()}
        if typ is list:
            if not isinstance(value, list):
                raise self.fail(path, value, "is not a list")
            return value
        if dataclasses.is_dataclass(typ):
            return self.read(typ, value, path)  # type: ignore[type-var]
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            return self._enum(value, typ, path, limits)
        if typ is str:
            if not isinstance(value, str):
                raise self.fail(path, value, "is not a string")
            if limits.parse is not None:
                return self._parse(value, path, limits.parse)
            if limits.choices and value not in limits.choices:
                noun = limits.noun or "a valid choice"
                raise self.fail(path, value, f"is not {noun}; use one of {', '.join(limits.choices)}")
            return value
        if typ is bool:
            if not isinstance(value, bool):
                raise self.fail(path, value, "is not true or false")
            return value
        if typ is int or typ is float:
            # bool is an int subclass: `port: true` must not pass as port 1.
            if isinstance(value, bool) or not isinstance(value, int if typ is int else int | float):
                raise self.fail(path, value, f"is not {_TYPE_NAMES[typ]}")
            if typ is float and not math.isfinite(value):
                raise self.fail(path, value, "is not a finite number")
            self._check_range(value, path, limits)
            return typ(value)
        raise TypeError(f"{path}: the schema reader cannot read {typ!r}")

    def _check_range(self, value: float, path: str, r: Rule) -> None:
        below = r.low is not None and (value < r.low or (r.low_open and value == r.low))
        above = r.high is not None and (value > r.high or (r.high_open and value == r.high))
        if not (below or above):
            return
        if r.low is not None and r.high is not None:
            interval = f"{'(' if r.low_open else '['}{_bound(r.low)}, {_bound(r.high)}{')' if r.high_open else ']'}"
            raise self.fail(path, value, f"is not in {interval}")
        if below:
            assert r.low is not None
            why = f"is not more than {_bound(r.low)}" if r.low_open else f"is less than {_bound(r.low)}"
        else:
            assert r.high is not None
            why = f"is not less than {_bound(r.high)}" if r.high_open else f"is more than {_bound(r.high)}"
        raise self.fail(path, value, why)

    def _parse(self, text: str, path: str, parse: Callable[[str], Any]) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise self.fail_key(path, str(exc)) from None

    def _enum(self, value: Any, typ: type[enum.Enum], path: str, limits: Rule) -> Any:
        if not isinstance(value, str):
            raise self.fail(path, value, "is not a string")
        if limits.parse is not None:
            return self._parse(value, path, limits.parse)
        try:
            return typ(value)
        except ValueError:
            names = ", ".join(str(m.value) for m in typ)
            raise self.fail(path, value, f"is not {limits.noun or 'a valid choice'}; use one of {names}") from None


@frozen
class YamlDocument:
    """A YAML file as read: its text (for version hashes) and the parsed data."""

    path: Path
    text: str
    data: Any


def load_yaml(path: str | Path, *, what: str, error: type[SchemaError] = SchemaError) -> YamlDocument:
    """Reads and parses a YAML file.

    Args:
        path: The file.
        what: Names the file in errors ("the mesh file": ``x.yaml: cannot read the mesh file: ...``).
        error: The exception raised.

    Raises:
        SchemaError: The file cannot be read or is not valid YAML (as ``error``); the message
            starts with the path.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    return YamlDocument(p, text, data)
