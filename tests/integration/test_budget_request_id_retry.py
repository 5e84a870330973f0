"""A request id reserved again after its first attempt finished (issue 19): the attempt that
answers is charged, exactly once.

The budget service over real gRPC and a real redis-server, as in test_budget_service.py (whose
helpers these tests share); time is a clock the tests move by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.test_budget_service import PLANS, Clock, details, expect, reconcile, replicas, reserve_req
from tests.support.redis_cluster import sync_client
from tests.support.redis_server import local_redis
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc

# gpt-4o-mini, 8 input + 16 output tokens reserved; 8 + 6 committed.
HELD = 24
CHARGED = 14


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "budget.yaml"
    path.write_text(PLANS)
    return path


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
