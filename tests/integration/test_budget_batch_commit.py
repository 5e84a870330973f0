"""BatchCommitBudget, and the gateway's client sending the commits of one moment in one call.

The budget service over real gRPC and a real redis-server, as in test_budget_service.py (whose
helpers these tests share); time is a clock the tests move by hand.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from tests.integration.test_budget_service import (  # the suite's Redis and plans fixtures too
    Clock,
    details,
    expect,
    fixture_plans_file,  # noqa: F401
    fixture_redis_url,  # noqa: F401
    ledger_ops,
    reconcile,
    replicas,
    reserve_req,
)
from tollway.budget.service import BudgetServicer
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.common.chat import Usage
from tollway.gateway.budget_client import BudgetClient
from tollway.mesh.errors import FailedPrecondition, Internal, InvalidArgument, NotFound

# gpt-4o-mini, 8 input + 16 output tokens reserved (reserve_req); 8 + 6 committed.
HELD = 24
CHARGED = 14


def commit_req(name: str, output_tokens: int = 6, **kw: Any) -> budget_pb2.CommitBudgetRequest:
    return budget_pb2.CommitBudgetRequest(name=name, input_tokens=8, output_tokens=output_tokens, **kw)


async def used(stub: budget_pb2_grpc.BudgetServiceStub, tenant: str) -> int:
    return (await stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=tenant))).statuses[0].used


def failed_items(code: str) -> float:
    labels = {"service": "budget", "method": "BatchCommitBudget", "code": code}
    return REGISTRY.get_sample_value("tollway_rpc_errors_total", labels) or 0.0


def violations(status: Any) -> list[str]:
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    return []


def reason(status: Any) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


async def reserved(client: BudgetClient, tenant: str, prefix: str, count: int) -> list[Any]:
    """``count`` holds of ``tenant`` made through the gateway's client (request ids ``prefix-i``)."""
    return [
        await client.reserve_counted(
            model="gpt-4o-mini", input_tokens=8, max_output_tokens=16, request_id=f"{prefix}-{i}", tenant=tenant
        )
        for i in range(count)
    ]


