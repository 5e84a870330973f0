from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tollway.mesh.streams import coalesce


def join(a: object, b: object) -> str | None:
    if isinstance(a, str) and isinstance(b, str):
        return a + b
    return None


async def burst(items: list[object]) -> AsyncIterator[object]:
    for item in items:
        yield item


async def test_items_ready_together_are_merged_and_others_kept_apart() -> None:
    async def consumer_is_slow() -> list[object]:
        out = []
        async for item in coalesce(burst(["a", "b", "c", 1, "d"]), join):
            out.append(item)
            await asyncio.sleep(0.01)  # the reader runs ahead meanwhile
        return out

    out = await consumer_is_slow()
    assert "".join(x for x in out if isinstance(x, str)) == "abcd"
    assert 1 in out and out.index(1) < len(out) - 1
    assert len(out) < 5


async def test_an_item_that_arrives_alone_is_not_held_back() -> None:
    # The source sends its next item only once the consumer has the previous one: a coalescer
    # that held an item back, waiting for company, would wait forever (the wait_for fails).
    delivered = asyncio.Event()

    async def lockstep() -> AsyncIterator[str]:
        for ch in "xyz":
            delivered.clear()
            yield ch
            await delivered.wait()

    seen: list[str] = []

    async def consume() -> None:
        async for item in coalesce(lockstep(), join):
            seen.append(item)
            delivered.set()

    await asyncio.wait_for(consume(), 5)
    assert seen == ["x", "y", "z"]


async def test_errors_arrive_after_the_items_before_them() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        async for item in coalesce(failing(), join):
            got.append(item)
    assert got == ["a"]


async def test_closing_early_closes_the_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "t"
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    stream = coalesce(endless(), join)
    assert (await anext(stream)).startswith("t")
    await stream.aclose()
    await asyncio.wait_for(closed.wait(), 1)
