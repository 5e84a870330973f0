"""A request id reserved again after its first attempt finished (issue 19): the attempt that
answers is charged, exactly once.

The budget service over real gRPC and a real redis-server, as in test_budget_service.py (whose
helpers these tests share); time is a clock the tests move by hand.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import grpc

from tests.fakes.procs import free_port
from tests.integration.test_budget_service import (  # the suite's Redis and plans fixtures too
    Clock,
    details,
    expect,
    fixture_plans_file,  # noqa: F401
    fixture_redis_url,  # noqa: F401
    reconcile,
    replicas,
    reserve_req,
)
from tests.support.redis_cluster import sync_client
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatMessage, ChatRequest
from tollway.gateway.budget_client import BudgetClient
from tollway.gateway.budgeting import Budgeting, Settlement
from tollway.gateway.request import GatewayRequest
from tollway.gateway.store import BUDGET_OUTBOX, GatewayStore
from tollway.mesh import redis as mesh_redis

# gpt-4o-mini, 8 input + 16 output tokens reserved; 8 + 6 committed.
HELD = 24
CHARGED = 14


def ops_of(redis_url: str, tenant: str, name: str) -> list[str]:
    """The ledger operations of one reservation, oldest first."""
    rid = name.rsplit("/", 1)[1]
    client = sync_client(redis_url)
    try:
        rows = client.xrange(f"tw:budget:test:{{{tenant}}}:ledger")
    finally:
        client.close()
    return [f[b"op"].decode() for _, f in rows if f.get(b"res") == rid.encode()]


async def used(stub: budget_pb2_grpc.BudgetServiceStub, tenant: str) -> int:
    return (await stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=tenant))).statuses[0].used


def commit_req(name: str, output_tokens: int = 6) -> budget_pb2.CommitBudgetRequest:
    return budget_pb2.CommitBudgetRequest(name=name, input_tokens=8, output_tokens=output_tokens)


async def test_a_released_request_id_reserves_anew_and_its_commit_is_the_one_charge(
    redis_url: str, plans_file: Path
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        first = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-1"))).reservation
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=first.name, reason="router down"))
        assert await used(rep.stub, "gamma") == start

        again = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-1"))).reservation
        # The same name (the id follows the request id) but a fresh, open hold.
        assert again.name == first.name
        assert again.state == budget_pb2.RESERVATION_STATE_RESERVED
        assert await used(rep.stub, "gamma") == start + HELD
        done = await rep.stub.CommitBudget(commit_req(again.name))
        assert done.reservation.state == budget_pb2.RESERVATION_STATE_COMMITTED
        assert await used(rep.stub, "gamma") == start + CHARGED
        assert ops_of(redis_url, "gamma", first.name) == ["reserve", "release", "reserve", "commit"]
        await reconcile(rep.stub, "gamma")


async def test_an_expired_request_id_reserves_anew(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        req = reserve_req("gamma", request_id="job-retry-2", ttl_seconds=5)
        first = (await rep.stub.ReserveBudget(req)).reservation
        clock.advance(6)
        assert await rep.budget.sweep() >= 1
        assert await used(rep.stub, "gamma") == start
        again = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-2"))).reservation
        assert again.state == budget_pb2.RESERVATION_STATE_RESERVED
        assert await used(rep.stub, "gamma") == start + HELD
        await rep.stub.CommitBudget(commit_req(again.name))
        assert await used(rep.stub, "gamma") == start + CHARGED
        assert ops_of(redis_url, "gamma", first.name) == ["reserve", "expire", "reserve", "commit"]
        await reconcile(rep.stub, "gamma")


async def test_a_committed_request_id_is_not_charged_again(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        first = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-3"))).reservation
        await rep.stub.CommitBudget(commit_req(first.name))

        # A rerun of the request id gets the committed reservation back, holding nothing.
        again = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-3"))).reservation
        assert again.name == first.name
        assert again.state == budget_pb2.RESERVATION_STATE_COMMITTED
        assert again.tokens == CHARGED
        assert await used(rep.stub, "gamma") == start + CHARGED
        # Its commit: the same usage answers the first result, other usage is refused; no charge.
        await rep.stub.CommitBudget(commit_req(again.name))
        err = await expect(grpc.StatusCode.FAILED_PRECONDITION, rep.stub.CommitBudget(commit_req(again.name, 9)))
        assert details(err)["ErrorInfo"].reason == "ALREADY_COMMITTED"
        assert await used(rep.stub, "gamma") == start + CHARGED
        assert ops_of(redis_url, "gamma", first.name) == ["reserve", "commit"]
        await reconcile(rep.stub, "gamma")


async def test_an_open_request_id_is_still_returned_idempotently(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        a = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-4"))).reservation
        b = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="job-retry-4"))).reservation
        assert (a.name, b.state) == (b.name, budget_pb2.RESERVATION_STATE_RESERVED)
        assert await used(rep.stub, "gamma") == start + HELD
        assert ops_of(redis_url, "gamma", a.name) == ["reserve"]
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=a.name))
        await reconcile(rep.stub, "gamma")


async def test_a_refused_reserve_anew_changes_nothing(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        # beta: 1,000 tokens a minute. The first attempt is released, then others fill the minute.
        big = {"input_tokens": 500, "max_output_tokens": 40}
        first = (await rep.stub.ReserveBudget(reserve_req("beta", request_id="job-retry-5", **big))).reservation
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=first.name))
        filler = (await rep.stub.ReserveBudget(reserve_req("beta", input_tokens=600, max_output_tokens=40))).reservation
        before = await used(rep.stub, "beta")
        await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rep.stub.ReserveBudget(reserve_req("beta", request_id="job-retry-5", **big)),
        )
        assert await used(rep.stub, "beta") == before
        assert ops_of(redis_url, "beta", first.name) == ["reserve", "release"]
        kept = await rep.budget.store.get("beta", first.name.rsplit("/", 1)[1])
        assert kept is not None and kept["st"] == "released"
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=filler.name))
        await reconcile(rep.stub, "beta")


# --- attempts: a late settlement of an earlier attempt never settles a later one's hold -------


def reason_of(err: grpc.aio.AioRpcError) -> str:
    return details(err)["ErrorInfo"].reason


async def expire_first_attempt(rep: Any, clock: Clock, request_id: str) -> budget_pb2.Reservation:
    """Reserves ``request_id`` (attempt 1), lets the sweeper expire it, reserves it again."""
    first = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id=request_id, ttl_seconds=5))).reservation
    assert first.attempt == 1
    clock.advance(6)
    assert await rep.budget.sweep() >= 1
    again = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id=request_id))).reservation
    assert (again.name, again.attempt, again.state) == (first.name, 2, budget_pb2.RESERVATION_STATE_RESERVED)
    return again


async def test_a_late_release_of_an_earlier_attempt_leaves_the_later_hold_alone(
    redis_url: str, plans_file: Path
) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        again = await expire_first_attempt(rep, clock, "attempts-1")
        err = await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=again.name, reason="late", attempt=1)),
        )
        assert reason_of(err) == "STALE_ATTEMPT" and "attempt 2 holds it" in err.details()
        assert await used(rep.stub, "gamma") == start + HELD  # attempt 2 still holds its estimate
        done = await rep.stub.CommitBudget(
            budget_pb2.CommitBudgetRequest(name=again.name, input_tokens=8, output_tokens=6, attempt=2)
        )
        assert (done.reservation.state, done.reservation.attempt) == (budget_pb2.RESERVATION_STATE_COMMITTED, 2)
        assert await used(rep.stub, "gamma") == start + CHARGED
        assert ops_of(redis_url, "gamma", again.name) == ["reserve", "expire", "reserve", "commit"]
        await reconcile(rep.stub, "gamma")


async def test_a_late_commit_of_an_earlier_attempt_changes_nothing(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        again = await expire_first_attempt(rep, clock, "attempts-2")
        late = budget_pb2.CommitBudgetRequest(name=again.name, input_tokens=8, output_tokens=9, attempt=1)
        assert reason_of(await expect(grpc.StatusCode.FAILED_PRECONDITION, rep.stub.CommitBudget(late))) == (
            "STALE_ATTEMPT"
        )
        assert await used(rep.stub, "gamma") == start + HELD
        # The attempt that holds it releases; a replay of the stale commit still changes nothing.
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=again.name, attempt=2))
        await expect(grpc.StatusCode.FAILED_PRECONDITION, rep.stub.CommitBudget(late))
        assert await used(rep.stub, "gamma") == start
        assert ops_of(redis_url, "gamma", again.name) == ["reserve", "expire", "reserve", "release"]
        await reconcile(rep.stub, "gamma")


async def test_a_settlement_without_an_attempt_settles_whichever_attempt_holds_the_id(
    redis_url: str, plans_file: Path
) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        again = await expire_first_attempt(rep, clock, "attempts-3")
        await rep.stub.CommitBudget(budget_pb2.CommitBudgetRequest(name=again.name, input_tokens=8, output_tokens=6))
        assert await used(rep.stub, "gamma") == start + CHARGED
        err = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=again.name, attempt=-1)),
        )
        assert "attempt" in err.details()
        await reconcile(rep.stub, "gamma")


async def test_the_gateways_outbox_replays_a_release_for_its_own_attempt_only(redis_url: str, plans_file: Path) -> None:
    """The edge end to end: the gateway's release of attempt 1 waits in its (real) outbox while
    the budget service is unreachable; attempt 1 expires and a retry holds attempt 2; the replay
    must not return attempt 2's estimate."""
    clock = Clock()
    gateway_redis = mesh_redis.connect(redis_url)  # a single Redis or a cluster, as the gateway's
    outbox = GatewayStore(gateway_redis)
    await gateway_redis.delete(BUDGET_OUTBOX)
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        chat = ChatRequest("gpt-4o-mini", (ChatMessage("user", "hi"),), max_tokens=16, request_id="attempts-4")
        chat = dataclasses.replace(chat, tenant="gamma")
        request = GatewayRequest(chat, "", "", CachePolicy(), priority="interactive")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rep.port}") as live:
            admitted = await Budgeting(BudgetClient(live, count_prompt_tokens=lambda _: 8), outbox).admit(request)
        assert admitted.hold is not None and admitted.hold.attempt == 1

        # The budget service cannot be reached: the release goes to the outbox, naming attempt 1.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as dead:
            down = Budgeting(BudgetClient(dead, timeout_s=0.5), outbox)
            await down.settle(admitted, Settlement(None, reason="provider_unavailable"))
        [(_, entry)] = await outbox.budget_pending()
        assert (entry["op"], entry["attempt"]) == ("release", "1")

        clock.advance(601)  # the default TTL: attempt 1 expires, and a retry reserves attempt 2
        assert await rep.budget.sweep() >= 1
        again = (await rep.stub.ReserveBudget(reserve_req("gamma", request_id="attempts-4"))).reservation
        assert again.attempt == 2
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rep.port}") as live:
            assert await Budgeting(BudgetClient(live), outbox).drain() == 1
        assert await outbox.budget_pending() == []
        assert await used(rep.stub, "gamma") == start + HELD  # attempt 2's hold is intact
        assert ops_of(redis_url, "gamma", again.name) == ["reserve", "expire", "reserve"]
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=again.name, attempt=2))
        await reconcile(rep.stub, "gamma")
    await gateway_redis.aclose()
