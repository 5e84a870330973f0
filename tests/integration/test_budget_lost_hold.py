"""A hold admitted from a lease dies unwritten with the budget process that held it: the
gateway still charges its call, exactly once, through its outbox.

Real gRPC, a real redis-server, the gateway's real Budgeting and outbox; two budget services on
one Redis stand for a budget process and the one that replaced it after it died. Time is a
clock the tests move by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fakes.procs import free_port
from tests.integration.test_budget_request_id_retry import CHARGED, ops_of, used
from tests.integration.test_budget_service import (  # the suite's Redis and plans fixtures too
    Clock,
    fixture_plans_file,  # noqa: F401
    fixture_redis_url,  # noqa: F401
    reconcile,
    replicas,
)
from tollway.budget.budget import Budget
from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatMessage, ChatRequest, Usage
from tollway.gateway.budget_client import BudgetClient
from tollway.gateway.budgeting import Admission, Budgeting, Settlement
from tollway.gateway.request import GatewayRequest
from tollway.gateway.store import BUDGET_OUTBOX, GatewayStore
from tollway.mesh import redis as mesh_redis

USED = Usage(input_tokens=8, output_tokens=6)


@pytest.fixture(name="outbox")
async def fixture_outbox(redis_url: str) -> AsyncIterator[GatewayStore]:
    client = mesh_redis.connect(redis_url)
    await client.delete(BUDGET_OUTBOX)
    yield GatewayStore(client)
    await client.aclose()


def request(request_id: str) -> GatewayRequest:
    chat = ChatRequest("gpt-4o-mini", (ChatMessage("user", "hi"),), max_tokens=16, request_id=request_id)
    return GatewayRequest(dataclasses.replace(chat, tenant="gamma"), "", "", CachePolicy(), priority="interactive")


async def admit_from_a_lease(port: int, outbox: GatewayStore, request_id: str) -> Admission:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        admitted = await Budgeting(BudgetClient(channel, count_prompt_tokens=lambda _: 8), outbox).admit(
            request(request_id)
        )
    assert admitted.hold is not None
    return admitted


def dies(budget: Budget) -> None:
    """The process dies: its leases' book and its holds not yet written are gone with it."""
    leasing = budget.leasing
    assert leasing is not None
    assert leasing._unrecorded, "the hold should still be waiting to be written"
    if leasing._record_timer is not None:
        leasing._record_timer.cancel()
        leasing._record_timer = None
    leasing._unrecorded.clear()
    leasing.book.blocks.clear()
    leasing.book.active.clear()
    leasing.book.by_child.clear()


async def settle_with(port: int, outbox: GatewayStore, admitted: Admission, outcome: Settlement) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await Budgeting(BudgetClient(channel), outbox).settle(admitted, outcome)


async def drain_with(port: int, outbox: GatewayStore) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await Budgeting(BudgetClient(channel), outbox).drain()


async def leases_gone_back(survivor: Any, clock: Clock) -> None:
    """Past the reservation TTL and the lease's age: the sweeper gives the dead lease's block back."""
    clock.advance(survivor.budget.cfg.reservation_ttl_s + survivor.budget.cfg.lease_max_age_s + 3)
    await survivor.budget.sweep()


LEASED = {"lease_requests": 16, "lease_record_delay_s": 3600.0}


@dataclasses.dataclass
class Lost:
    """A budget service that holds a hold unwritten, the one that will replace it, the clock, the
    tenant's use before, and the gateway's admission of the hold."""

    holder: Any
    survivor: Any
    clock: Clock
    start: int
    held: Admission


@contextlib.asynccontextmanager
async def a_hold_from_a_lease(
    redis_url: str, plans: Path, outbox: GatewayStore, request_id: str
) -> AsyncIterator[Lost]:
    clock = Clock()
    async with replicas(redis_url, plans, clock, count=2, **LEASED) as (holder, survivor):
        start = await used(survivor.stub, "gamma")
        yield Lost(holder, survivor, clock, start, await admit_from_a_lease(holder.port, outbox, request_id))


async def charged(lost: Lost, tokens: int) -> None:
    """Once the dead lease is back: ``tokens`` charged in all, and counters equal to the ledger."""
    await leases_gone_back(lost.survivor, lost.clock)
    assert await used(lost.survivor.stub, "gamma") == lost.start + tokens
    await reconcile(lost.survivor.stub, "gamma")


async def test_a_commit_of_a_hold_lost_with_its_process_is_charged_anew_once(
    redis_url: str, plans_file: Path, outbox: GatewayStore
) -> None:
    async with a_hold_from_a_lease(redis_url, plans_file, outbox, "lost-1") as lost:
        dies(lost.holder.budget)

        await settle_with(lost.survivor.port, outbox, lost.held, Settlement(USED))
        [(_, entry)] = await outbox.budget_pending()
        assert (entry["op"], entry["request_id"], entry["out"]) == ("charge", "lost-1", "6")
        assert await drain_with(lost.survivor.port, outbox) == 1
        assert await outbox.budget_pending() == []
        assert ops_of(redis_url, "gamma", lost.held.hold.name) == ["reserve", "commit"]  # type: ignore[union-attr]
        await charged(lost, CHARGED)


async def test_a_commit_queued_while_the_budget_was_down_is_charged_anew_if_its_hold_died(
    redis_url: str, plans_file: Path, outbox: GatewayStore
) -> None:
    async with a_hold_from_a_lease(redis_url, plans_file, outbox, "lost-2") as lost:
        # The budget process is unreachable (it is dying): the commit waits in the outbox.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as dead:
            await Budgeting(BudgetClient(dead, timeout_s=0.5), outbox).settle(lost.held, Settlement(USED))
        [(_, entry)] = await outbox.budget_pending()
        assert entry["op"] == "commit"
        dies(lost.holder.budget)

        # Its replacement does not know the hold: the replay charges the call instead.
        assert await drain_with(lost.survivor.port, outbox) == 1
        assert await outbox.budget_pending() == []
        assert ops_of(redis_url, "gamma", lost.held.hold.name) == ["reserve", "commit"]  # type: ignore[union-attr]
        await charged(lost, CHARGED)


async def test_a_release_of_a_lost_hold_has_nothing_to_give_back(
    redis_url: str, plans_file: Path, outbox: GatewayStore
) -> None:
    async with a_hold_from_a_lease(redis_url, plans_file, outbox, "lost-3") as lost:
        dies(lost.holder.budget)
        await settle_with(lost.survivor.port, outbox, lost.held, Settlement(None, reason="provider_unavailable"))
        assert await outbox.budget_pending() == []
        await charged(lost, 0)


async def test_a_commit_refused_for_another_unknown_thing_is_not_charged_anew(
    redis_url: str, plans_file: Path, outbox: GatewayStore
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        admitted = await admit_from_a_lease(rep.port, outbox, "lost-4")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rep.port}") as channel:
            budgeting = Budgeting(BudgetClient(channel), outbox)
            # The answering model is not in the budget's catalog: NOT_FOUND, but the hold is known.
            await budgeting.settle(admitted, Settlement(USED), model="no-such-model")
            assert await outbox.budget_pending() == []
            await budgeting.settle(admitted, Settlement(None, reason="cleanup"))
        await reconcile(rep.stub, "gamma")
