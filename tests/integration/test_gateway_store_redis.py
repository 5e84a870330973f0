"""The gateway's keys and call records on a real Redis: a single server, or a 3-master Redis
Cluster under TOLLWAY_TEST_REDIS=cluster (scripts/test.sh runs this file both ways for issue 20).

The stores must not care: keys live in one hash, records in streams, and every pipeline that
spans keys is non-transactional, which the cluster client splits by node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.support.redis_server import local_redis
from tollway.gateway.auth import KeyRing
from tollway.gateway.store import GatewayStore
from tollway.mesh.errors import Unauthenticated
from tollway.mesh.redis import connect


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[GatewayStore]:
    client: aioredis.Redis = connect(redis_url)
    yield GatewayStore(client)
    await client.aclose()


async def test_a_key_authenticates_until_revoked(store: GatewayStore) -> None:
    ring = KeyRing(store, ttl_s=0)
    key, key_id = await ring.create("acme")
    tenant = await ring.authenticate([("authorization", f"Bearer {key}")])
    assert tenant.name == "acme"
    assert key_id in {row["key_id"] for row in await store.list_keys()}
    assert await ring.revoke(key_id) == key_id
    with pytest.raises(Unauthenticated):
        await ring.authenticate([("authorization", f"Bearer {key}")])
    assert await ring.revoke(key_id) is None  # idempotent: gone is "no match"


async def test_call_records_are_appended_and_read_back_newest_first(store: GatewayStore) -> None:
    records = [{"request_id": f"r{i}", "tenant": "acme" if i % 2 else "beta", "status": "OK"} for i in range(30)]
    await store.append_calls(records)
    recent = await store.recent_calls(5)
    assert [r["request_id"] for r in recent] == ["r29", "r28", "r27", "r26", "r25"]
    page = await store.calls_page(None, "", 10)
    assert [fields["request_id"] for _, fields in page][:3] == ["r29", "r28", "r27"]
    older = await store.calls_page(None, page[-1][0], 10)
    assert older[0][1]["request_id"] == "r19"


async def test_feedback_moves_the_usage_totals_once_in_one_script(store: GatewayStore) -> None:
    # One Lua script touches the feedback hash and every usage hash of the call: on a cluster
    # they must share a slot, or RecordFeedback fails with CROSSSLOT.
    usage = {("acme", "2026-12-06", "model"): {"m1": [1, 0, 0]}, ("acme", "2026-12-06", "feature"): {"f1": [1, 0, 0]}}
    await store.append_calls([{"request_id": "fb-1", "tenant": "acme", "status": "OK"}], usage=usage)
    targets = [("model", "m1"), ("feature", "f1")]
    assert not await store.put_feedback("fb-1", "acme", "2026-12-06", 800, "good", targets, (1, 2), 3)
    assert await store.put_feedback("fb-1", "acme", "2026-12-06", 300, "changed my mind", targets, (1, 2), 3)
    assert (await store.feedback("fb-1") or {})["score_milli"] == "300"
    totals = await store.usage_totals(["acme"], ["2026-12-06"], "model")
    # One call, counted once as feedback, with the latest score.
    assert totals[("acme", "2026-12-06")]["m1"] == [1, 1, 300]
    assert "acme" in await store.usage_tenants()
