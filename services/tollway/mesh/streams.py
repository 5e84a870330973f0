"""Stream helpers: send what is ready together, never hold back what is alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


async def coalesce(
    source: AsyncIterator[T], merge: Callable[[T, T], T | None], *, max_buffered: int = 256
) -> AsyncIterator[T]:
    """Yields ``source``'s items, merging neighbours that are already waiting.

    A reader task runs ahead of the consumer into a bounded queue. Each time the
    consumer asks for an item it takes the first one waiting and merges into it every
    further item already queued, as long as ``merge(a, b)`` returns the merged item (it
    returns None for items that must stay apart, such as a delta and an end event).
    Nothing waits for company: an item that arrives alone is yielded at once, so a slow
    token stream keeps its latency and a fast burst costs one message instead of many.

    Exceptions from ``source`` are raised after the items that came before them.
    Closing the returned iterator cancels the reader (and with it ``source``).
    """
    queue: asyncio.Queue[object] = asyncio.Queue(max_buffered)

    async def read() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except BaseException as exc:  # delivered in order, after the items read so far
            await queue.put(exc)
            return
        await queue.put(_DONE)

    reader = asyncio.get_running_loop().create_task(read())
    pending: object | None = None
    try:
        while True:
            item = pending if pending is not None else await queue.get()
            pending = None
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            current: T = item  # type: ignore[assignment]
            while not queue.empty():
                following = queue.get_nowait()
                if following is _DONE or isinstance(following, BaseException):
                    pending = following
                    break
                merged = merge(current, following)  # type: ignore[arg-type]
                if merged is None:
                    pending = following
                    break
                current = merged
            yield current
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
