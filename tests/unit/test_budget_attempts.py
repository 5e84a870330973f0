"""Attempts of one request id, without servers: the gateway's settlements name the attempt
they were made for (through the outbox too), and the budget reads reservations in both record
layouts (metadata packed in one field, or one field each as before)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tollway.budget.budget import reservation_from_record
from tollway.budget.store import _with_meta, join_meta, pack_counters, pack_meta
from tollway.budget.types import Priority, State
from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatMessage, ChatRequest, Usage
from tollway.gateway.budget_client import BudgetHold, _attempt
from tollway.gateway.budgeting import Admission, Budgeting, Settlement
from tollway.gateway.request import GatewayRequest
from tollway.mesh.errors import FailedPrecondition, Unavailable

NAME = f"tenants/acme/reservations/{'a' * 32}"


class Outbox:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, str]]] = []

    async def add_budget_pending(self, fields: dict[str, str]) -> None:
        self.entries.append((str(len(self.entries)), dict(fields)))

    async def budget_pending(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        return self.entries[:count]

    async def remove_budget_pending(self, ids: list[str]) -> None:
        self.entries = [e for e in self.entries if e[0] not in ids]


class Service:
    """Answers settlements as the budget service does for a request id whose attempt ``holder``
    holds the reservation: another nonzero attempt is refused STALE_ATTEMPT."""

    def __init__(self, holder: int) -> None:
        self.holder = holder
        self.down = False
        self.settled: list[tuple[str, int]] = []

    def _settle(self, op: str, attempt: int | None, hold: Any) -> None:
        if self.down:
            raise Unavailable("budget down")
        asked = _attempt(hold, attempt)
        if asked and asked != self.holder:
            raise FailedPrecondition("attempt over", reason="STALE_ATTEMPT")
        self.settled.append((op, asked))

    async def commit(self, hold: Any, usage: Usage, *, attempt: int | None = None, **_: Any) -> None:
        self._settle("commit", attempt, hold)

    async def release(self, hold: Any, reason: str, *, attempt: int | None = None) -> None:
        self._settle("release", attempt, hold)


def admission(attempt: int) -> Admission:
    chat = ChatRequest("m", (ChatMessage("user", "hi"),), max_tokens=16, request_id="job-7", tenant="acme")
    hold = BudgetHold(NAME, 16, 5, 21, 100, "p", attempt=attempt)
    return Admission(GatewayRequest(chat, "", "f", CachePolicy()), hold, 5, 16)


def test_a_settlement_names_the_holds_attempt_and_a_bare_name_names_none() -> None:
    hold = BudgetHold(NAME, 16, 5, 21, 100, "p", attempt=3)
    assert _attempt(hold, None) == 3
    assert _attempt(hold, 1) == 1
    assert _attempt(NAME, None) == 0  # whichever attempt holds it: what callers without attempts did


async def test_a_queued_release_of_an_earlier_attempt_is_dropped_once_a_later_attempt_holds_the_id() -> None:
    service, outbox = Service(holder=1), Outbox()
    budgeting = Budgeting(service, outbox)  # type: ignore[arg-type]
    service.down = True
    await budgeting.settle(admission(1), Settlement(None, reason="router down"))
    [(_, entry)] = outbox.entries
    assert (entry["op"], entry["attempt"]) == ("release", "1")

    # Meanwhile attempt 1 expired and a retry of the request id holds attempt 2.
    service.down, service.holder = False, 2
    assert await budgeting.drain() == 1
    assert outbox.entries == []  # dropped, not retried: nothing of attempt 1 is held any more
    assert service.settled == []  # and attempt 2's hold was not touched


async def test_a_queued_commit_replays_with_its_attempt_and_a_stale_one_is_dropped() -> None:
    service, outbox = Service(holder=2), Outbox()
    budgeting = Budgeting(service, outbox)  # type: ignore[arg-type]
    service.down = True
    await budgeting.settle(admission(2), Settlement(Usage(5, 3)))
    await budgeting.settle(admission(1), Settlement(Usage(5, 4)))
    assert [e["attempt"] for _, e in outbox.entries] == ["2", "1"]
    service.down = False
    assert await budgeting.drain() == 2
    assert service.settled == [("commit", 2)]
    assert outbox.entries == []


async def test_an_outbox_entry_queued_before_attempts_settles_whichever_attempt_holds_the_id() -> None:
    service, outbox = Service(holder=2), Outbox()
    await outbox.add_budget_pending({"op": "release", "name": NAME, "reason": "x", "partial": "0"})
    assert await Budgeting(service, outbox).drain() == 1  # type: ignore[arg-type]
    assert service.settled == [("release", 0)]


def test_reservations_read_the_same_from_packed_metadata_and_from_the_older_layout() -> None:
    meta = {"tenant": "acme", "key": "k1", "feat": "chat", "conv": "", "prio": "batch", "rid": "job-7"}
    model = {"model": "gpt-4o-mini", "pv": "p-1", "in": "8"}
    held = {"st": "reserved", "gout": "16", "tok": "24", "usd": "10800", "c_ms": "5", "e_ms": "9"}
    packed = _with_meta({**held, "att": "2", "m": join_meta(pack_meta(meta), pack_meta(model))})
    older = {**held, **meta, **model}  # no attempt recorded: the first
    new, old = (reservation_from_record("acme", "a" * 32, r) for r in (packed, older))
    assert (new.attempt, old.attempt) == (2, 1)
    assert new == old.__class__(**{**old.__dict__, "attempt": 2})
    assert (new.state, new.priority, new.model, new.input_tokens, new.tokens) == (
        State.RESERVED,
        Priority.BATCH,
        "gpt-4o-mini",
        8,
        24,
    )


def test_packed_arguments_are_json_of_strings() -> None:
    assert json.loads(pack_counters([("t|tok|day|0|86400", 2**52)])) == ["t|tok|day|0|86400", str(2**52)]
    assert json.loads(pack_counters([])) == []
    assert json.loads(join_meta(pack_meta({"a": "1"}), pack_meta({}), pack_meta({"b": 'x"y'}))) == {
        "a": "1",
        "b": 'x"y',
    }


async def test_a_settlement_refused_as_stale_is_not_queued_and_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    service, outbox = Service(holder=2), Outbox()
    with caplog.at_level(logging.INFO, logger="tollway.gateway.budget"):
        await Budgeting(service, outbox).settle(admission(1), Settlement(Usage(5, 3)))  # type: ignore[arg-type]
    assert outbox.entries == [] and service.settled == []
    [record] = [r for r in caplog.records if "another attempt" in r.getMessage()]
    assert record.levelno == logging.INFO  # by design, not an error: the id is charged once
