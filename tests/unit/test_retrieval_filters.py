"""Metadata checks and filter masks."""

from __future__ import annotations

import numpy as np
import pytest

from tollway.mesh.errors import InvalidArgument
from tollway.retrieval.filters import Columns, check_filters, check_metadata
from tollway.retrieval.types import FieldType, Filter, Op

FIELDS = {"lang": FieldType.STRING, "year": FieldType.NUMBER, "public": FieldType.BOOL}


def test_unknown_field_is_a_field_violation_naming_the_declared_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_filters([Filter("lang", Op.EQ, "en"), Filter("colour", Op.EQ, "red")], FIELDS)
    field, description = err.value.violations[0]
    assert field == "filters[1].field"
    assert "colour" in description and "lang" in description and "year" in description


@pytest.mark.parametrize(
    ("flt", "field"),
    [
        (Filter("lang", Op.GT, "en"), "filters[0].operator"),
        (Filter("year", Op.EQ, "2020"), "filters[0].value"),
        (Filter("public", Op.EQ, 1), "filters[0].value"),
        (Filter("year", Op.IN, values=[]), "filters[0].values"),
        (Filter("lang", Op.IN, values=["en", 3]), "filters[0].values"),
    ],
)
def test_bad_filters_name_the_field(flt: Filter, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_filters([flt], FIELDS)
    assert err.value.violations[0][0] == field


def test_metadata_of_the_wrong_type_is_refused_and_free_keys_are_not_checked() -> None:
    check_metadata({"lang": "en", "anything": [1, 2]}, FIELDS, "document.metadata")
    with pytest.raises(InvalidArgument) as err:
        check_metadata({"year": "2020"}, FIELDS, "document.metadata")
    assert err.value.violations == [("document.metadata.year", "must be a number (the collection declares it so)")]


def test_masks() -> None:
    cols = Columns(FIELDS, 8)
    rows = [
        {"lang": "en", "year": 2019, "public": True},
        {"lang": "de", "year": 2021},
        {"year": 2023, "public": False},
        {"lang": "en", "year": 2024},
    ]
    for i, m in enumerate(rows):
        cols.set_row(i, m)
    n = len(rows)

    def rows_for(*filters: Filter) -> list[int]:
        return list(np.nonzero(cols.mask(filters, n))[0])

    assert rows_for(Filter("lang", Op.EQ, "en")) == [0, 3]
    assert rows_for(Filter("lang", Op.NE, "en")) == [1, 2]  # absent counts as "not equal"
    assert rows_for(Filter("lang", Op.IN, values=["de", "fr"])) == [1]
    assert rows_for(Filter("lang", Op.EQ, "fr")) == []  # never-seen value matches nothing
    assert rows_for(Filter("year", Op.GTE, 2021), Filter("year", Op.LT, 2024)) == [1, 2]
    assert rows_for(Filter("public", Op.EQ, False)) == [2]
    cols.clear_row(0)
    assert rows_for(Filter("lang", Op.EQ, "en")) == [3]
