"""The gateway's budget rules without gRPC: how a call is settled, the outage policy, the outbox."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatMessage, ChatRequest, Usage
from tollway.common.tokens import count_tokens
from tollway.gateway.budget_client import BudgetClient, BudgetHold
from tollway.gateway.budgeting import Admission, Budgeting, Settlement, settlement
from tollway.gateway.request import GatewayRequest, check_budget_fields
from tollway.mesh.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from tollway.mesh.inprocess import InProcessChannel

USAGE = Usage(input_tokens=12, output_tokens=7)


def settle(**kw: Any) -> Settlement:
    args: dict[str, Any] = {
        "completed": False,
        "failed": False,
        "routed": True,
        "usage": Usage(),
        "produced_text": "",
        "input_tokens": 10,
        "reason": "",
    }
    return settlement(**(args | kw))


def test_a_complete_answer_commits_the_reported_usage() -> None:
    assert settle(completed=True, usage=USAGE, produced_text="anything") == Settlement(USAGE)


def test_a_stream_cut_after_output_commits_the_partial_usage() -> None:
    out = settle(failed=True, usage=Usage(12, 3), produced_text="one two three four five")
    assert out.partial and out.usage == Usage(12, max(3, count_tokens("one two three four five")))


def test_a_failure_before_any_output_releases() -> None:
    assert settle(failed=True, reason="provider_stream_cut") == Settlement(None, reason="provider_stream_cut")
    assert settle(routed=False, reason="provider_unavailable").usage is None


def test_a_client_gone_after_the_provider_took_the_request_commits_the_counted_input_and_output() -> None:
    out = settle(produced_text="w0 w1 w2 ", input_tokens=21)
    assert out == Settlement(Usage(21, count_tokens("w0 w1 w2 ")), partial=True)
    assert settle(routed=False).usage is None  # gone before the router started: nothing used


def test_budget_fields_are_checked_with_the_field_named() -> None:
    check_budget_fields("batch", "conv-1")
    with pytest.raises(InvalidArgument) as bad:
        check_budget_fields("urgent", "a/b")
    assert [f for f, _ in bad.value.violations] == ["priority", "conversation_id"]


# --- Budgeting over fakes -------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.outbox: list[tuple[str, dict[str, str]]] = []
        self.policies: dict[str, bool] = {}

    async def add_budget_pending(self, fields: dict[str, str]) -> None:
        self.outbox.append((str(len(self.outbox)), dict(fields)))

    async def budget_pending(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        return self.outbox[:count]

    async def remove_budget_pending(self, ids: list[str]) -> None:
        self.outbox = [e for e in self.outbox if e[0] not in ids]

    async def set_budget_policy(self, tenant: str, admit: bool) -> None:
        self.policies[tenant] = admit

    async def budget_policy(self, tenant: str) -> bool | None:
        return self.policies.get(tenant)


class FakeClient:
    """Answers like the budget service; ``down`` makes every call UNAVAILABLE."""

    def __init__(self, admit_when_unavailable: bool | None = True) -> None:
        self.down = False
        self.admit = admit_when_unavailable
        self.calls: list[tuple[str, Any]] = []

    def estimate(self, request: ChatRequest, counted: int | None = None) -> tuple[int, int]:
        return 5 if counted is None else counted, request.max_tokens or 256

    def _check(self) -> None:
        if self.down:
            raise Unavailable("budget down")

    async def reserve_counted(self, **kw: Any) -> BudgetHold:
        self._check()
        self.calls.append(("reserve", kw))
        return BudgetHold(
            f"tenants/{kw['tenant']}/reservations/{'0' * 32}",
            kw["max_output_tokens"],
            kw["input_tokens"],
            0,
            0,
            "p",
            admit_when_unavailable=self.admit,
        )

    async def commit(self, hold: Any, usage: Usage, **kw: Any) -> None:
        self._check()
        self.calls.append(("commit", (getattr(hold, "name", hold), usage, kw)))

    async def release(self, hold: Any, reason: str) -> None:
        self._check()
        self.calls.append(("release", (getattr(hold, "name", hold), reason)))


def request(tenant: str = "acme") -> GatewayRequest:
    chat = ChatRequest("m", (ChatMessage("user", "hi"),), max_tokens=16, request_id="r1", tenant=tenant)
    return GatewayRequest(chat, "", "f", CachePolicy(), api_key_id="k1", priority="batch", conversation_id="c1")


async def test_the_reserve_carries_the_key_feature_priority_and_conversation() -> None:
    client = FakeClient()
    budget = Budgeting(client, FakeStore())  # type: ignore[arg-type]
    admission = await budget.admit(request())
    kw = client.calls[0][1]
    assert (kw["api_key_id"], kw["feature"], kw["priority"], kw["conversation_id"]) == ("k1", "f", "batch", "c1")
    assert admission.hold is not None and admission.max_tokens == 16


async def test_a_prompt_counted_by_the_caller_is_reserved_as_counted() -> None:
    client = FakeClient()
    budget = Budgeting(client, FakeStore())  # type: ignore[arg-type]
    admission = await budget.admit(request(), counted=41)
    assert client.calls[0][1]["input_tokens"] == 41 and admission.input_tokens == 41


def test_the_estimate_counts_the_prompt_only_when_the_caller_has_not() -> None:
    counted: list[ChatRequest] = []

    def counter(chat: ChatRequest) -> int:
        counted.append(chat)
        return 9

    client = BudgetClient(InProcessChannel("budget"), count_prompt_tokens=counter, default_max_tokens=64)
    chat = request().chat
    assert client.estimate(chat) == (9, 16) and counted == [chat]
    assert client.estimate(chat, 120) == (120, 16) and counted == [chat]  # not counted again
    assert client.estimate(chat, 0) == (1, 16)  # an empty prompt still holds one token
    assert client.estimate(dataclasses.replace(chat, max_tokens=0), 3) == (3, 64)


async def test_while_the_budget_is_down_a_tenant_is_refused_unless_its_policy_admits() -> None:
    store, client = FakeStore(), FakeClient(admit_when_unavailable=True)
    budget = Budgeting(client, store)  # type: ignore[arg-type]
    client.down = True
    with pytest.raises(Unavailable) as refused:  # never heard of acme: fail closed
        await budget.admit(request())
    assert refused.value.reason == "BUDGET_UNAVAILABLE"
    client.down = False
    await budget.admit(request())  # learns acme's policy (admit), remembered in the store too
    assert store.policies == {"acme": True}
    client.down = True
    assert (await budget.admit(request())).hold is None
    # Another replica that never reserved for acme reads the policy from Redis.
    other = Budgeting(client, store)  # type: ignore[arg-type]
    assert (await other.admit(request())).hold is None
    strict = FakeClient(admit_when_unavailable=False)
    closed = Budgeting(strict, FakeStore(), admit_when_unknown=True)  # type: ignore[arg-type]
    await closed.admit(request("bank"))
    strict.down = True
    with pytest.raises(Unavailable):
        await closed.admit(request("bank"))


async def test_settlements_the_service_cannot_take_wait_in_the_outbox_and_drain_once_it_is_back() -> None:
    store, client = FakeStore(), FakeClient()
    budget = Budgeting(client, store)  # type: ignore[arg-type]
    held = await budget.admit(request())
    client.down = True
    await budget.settle(held, Settlement(USAGE), provider="fakeai")
    unheld = Admission(request(), None, 5, 16)  # admitted while the service was down
    await budget.settle(unheld, Settlement(Usage(5, 2), partial=True))
    assert [e["op"] for _, e in store.outbox] == ["commit", "charge"]
    assert await budget.drain() == 0 and len(store.outbox) == 2  # still down: nothing lost
    client.down = False
    client.calls.clear()
    assert await budget.drain() == 2 and store.outbox == []
    ops = [c[0] for c in client.calls]
    assert ops == ["commit", "reserve", "commit"]
    assert client.calls[0][1][1] == USAGE
    assert client.calls[1][1]["admitted_while_unavailable"] is True
    assert client.calls[2][1][1] == Usage(5, 2) and client.calls[2][1][2]["partial"] is True


async def test_an_entry_the_service_refuses_for_good_is_dropped_not_retried_forever() -> None:
    store, client = FakeStore(), FakeClient()

    async def refuse(*a: Any, **kw: Any) -> None:
        raise FailedPrecondition("released")

    client.commit = refuse  # type: ignore[method-assign]
    await store.add_budget_pending({"op": "commit", "name": "n", "in": "1", "out": "1", "cached": "0"})
    assert await Budgeting(client, store).drain() == 1 and store.outbox == []  # type: ignore[arg-type]


async def test_a_refusal_is_raised_unchanged() -> None:
    client = FakeClient()

    async def refused(**kw: Any) -> BudgetHold:
        raise ResourceExhausted("no room", retry_after_s=3)

    client.reserve_counted = refused  # type: ignore[method-assign]
    with pytest.raises(ResourceExhausted):
        await Budgeting(client, FakeStore()).admit(request())  # type: ignore[arg-type]
