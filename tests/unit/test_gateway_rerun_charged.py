"""A rerun of a request id the budget already charged (a job item retried after its first answer
was committed, issue 19): the budget answers its commit ALREADY_COMMITTED, and the gateway takes
that as settled, without queueing it or reporting a refused settlement."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.test_gateway_budgeting import USAGE, FakeClient, FakeStore, request
from tollway.common.chat import Usage
from tollway.gateway.budgeting import Budgeting, Settlement
from tollway.mesh.errors import FailedPrecondition


class ChargedClient(FakeClient):
    """The budget service for a request id committed before: every commit is refused."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    async def commit(self, hold: Any, usage: Usage, **kw: Any) -> None:
        self.calls.append(("commit", (getattr(hold, "name", hold), usage, kw)))
        raise FailedPrecondition("committed with other usage; nothing was changed", reason=self.reason)


async def test_a_rerun_of_a_charged_request_id_is_settled_quietly(caplog: pytest.LogCaptureFixture) -> None:
    store, client = FakeStore(), ChargedClient("ALREADY_COMMITTED")
    budget = Budgeting(client, store)  # type: ignore[arg-type]
    held = await budget.admit(request())
    with caplog.at_level(logging.INFO, logger="tollway"):
        await budget.settle(held, Settlement(USAGE), provider="fakeai")
    assert [c[0] for c in client.calls] == ["reserve", "commit"]
    assert store.outbox == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("charged by another attempt" in r.getMessage() for r in caplog.records)


async def test_another_refused_settlement_is_still_an_error(caplog: pytest.LogCaptureFixture) -> None:
    store, client = FakeStore(), ChargedClient("ALREADY_RELEASED")
    budget = Budgeting(client, store)  # type: ignore[arg-type]
    held = await budget.admit(request())
    with caplog.at_level(logging.INFO, logger="tollway"):
        await budget.settle(held, Settlement(USAGE))
    assert store.outbox == []
    assert [r.levelno for r in caplog.records if "refused a settlement" in r.getMessage()] == [logging.ERROR]
