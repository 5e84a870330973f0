"""A budget reservation's record stays in Redis's compact encoding under the settings Tollway runs
redis-server with (``tollway.mesh.redis.SERVER_SETTINGS``): records are kept a day, one per request, so
their size is most of what the budget holds in Redis (bench/redis_memory.py)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.integration.test_budget_hold_commit import MODEL_META, NOW, TENANT, commit, lease
from tests.integration.test_budget_store_batching import fixture_store  # noqa: F401 (the store on a Redis of its own)
from tests.support.redis_server import TEST_REDIS, local_redis
from tollway.budget.store import BudgetStore, Hold
from tollway.mesh.redis import SERVER_SETTINGS

pytestmark = pytest.mark.skipif(TEST_REDIS == "cluster", reason="the store fixture and CONFIG SET are one server's")

# A plan's counters as a request of a key and a feature meets them: requests and tokens a minute,
# tokens a day, dollars a month, the key's tokens a minute.
COUNTERS = [
    "t|req|minute|1796655660|1796655720",
    "t|tok|minute|1796655660|1796655720",
    "t|tok|day|1796601600|1796688000",
    "t|usd|month|1796083200|1798761600",
    "k:tw-ByZSnX|tok|minute|1796655660|1796655720",
]


async def a_committed_record(store: BudgetStore) -> str:
    rid, lease_id = "5a1ad49fde6493c5e4882c77a679a308", "L5957c58c468c43cbb11cf42bc9fa003"
    await lease(store, lease_id, 10_000, COUNTERS)
    asked = {
        "tenant": TENANT,
        "key": "tw-ByZSnX",
        "feat": "search",
        "prov": "",
        "conv": "",
        "prio": "normal",
        "rid": "8b717de071bc41d880e010297f7179b1",
        "in": "13",
        "maxout": "256",
    }
    held = Hold(rid, lease_id, NOW, NOW + 600_000, 256, (269, 160_000, 1), ",".join(COUNTERS), asked, MODEL_META)
    (outcome,) = await store.run_ops([store.hold_then(store.hold_op(TENANT, held), commit(store, rid, lease_id))])
    assert outcome[0] == ("ok", 1)
    return store.key(TENANT, f"r:{rid}")


async def test_a_committed_record_is_a_listpack(store: BudgetStore) -> None:
    key = await a_committed_record(store)
    client = store.client
    record = await client.hgetall(key)
    assert max(len(v) for v in record.values()) > 64  # beyond Redis's default listpack value limit
    assert await client.object("encoding", key) == b"listpack"
    assert await client.memory_usage(key) < 1_100


async def test_without_the_settings_the_same_record_takes_more_memory() -> None:
    # What SERVER_SETTINGS is for: the same record on a redis-server with Redis's defaults.
    assert "--hash-max-listpack-value" in SERVER_SETTINGS
    with local_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            await client.config_set("hash-max-listpack-value", 64)  # Redis's default
            store = BudgetStore(client, prefix="tw:budget:defaults")
            key = await a_committed_record(store)
            assert await client.object("encoding", key) == b"hashtable"
            assert await client.memory_usage(key) > 1_200
        finally:
            await client.aclose()
