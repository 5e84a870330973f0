"""AIP-158 paging: how many items a page holds, and the token of the page after it.

A list RPC asks its store for one item more than the page holds: when that extra item
exists there is a next page, and the last item shown is where it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from tollway.mesh.errors import InvalidArgument
from tollway.mesh.frozen import frozen

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The number of items a page holds for a request's ``page_size``.

    Args:
        requested: The request's page_size; 0 means :data:`DEFAULT_PAGE_SIZE`.

    Raises:
        InvalidArgument: ``requested`` is negative or above :data:`MAX_PAGE_SIZE`.
    """
    if not 0 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size is {requested}; use 1 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})",
            [("page_size", "out of range")],
        )
    return requested or DEFAULT_PAGE_SIZE


@frozen
class Page(Generic[T]):
    """One page of results.

    Attributes:
        items: The items shown, at most the page size.
        next_page_token: Where the next page starts, or "" on the last page.
    """

    items: Sequence[T]
    next_page_token: str

    @classmethod
    def of(cls, found: Sequence[T], size: int, token: Callable[[T], str]) -> Page[T]:
        """The page of ``found``, which the store fetched with ``size + 1`` as its limit.

        Args:
            found: Up to ``size + 1`` items, in order.
            size: The page size (from :func:`page_size`).
            token: The page token that resumes after an item.
        """
        items = found[:size]
        return cls(items, token(items[-1]) if len(found) > size else "")
