"""The budget store sends the scripts called in one turn of the event loop as one pipeline:
fewer round trips under concurrency, the same answers, each call's failure its own, and a
caller cancelled before anything was sent changes nothing. Real redis-server (a single one:
on Redis Cluster the store calls each script alone)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.support.redis_server import TEST_REDIS, local_redis
from tollway.budget.store import BudgetStore, pack_counters, pack_meta

pytestmark = pytest.mark.skipif(TEST_REDIS == "cluster", reason="the store batches on a single Redis only")

COUNTER = "t|tok|day|0|86400"


@pytest.fixture(name="store")
async def fixture_store() -> AsyncIterator[BudgetStore]:
    """A budget store on a redis-server of its own."""
    with local_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        yield BudgetStore(client, prefix="tw:budget:batch")
        await client.aclose()


async def reserve(store: BudgetStore, rid: str, allowed: int = 10_000) -> str:
    out = await store.reserve(
        "acme",
        rid,
        now_ms=1_000,
        expires_ms=600_000,
        max_out=16,
        min_out=0,
        meta=pack_meta({"tenant": "acme", "in": "8", "model": "m", "r_in": "1", "r_out": "1", "r_cached": "0"}),
        demands=(8, 1, 1, 8, 1, 1, 1, 0, 1),
        counters=pack_counters([(COUNTER, allowed)]),
    )
    return out.status


async def reads(client: aioredis.Redis) -> int:
    return int((await client.info("stats"))["total_reads_processed"])


async def test_the_calls_of_one_turn_share_a_round_trip_and_each_gets_its_own_answer(store: BudgetStore) -> None:
    await reserve(store, uuid.uuid4().hex)  # the script is loaded
    ids = [uuid.uuid4().hex for _ in range(40)]
    before = await reads(store.client)
    statuses = await asyncio.gather(*(reserve(store, rid, allowed=10 * 24) for rid in ids))
    sent = await reads(store.client) - before - 1  # less the INFO of this test
    # 40 reserves of 24 tokens against room for 10 (one was held above): exactly 9 fit.
    assert statuses.count("ok") == 9 and statuses.count("refused") == 31
    # The first call alone, the 39 others in one pipeline (Redis reads a large one in pieces of at
    # most 16 KB): a handful of reads, not 40.
    assert sent <= 8, sent
    assert [int(v) for v in await store.client.hmget(store.key("acme", "ctr"), [COUNTER])] == [10 * 24]


async def test_a_failing_call_fails_alone(store: BudgetStore) -> None:
    batcher = store._batcher
    assert batcher is not None
    ctr = store.key("acme", "ctr")

    def keys(rid: str) -> list[str]:
        return [store.key("acme", k) for k in ("ctr", f"r:{rid}", "open", "ledger", "convt")]

    # The script is not loaded yet: the pipeline's NOSCRIPT answers are retried one by one.
    args = [1_000, 600_000, 16, 0, pack_meta({"in": "8"}), f'["8","1","1","8","1","1","1","0","1","{COUNTER}","99"]']
    ok, bad = await asyncio.gather(
        batcher.call(store._reserve, keys("b" * 32), ["b" * 32, *args]),
        batcher.call(store._reserve, keys("c" * 32), ["c" * 32, *args[:5], "not json"]),
        return_exceptions=True,
    )
    assert ok[0] == b"ok", ok
    assert isinstance(bad, ResponseError), bad
    assert await store.client.hget(ctr, COUNTER) == b"24"  # the good one's hold alone
    assert await store.get("acme", "c" * 32) is None


async def test_a_caller_cancelled_before_the_send_changes_nothing_and_the_others_are_served(
    store: BudgetStore,
) -> None:
    await reserve(store, uuid.uuid4().hex)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    in_flight = asyncio.create_task(reserve(store, uuid.uuid4().hex))  # alone: sent at once
    leader = asyncio.create_task(reserve(store, first))  # one in flight: waits a turn for riders
    rider = asyncio.create_task(reserve(store, second))
    await asyncio.sleep(0)  # all three ran to their first wait; the rider joined the leader
    leader.cancel()
    assert await rider == "ok" and await in_flight == "ok"
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await store.get("acme", first) is None
    assert (await store.get("acme", second) or {}).get("st") == "reserved"
