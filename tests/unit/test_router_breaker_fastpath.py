"""The breaker's closed-state fast path: no Redis round trip per call, exact batched counts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tollway.router.breaker import CLOSED, OPEN, Breakers, BreakerSettings, BreakerSnapshot, StoreResult, Transition


class RecordingStore:
    """Answers like the Redis store would for a closed breaker, and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, int]] = []
        self.state = CLOSED

    async def acquire(self, name: str, token: str, settings: BreakerSettings, replica: str) -> StoreResult:
        self.calls.append(("acquire", True, 1))
        decision = "allow" if self.state == CLOSED else "reject"
        return StoreResult(decision, self.state, 0, 10_000 if self.state == OPEN else 0, 0)

    async def record(
        self,
        name: str,
        token: str,
        ok: bool,
        detail: str,
        settings: BreakerSettings,
        replica: str,
        count: int = 1,
        refused: bool = False,
    ) -> StoreResult:
        self.calls.append(("record", ok, count))
        return StoreResult("ok", self.state, 0, 10_000 if self.state == OPEN else 0, 0)

    async def release(self, name: str, token: str) -> None:
        self.calls.append(("release", True, 1))

    async def snapshots(self, names: Sequence[str], settings: BreakerSettings) -> list[BreakerSnapshot]:
        return [BreakerSnapshot(n, self.state) for n in names]

    async def transitions(self, limit: int, before_id: str = "", breaker: str = "") -> list[Transition]:
        return []


SETTINGS = BreakerSettings(local_view_s=60, flush_interval_s=0.01)


async def test_calls_after_a_closed_answer_skip_the_store_and_successes_are_batched() -> None:
    store = RecordingStore()
    breakers = Breakers(store, SETTINGS)
    first = await breakers.acquire("d")
    await breakers.record(first, ok=True)
    assert [c[0] for c in store.calls] == ["acquire", "record"]
    store.calls.clear()
    for _ in range(10):
        permit = await breakers.acquire("d")
        assert permit.allowed and permit.local
        await breakers.record(permit, ok=True)
    assert store.calls == []  # ten calls, no round trip
    await asyncio.sleep(0.05)
    assert store.calls == [("record", True, 10)]  # one write with the exact count


async def test_a_failure_is_written_at_once_after_the_successes_before_it() -> None:
    store = RecordingStore()
    breakers = Breakers(store, SETTINGS)
    await breakers.record(await breakers.acquire("d"), ok=True)
    store.calls.clear()
    for ok in (True, True, False):
        await breakers.record(await breakers.acquire("d"), ok=ok, detail="boom")
    assert store.calls == [("record", True, 2), ("record", False, 1)]


async def test_a_refresh_that_sees_the_breaker_open_ends_the_local_view() -> None:
    store = RecordingStore()
    breakers = Breakers(store, SETTINGS)
    await breakers.record(await breakers.acquire("d"), ok=True)
    store.state = OPEN  # another replica opened it
    await breakers.snapshots(["d"])
    permit = await breakers.acquire("d")
    assert not permit.allowed and permit.state == OPEN


async def test_local_view_zero_asks_the_store_every_time() -> None:
    store = RecordingStore()
    breakers = Breakers(store, BreakerSettings(local_view_s=0))
    for _ in range(3):
        await breakers.record(await breakers.acquire("d"), ok=True)
    assert [c[0] for c in store.calls] == ["acquire", "record"] * 3
    await breakers.close()