class Calls(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary calls a channel makes, by method name."""

    def __init__(self) -> None:
        self.made: collections.Counter[str] = collections.Counter()

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.made[method.rsplit("/", 1)[1]] += 1
        return await continuation(details, request)


async def test_a_batch_commits_each_reservation_as_its_own_commit_would_in_order(
    redis_url: str, plans_file: Path
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        start = await used(rep.stub, "gamma")
        names = [(await rep.stub.ReserveBudget(reserve_req("gamma"))).reservation.name for _ in range(3)]
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=names[1], reason="router down"))
        assert await used(rep.stub, "gamma") == start + 2 * HELD
        batch = budget_pb2.BatchCommitBudgetRequest(
            requests=[
                commit_req(names[0]),
                commit_req(names[1]),  # released: refused
                commit_req("tenants/gamma/reservations/00000000000000000000000000000000"),  # unknown
                commit_req(names[2], output_tokens=-1),  # bad input: nothing changes for it
                commit_req(names[0]),  # the first again: answered as the first
            ]
        )
        errors_before = {code: failed_items(code) for code in ("FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT")}
        results = (await rep.stub.BatchCommitBudget(batch)).results
        assert [r.WhichOneof("result") for r in results] == ["response", "error", "error", "error", "response"]
        # Each failed commit counts as a failed RPC would (the error-rate alert reads this).
        assert {code: failed_items(code) - n for code, n in errors_before.items()} == dict.fromkeys(errors_before, 1)
        assert results[0].response.reservation.state == budget_pb2.RESERVATION_STATE_COMMITTED
        assert results[0].response.delta_tokens == CHARGED - HELD
        assert results[4].response == results[0].response
        assert results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert reason(results[1].error) == "ALREADY_RELEASED"
        assert results[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert results[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert violations(results[3].error) == ["requests[3].output_tokens"]
        # One charged, one still held, one released.
        assert await used(rep.stub, "gamma") == start + CHARGED + HELD
        assert ledger_ops(redis_url, "gamma").count("commit") == 1

        # Sent again whole (a retry after a lost answer): nothing more is charged.
        again = (await rep.stub.BatchCommitBudget(batch)).results
        assert again[0].response == results[0].response
        assert await used(rep.stub, "gamma") == start + CHARGED + HELD
        await rep.stub.CommitBudget(commit_req(names[2]))
        assert await used(rep.stub, "gamma") == start + 2 * CHARGED
        await reconcile(rep.stub, "gamma")


async def test_an_empty_or_oversized_batch_is_refused_naming_requests_and_commits_nothing(
    redis_url: str, plans_file: Path
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        name = (await rep.stub.ReserveBudget(reserve_req("twice"))).reservation.name
        before = await used(rep.stub, "twice")
        for count in (0, 1001):
            batch = budget_pb2.BatchCommitBudgetRequest(requests=[commit_req(name)] * count)
            err = await expect(grpc.StatusCode.INVALID_ARGUMENT, rep.stub.BatchCommitBudget(batch))
            assert [v.field for v in details(err)["BadRequest"].field_violations] == ["requests"]
            assert str(count) in (err.details() or "")
        assert await used(rep.stub, "twice") == before
        assert "commit" not in ledger_ops(redis_url, "twice")


async def test_the_gateways_commits_of_one_moment_go_in_one_call_each_answered_on_its_own(
    redis_url: str, plans_file: Path
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        calls = Calls()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{rep.port}", interceptors=[calls])
        client = BudgetClient(channel)
        try:
            holds = await reserved(client, "full", "b", 4)
            await client.release(holds[3], "router down")
            start = await used(rep.stub, "full")
            usage = Usage(input_tokens=8, output_tokens=6)
            results = await asyncio.gather(*(client.commit(hold, usage) for hold in holds), return_exceptions=True)
            assert calls.made["BatchCommitBudget"] == 1 and calls.made["CommitBudget"] == 0
            for result in results[:3]:
                assert isinstance(result, budget_pb2.CommitBudgetResponse), result
                assert result.delta_tokens == CHARGED - HELD
            assert isinstance(results[3], FailedPrecondition) and results[3].reason == "ALREADY_RELEASED"
            assert await used(rep.stub, "full") == start - 3 * (HELD - CHARGED)

            # A commit alone goes as itself, and a bad one raises its own typed error.
            with pytest.raises(NotFound):
                await client.commit("tenants/full/reservations/00000000000000000000000000000000", usage)
            with pytest.raises(InvalidArgument) as bad:
                await asyncio.gather(
                    client.commit(holds[0], Usage(input_tokens=8, output_tokens=6)),
                    client.commit(holds[1], Usage(input_tokens=-8, output_tokens=6)),
                )
            fields = [f for f, _ in bad.value.violations]
            assert "requests[1].input_tokens" in fields and all(f.startswith("requests[1].") for f in fields)
            assert calls.made["CommitBudget"] == 1 and calls.made["BatchCommitBudget"] == 2
            await reconcile(rep.stub, "full")
        finally:
            await channel.close()


async def test_a_caller_that_goes_away_still_has_its_commit_made(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{rep.port}")
        client = BudgetClient(channel)
        try:
            holds = await reserved(client, "stall", "gone", 2)
            start = await used(rep.stub, "stall")
            usage = Usage(input_tokens=8, output_tokens=6)
            gone = asyncio.ensure_future(client.commit(holds[0], usage))
            stays = asyncio.ensure_future(client.commit(holds[1], usage))
            await asyncio.sleep(0)  # both are waiting for the batch
            gone.cancel()
            assert (await stays).delta_tokens == CHARGED - HELD
            assert gone.cancelled()
            assert await used(rep.stub, "stall") == start - 2 * (HELD - CHARGED)
            await reconcile(rep.stub, "stall")
        finally:
            await channel.close()


class _WithoutBatches(BudgetServicer):
    """A budget service from before BatchCommitBudget: it answers UNIMPLEMENTED."""

    BatchCommitBudget = budget_pb2_grpc.BudgetServiceServicer.BatchCommitBudget  # type: ignore[assignment]


async def test_a_budget_service_without_batches_gets_one_commit_a_call(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        server = grpc.aio.server()
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(_WithoutBatches(rep.budget), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        calls = Calls()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[calls])
        client = BudgetClient(channel)
        try:
            holds = await reserved(client, "kilo", "old", 4)
            usage = Usage(input_tokens=8, output_tokens=6)
            first = await asyncio.gather(*(client.commit(hold, usage) for hold in holds[:2]))
            assert [r.reservation.state for r in first] == [budget_pb2.RESERVATION_STATE_COMMITTED] * 2
            assert calls.made["BatchCommitBudget"] == 1 and calls.made["CommitBudget"] == 2
            # Learned once: the next commits go one a call at once.
            await asyncio.gather(*(client.commit(hold, usage) for hold in holds[2:]))
            assert calls.made["BatchCommitBudget"] == 1 and calls.made["CommitBudget"] == 4
            await reconcile(rep.stub, "kilo")
        finally:
            await channel.close()
            await server.stop(None)


class _ShortAnswers(BudgetServicer):
    """A faulty budget service: it answers one result less than it was sent."""

    async def BatchCommitBudget(self, request: Any, context: Any) -> Any:
        answer = await super().BatchCommitBudget(request, context)
        del answer.results[-1]
        return answer


async def test_a_batch_answered_short_fails_every_caller_rather_than_mixing_answers(
    redis_url: str, plans_file: Path
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        server = grpc.aio.server()
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(_ShortAnswers(rep.budget), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        client = BudgetClient(channel)
        try:
            holds = await reserved(client, "delta", "short", 2)
            usage = Usage(input_tokens=8, output_tokens=6)
            results = await asyncio.gather(*(client.commit(hold, usage) for hold in holds), return_exceptions=True)
            assert all(isinstance(r, Internal) and "1 results to a batch of 2" in r.message for r in results)
        finally:
            await channel.close()
            await server.stop(None)
