"""`tollway budget reconcile` can fail: a counter that no longer equals the sum of its ledger
entries (here changed behind the budget's back, as a bug or a hand edit would) is found,
named with both values, printed by the CLI with a non-zero exit, and the proof holds again
once the counter is back. Through the stack's budget service on real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.support.polling import eventually
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cli import main
from tollway.launcher.stack import Stack
from tollway.mesh import clients

TENANT = "drifted-co"


async def test_a_counter_that_drifts_from_the_ledger_is_found_and_printed(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    async with clients.channel(stack.address("budget")) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        await stub.SetBudget(
            budget_pb2.SetBudgetRequest(
                tenant_id=TENANT,
                plan="free",
                clear_overrides=True,
                quotas=[
                    budget_pb2.Quota(
                        scope=budget_pb2.QUOTA_SCOPE_TENANT,
                        window=budget_pb2.WINDOW_DAY,
                        unit=budget_pb2.QUOTA_UNIT_TOKENS,
                        limit=100_000,
                    )
                ],
            )
        )
        held = await stub.ReserveBudget(
            budget_pb2.ReserveBudgetRequest(
                tenant_id=TENANT,
                model="fake-ok",
                input_tokens=10,
                max_output_tokens=20,
                priority=budget_pb2.PRIORITY_INTERACTIVE,
            )
        )
        await stub.CommitBudget(
            budget_pb2.CommitBudgetRequest(name=held.reservation.name, input_tokens=10, output_tokens=5)
        )
        clean = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=TENANT))
        assert clean.balanced and not clean.differences

        client = redis.Redis.from_url(stack.redis_url)
        counters = f"tw:budget:{{{TENANT}}}:ctr"
        try:
            [tokens] = [f.decode() for f in client.hkeys(counters) if b"|tok|day|" in f]
            # The co-located budget admitted it from a lease, whose block goes back once idle:
            # then the counter holds exactly what was charged.
            await eventually(lambda: int(client.hget(counters, tokens)) == 15, what="the lease given back")
            client.hincrby(counters, tokens, 7)  # 7 tokens no ledger entry explains

            drifted = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=TENANT))
            assert not drifted.balanced
            [diff] = drifted.differences
            assert (diff.tenant_id, diff.counter, diff.counter_value, diff.ledger_sum) == (TENANT, tokens, 22, 15)

            target = ["--target", stack.address("budget")]
            # The CLI runs its own event loop: in a thread, as from a shell.
            assert await asyncio.to_thread(main, ["budget", "reconcile", *target, "--tenant", TENANT]) == 1
            out = capsys.readouterr().out
            assert f"DIFFERENCE {TENANT} {tokens}: counter 22, ledger 15" in out
            assert "1 difference(s)" in out
        finally:
            client.hincrby(counters, tokens, -7)
            client.close()
        again = ["budget", "reconcile", "--target", stack.address("budget"), "--tenant", TENANT]
        assert await asyncio.to_thread(main, again) == 0
        assert capsys.readouterr().out.startswith("balanced:")
