"""The budget service as the launcher starts it in the integration stack, used through the
gateway's budget client (the calls the gateway lifecycle will make)."""

from __future__ import annotations

import grpc
import pytest

from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.common.chat import ChatMessage, ChatRequest, Usage
from tollway.gateway.budget_client import SERVICE_NAME, BudgetClient, rate_limit_headers, refusal_headers
from tollway.launcher.stack import Stack
from tollway.mesh import clients
from tollway.mesh.errors import FailedPrecondition, ResourceExhausted


def chat(request_id: str, max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(
        model="fake-ok",
        messages=(ChatMessage("user", "Say hello in one short sentence."),),
        max_tokens=max_tokens,
        request_id=request_id,
    )


async def test_reserve_commit_and_refusal_through_the_stacks_budget_service(stack: Stack) -> None:
    async with clients.channel(stack.address("budget"), idempotent_services=[SERVICE_NAME]) as channel:
        admin = budget_pb2_grpc.BudgetServiceStub(channel)
        per_request = 13 + 16  # the prompt as counted (o200k_base, chat framing) + max_tokens
        await admin.SetBudget(
            budget_pb2.SetBudgetRequest(
                tenant_id="stackco",
                plan="free",
                clear_overrides=True,
                quotas=[
                    budget_pb2.Quota(
                        scope=budget_pb2.QUOTA_SCOPE_TENANT,
                        window=budget_pb2.WINDOW_MINUTE,
                        unit=budget_pb2.QUOTA_UNIT_TOKENS,
                        limit=2 * per_request,
                    )
                ],
            )
        )
        client = BudgetClient(channel)
        hold = await client.reserve(chat("r1"), tenant="stackco", api_key_id="k1", priority="interactive")
        assert hold.input_tokens == 13 and hold.tokens == per_request and hold.max_output_tokens == 16
        again = await client.reserve(chat("r1"), tenant="stackco", api_key_id="k1", priority="interactive")
        assert again.name == hold.name  # the request id makes a retried reserve harmless
        headers = rate_limit_headers(hold)
        assert headers["x-ratelimit-limit-tokens"] == str(2 * per_request)
        assert headers["x-ratelimit-remaining-tokens"] == str(per_request)
        second = await client.reserve(chat("r2"), tenant="stackco", priority="interactive")
        with pytest.raises(ResourceExhausted) as refused:
            await client.reserve(chat("r3"), tenant="stackco", priority="interactive")
        h = refusal_headers(refused.value.metadata, refused.value.retry_after_s)
        assert h["x-ratelimit-remaining-tokens"] == "0" and int(h["retry-after"]) <= 60
        done = await client.commit(hold, Usage(input_tokens=8, output_tokens=6), provider="fakeai")
        assert done.delta_tokens == 14 - per_request
        await client.commit(hold, Usage(input_tokens=8, output_tokens=6), provider="fakeai")  # idempotent
        await client.release(second, "provider_error")
        await client.release(second, "provider_error")  # idempotent
        with pytest.raises(FailedPrecondition):
            await client.release(hold, "too late")
        result = await admin.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id="stackco"))
        assert result.balanced and result.open_reservation_count == 0
        with pytest.raises(grpc.aio.AioRpcError):
            await admin.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="bad|tenant"))


def test_cli_budget_set_show_usage_and_reconcile(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    from tollway.cli import main

    target = ["--target", stack.address("budget")]
    assert main(["budget", "set", *target, "--tenant", "cli-co", "--plan", "free", "--quota", "day:tokens=5000"]) == 0
    assert "tenant cli-co: plan free (overridden)" in capsys.readouterr().out
    assert main(["budget", "show", *target, "--tenant", "cli-co"]) == 0
    shown = capsys.readouterr().out
    assert "limit 5,000" in shown and "used 0" in shown
    assert main(["budget", "set", *target, "--tenant", "cli-co", "--quota", "day:parsecs=5"]) == 2
    assert "is not a quota" in capsys.readouterr().err
    assert main(["usage", *target, "--tenant", "cli-co", "--by", "model", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("date,model,requests")
    assert main(["budget", "reconcile", *target]) == 0
    assert capsys.readouterr().out.startswith("balanced:")
    assert main(["budget", "show", *target, "--tenant", "no|body"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
