"""A finished call's record is filed (its answer's hash, metrics, the call log) on the loop's next
turn, after the answer has left; shutting down (``drain``) files one that ended just before."""

from __future__ import annotations

import asyncio
import dataclasses

from tests.unit.test_gateway_budgeting import FakeClient
from tests.unit.test_gateway_prompt_ref import FakeCache, FakeRouter, FakeStore
from tests.unit.test_gateway_prompt_ref import gateway as gateway_without_budget
from tests.unit.test_gateway_settle_delay import gateway, request
from tollway.common.caching import CacheMode, CachePolicy
from tollway.gateway.lifecycle import Gateway


def filed(gw: Gateway) -> list[str]:
    return [r["request_id"] for r in gw.store.records]  # type: ignore[attr-defined]


async def test_the_record_is_filed_on_the_next_turn_with_the_answer_hash() -> None:
    gw = gateway(FakeClient(), 0)
    events = [e async for e in gw.generate(request("r1"))]
    assert type(events[-1]).__name__ == "Completed"
    assert gw.calls._waiting == []  # answered; nothing filed in the answer's own turn
    await asyncio.sleep(0)
    (record,) = gw.calls._waiting
    assert record.request_id == "r1" and record.status == "OK"
    assert len(record.response_hash) == 32  # the answer's digest, taken off the answer's way
    await gw.drain()
    assert filed(gw) == ["r1"]


async def test_drain_files_the_record_of_a_call_that_just_ended() -> None:
    # No budget and no cache store: nothing else for drain to wait for, so only its own turn lets
    # the record in.
    gw = gateway_without_budget(None, FakeCache(), FakeRouter(), FakeStore())
    bypass = dataclasses.replace(request("r2"), cache=CachePolicy(mode=CacheMode.BYPASS))
    [e async for e in gw.generate(bypass)]
    await gw.drain()  # in the same turn as the call's end
    assert filed(gw) == ["r2"]
