"""A finished call's settlement waits ``settle_delay_s`` with the others of that moment, then
starts; shutting down (``drain``) starts those still waiting, so none is lost."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_gateway_budgeting import FakeClient
from tests.unit.test_gateway_budgeting import FakeStore as FakeBudgetStore
from tests.unit.test_gateway_prompt_ref import LIMITS, FakeCache, FakeRouter, FakeStore
from tollway.common.caching import CachePolicy
from tollway.common.catalog import Catalog
from tollway.common.chat import ChatMessage, ChatRequest
from tollway.gateway.budgeting import Budgeting
from tollway.gateway.config import GatewayConfig
from tollway.gateway.lifecycle import Gateway
from tollway.gateway.request import GatewayRequest


def gateway(client: FakeClient, delay_s: float) -> Gateway:
    return Gateway(
        keys=None,  # type: ignore[arg-type]  # authentication happens in service.py
        router=FakeRouter(),  # type: ignore[arg-type]
        store=FakeStore(),  # type: ignore[arg-type]
        limits=LIMITS,
        request_timeout_s=5,
        catalog=Catalog({}),
        cache=FakeCache(),  # type: ignore[arg-type]
        budget=Budgeting(client, FakeBudgetStore()),  # type: ignore[arg-type]
        settle_delay_s=delay_s,
    )


def request(request_id: str) -> GatewayRequest:
    chat = ChatRequest("fake-ok", (ChatMessage("user", "hi"),), max_tokens=16, request_id=request_id, tenant="acme")
    return GatewayRequest(chat, "u1", "f", CachePolicy(), api_key_id="k1")


def ops(client: FakeClient) -> list[str]:
    return [op for op, _ in client.calls]


async def test_settlements_of_one_moment_wait_the_delay_then_start_together() -> None:
    client = FakeClient()
    gw = gateway(client, 0.05)
    for rid in ("r1", "r2"):
        assert [type(e).__name__ for e in [e async for e in gw.generate(request(rid))]][-1] == "Completed"
    await asyncio.sleep(0)
    assert ops(client) == ["reserve", "reserve"]  # both answered, neither settled yet
    await asyncio.sleep(0.1)
    assert ops(client) == ["reserve", "reserve", "commit", "commit"]
    await gw.drain()


async def test_drain_starts_the_settlements_still_waiting() -> None:
    client = FakeClient()
    gw = gateway(client, 3600)
    [e async for e in gw.generate(request("r1"))]
    assert ops(client) == ["reserve"]
    await gw.drain()
    assert ops(client) == ["reserve", "commit"]


def test_a_settle_delay_out_of_range_names_its_variable() -> None:
    with pytest.raises(ValueError, match="TOLLWAY_GATEWAY_BUDGET_SETTLE_DELAY_S"):
        GatewayConfig(budget_settle_delay_s=-0.01)
    assert GatewayConfig(budget_settle_delay_s=0).budget_settle_delay_s == 0
