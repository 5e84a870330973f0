"""A hold recorded together with its commit (``BudgetStore.hold_then``) leaves Redis exactly as
the hold's script followed by the commit's does: the same record, ledger entries, counters, lease,
day totals and replies, whether the one-go shortcut of that script runs (no record under the id
yet) or the two bodies do (an earlier attempt under the id, a usage beyond the model). Real
redis-server; the shortcut's use is seen in Redis's own command counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from tests.integration.test_budget_store_batching import fixture_store  # noqa: F401 (the store on a Redis of its own)
from tests.support.redis_server import TEST_REDIS
from tollway.budget.store import BudgetStore, Hold, pack_counters, pack_meta, pack_model

pytestmark = pytest.mark.skipif(TEST_REDIS == "cluster", reason="reads Redis's command counts of one server")

TENANT = "acme"
COUNTER = "t|tok|day|0|86400000"
NOW = 1_000_000
MODEL_META = pack_meta(
    {
        "model": "m",
        "pv": "p1",
        "r_in": "150000",
        "r_out": "600000",
        "r_cached": "75000",
        "ctx": "1000",
        "mout": "100",
    }
)


async def lease(store: BudgetStore, lease_id: str, tokens: int, counters: Sequence[str] = (COUNTER,)) -> None:
    ok, _, _ = await store.take_lease(
        TENANT,
        lease_id,
        now_ms=NOW,
        expires_ms=NOW + 600_000,
        spread=1,
        meta=pack_meta({"tenant": TENANT}),
        wanted=[(tokens, 1), (10**12, 1), (100, 1)],
        counters=pack_counters([(c, 10**9) for c in counters]),
    )
    assert ok


def hold(rid: str, lease_id: str) -> Hold:
    asked = {"tenant": TENANT, "key": "k1", "feat": "chat", "prio": "normal", "rid": "req-1", "in": "8"}
    return Hold(rid, lease_id, NOW, NOW + 600_000, 16, (24, 4_800, 1), COUNTER, asked, MODEL_META)


def commit(store: BudgetStore, rid: str, lease_id: str, **usage: Any) -> Any:
    args = {"input_tokens": 8, "output_tokens": 6, "cached_input_tokens": 0, "model": "", **usage}
    return store.commit_op(
        TENANT, rid, now_ms=NOW + 5, day="1970-01-01", attempt=0, provider="p", partial=False, lease=lease_id, **args
    )


async def state(store: BudgetStore, rid: str, lease_id: str) -> dict[str, Any]:
    client = store.client
    record = {k.decode(): v.decode() for k, v in (await client.hgetall(store.key(TENANT, f"r:{rid}"))).items()}
    entries = [
        {k.decode(): v.decode() for k, v in fields.items() if k != b"res"}
        for _, fields in await client.xrange(store.key(TENANT, "ledger"))
        if fields.get(b"res") == rid.encode()
    ]
    left = await client.hmget(store.key(TENANT, f"r:{lease_id}"), ["tok", "usd", "req"])
    return {
        "record": record,
        "ttl": await client.pttl(store.key(TENANT, f"r:{rid}")) > 0,
        "open": await client.zscore(store.key(TENANT, "open"), rid),
        "ledger": entries,
        "lease": [int(v) for v in left],
        "counters": {k.decode(): int(v) for k, v in (await client.hgetall(store.key(TENANT, "ctr"))).items()},
        "day": {k.decode(): int(v) for k, v in (await client.hgetall(store.key(TENANT, "u:1970-01-01"))).items()},
    }


async def zadds(store: BudgetStore) -> int:
    return int((await store.client.info("commandstats")).get("cmdstat_zadd", {}).get("calls", 0))


def named(value: Any, rid: str, lease_id: str) -> Any:
    """``value`` with the reservation's and the lease's ids in words: the rest must be equal (a
    record's fields in any order)."""
    text = json.dumps(value, default=repr).replace(lease_id, "<lease>").replace(rid, "<id>")
    return json.loads(text)


@pytest.mark.parametrize(
    ("case", "lease_tokens", "usage", "shortcut"),
    [
        ("covered by the lease", 10_000, {}, True),
        ("the lease covers part", 40, {}, True),
        ("another model answered", 10_000, {"model": pack_model("n", (1, 2, 3), "p2", 2_000, 50)}, True),
        ("cached input tokens", 10_000, {"cached_input_tokens": 4}, True),
        ("usage beyond the model", 10_000, {"output_tokens": 500}, False),
        ("an earlier attempt was released", 10_000, {}, False),
    ],
)
async def test_hold_then_commit_leaves_what_the_two_scripts_leave(
    store: BudgetStore, case: str, lease_tokens: int, usage: dict[str, Any], shortcut: bool
) -> None:
    outcomes, states, zadd_counts = [], [], []
    for rid, together in (("a" * 32, False), ("b" * 32, True)):
        lease_id = f"L{rid[:31]}"
        await lease(store, lease_id, lease_tokens)
        if case == "an earlier attempt was released":
            first = (await store.run_ops([store.hold_op(TENANT, hold(rid, lease_id))]))[0]
            assert first == ("ok", 1)
            await store.release(TENANT, rid, now_ms=NOW + 1, attempt=0, reason="failed")
        before = await zadds(store)
        base = await state(store, rid, lease_id)
        if together:
            (outcome,) = await store.run_ops(
                [store.hold_then(store.hold_op(TENANT, hold(rid, lease_id)), commit(store, rid, lease_id, **usage))]
            )
        else:
            (held,) = await store.run_ops([store.hold_op(TENANT, hold(rid, lease_id))])
            (settled,) = await store.run_ops([commit(store, rid, lease_id, **usage)])
            outcome = (held, settled)
        zadd_counts.append(await zadds(store) - before)
        after = await state(store, rid, lease_id)
        # What this reservation changed: counters and day totals as differences, the rest as is.
        after["counters"] = {k: v - base["counters"].get(k, 0) for k, v in after["counters"].items()}
        after["day"] = {k: v - base["day"].get(k, 0) for k, v in after["day"].items()}
        after["lease"] = [a - b for a, b in zip(after["lease"], base["lease"], strict=True)]
        outcomes.append(named(outcome, rid, lease_id))
        states.append(named(after, rid, lease_id))
    assert outcomes[0] == outcomes[1]
    assert states[0] == states[1]
    beyond = case == "usage beyond the model"
    assert after["record"]["st"] == ("reserved" if beyond else "committed")
    assert [e["op"] for e in after["ledger"]][-2:] == (["reserve"] if beyond else ["reserve", "commit"])
    # The shortcut writes the record once, never adding the id to the open set to remove it again.
    assert zadd_counts == [1, 0 if shortcut else 1], zadd_counts
