"""Metadata checks: the values a document may carry, and the filters a search may use.

A collection declares its filterable fields with a type. A document's value for a
declared field must have that type (other keys are free); a filter must name a declared
field, use an operator the type supports and compare with values of the type. Every
mistake is reported as a field violation naming the field path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tollway.mesh.errors import InvalidArgument
from tollway.retrieval.types import FieldType, Filter, Op

MAX_FILTERS = 16
MAX_IN_VALUES = 256

_ALLOWED = {
    FieldType.STRING: {Op.EQ, Op.NE, Op.IN},
    FieldType.NUMBER: {Op.EQ, Op.NE, Op.IN, Op.GT, Op.GTE, Op.LT, Op.LTE},
    FieldType.BOOL: {Op.EQ, Op.NE},
}


def type_of(value: Any) -> FieldType | None:
    """The field type a JSON value has (None for null, lists and objects)."""
    if isinstance(value, bool):
        return FieldType.BOOL
    if isinstance(value, int | float):
        return FieldType.NUMBER if math.isfinite(value) else None
    if isinstance(value, str):
        return FieldType.STRING
    return None


def check_metadata(metadata: Mapping[str, Any], fields: Mapping[str, FieldType], path: str) -> None:
    """Checks a document's values of the declared fields.

    Raises:
        InvalidArgument: A declared field holds a value of another type.
    """
    bad = []
    for name, kind in fields.items():
        if name in metadata and metadata[name] is not None and type_of(metadata[name]) is not kind:
            bad.append((f"{path}.{name}", f"must be a {kind.value} (the collection declares it so)"))
    if bad:
        raise InvalidArgument(f"metadata does not match the collection's declared fields: {bad[0][0]}", bad)


def check_filters(filters: Sequence[Filter], fields: Mapping[str, FieldType]) -> None:
    """Checks a search's filters against the collection's declared fields.

    Raises:
        InvalidArgument: Too many filters, an undeclared field (a violation on
            ``filters[i].field`` listing the declared ones), an operator the field's type
            does not support, or a value of the wrong type.
    """
    if len(filters) > MAX_FILTERS:
        raise InvalidArgument(f"{len(filters)} filters; at most {MAX_FILTERS}", [("filters", "too many")])
    violations: list[tuple[str, str]] = []
    for i, f in enumerate(filters):
        kind = fields.get(f.field)
        if kind is None:
            declared = ", ".join(sorted(fields)) or "none"
            violations.append(
                (
                    f"filters[{i}].field",
                    f"{f.field!r} is not a filterable field of the collection (declared: {declared})",
                )
            )
            continue
        if f.op not in _ALLOWED[kind]:
            violations.append((f"filters[{i}].operator", f"{f.op.value} does not apply to a {kind.value} field"))
            continue
        if f.op is Op.IN:
            if not 1 <= len(f.values) <= MAX_IN_VALUES:
                violations.append((f"filters[{i}].values", f"give 1 to {MAX_IN_VALUES} values"))
            elif any(type_of(v) is not kind for v in f.values):
                violations.append((f"filters[{i}].values", f"every value must be a {kind.value}"))
        elif type_of(f.value) is not kind:
            violations.append((f"filters[{i}].value", f"must be a {kind.value}"))
    if violations:
        raise InvalidArgument(f"bad filter: {violations[0][0]}: {violations[0][1]}", violations)


class Columns:
    """The filterable fields of one index as numpy columns, one row per chunk.

    Strings are interned to int32 (-1 when absent), numbers are float64 (NaN when absent),
    booleans int8 (-1 when absent), so a filter is a vectorised comparison over all rows.
    """

    def __init__(self, fields: Mapping[str, FieldType], capacity: int) -> None:
        self.fields = dict(fields)
        self._strings: dict[str, int] = {}
        self.columns: dict[str, np.ndarray] = {name: self._empty(kind, capacity) for name, kind in fields.items()}

    @staticmethod
    def _empty(kind: FieldType, n: int) -> np.ndarray:
        if kind is FieldType.STRING:
            return np.full(n, -1, np.int32)
        if kind is FieldType.NUMBER:
            return np.full(n, np.nan, np.float64)
        return np.full(n, -1, np.int8)

    def grow(self, capacity: int) -> None:
        for name, kind in self.fields.items():
            old = self.columns[name]
            if len(old) < capacity:
                new = self._empty(kind, capacity)
                new[: len(old)] = old
                self.columns[name] = new

    def _code(self, value: str) -> int:
        code = self._strings.get(value)
        if code is None:
            code = self._strings[value] = len(self._strings)
        return code

    def set_row(self, row: int, metadata: Mapping[str, Any]) -> None:
        for name, kind in self.fields.items():
            value = metadata.get(name)
            col = self.columns[name]
            if value is None or type_of(value) is not kind:
                col[row] = self._empty(kind, 1)[0]
            elif kind is FieldType.STRING:
                col[row] = self._code(value)
            elif kind is FieldType.NUMBER:
                col[row] = float(value)
            else:
                col[row] = int(bool(value))

    def clear_row(self, row: int) -> None:
        self.set_row(row, {})

    def mask(self, filters: Sequence[Filter], size: int) -> np.ndarray:
        """Rows ``0..size-1`` that meet every filter (filters already checked)."""
        keep = np.ones(size, bool)
        for f in filters:
            col = self.columns[f.field][:size]
            kind = self.fields[f.field]
            keep &= self._one(col, kind, f)
        return keep

    def _value(self, kind: FieldType, value: Any) -> float:
        if kind is FieldType.STRING:
            return float(self._strings.get(value, -2))  # -2 matches no row
        if kind is FieldType.BOOL:
            return float(int(bool(value)))
        return float(value)

    def _one(self, col: np.ndarray, kind: FieldType, f: Filter) -> np.ndarray:
        present = ~np.isnan(col) if kind is FieldType.NUMBER else col >= 0
        if f.op is Op.IN:
            wanted = np.asarray([self._value(kind, v) for v in f.values])
            return present & np.isin(col, wanted)
        v = self._value(kind, f.value)
        with np.errstate(invalid="ignore"):
            if f.op is Op.EQ:
                return present & (col == v)
            if f.op is Op.NE:
                return ~present | (col != v)
            if f.op is Op.GT:
                return present & (col > v)
            if f.op is Op.GTE:
                return present & (col >= v)
            if f.op is Op.LT:
                return present & (col < v)
            return present & (col <= v)
