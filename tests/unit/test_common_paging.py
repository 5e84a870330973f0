"""AIP-158 paging rules shared by list RPCs."""

from __future__ import annotations

import pytest

from tollway.common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, page_size
from tollway.mesh.errors import InvalidArgument


def test_zero_means_the_default_and_the_limits_are_inclusive() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE == 100
    assert page_size(1) == 1 and page_size(MAX_PAGE_SIZE) == MAX_PAGE_SIZE == 1000


@pytest.mark.parametrize("size", [-1, MAX_PAGE_SIZE + 1])
def test_a_size_out_of_range_names_page_size(size: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        page_size(size)
    assert info.value.violations == [("page_size", "out of range")]


def test_a_next_page_exists_only_when_the_store_found_one_more() -> None:
    page = Page.of(["a", "b", "c"], 2, lambda item: f"after-{item}")
    assert list(page.items) == ["a", "b"] and page.next_page_token == "after-b"
    last = Page.of(["a", "b"], 2, lambda item: f"after-{item}")
    assert list(last.items) == ["a", "b"] and last.next_page_token == ""
    assert Page.of([], 2, str).next_page_token == ""
