"""The budget servicer's translation of quota states and reservations into messages."""

from __future__ import annotations

from tollway.budget.service import reservation_to_proto, status_to_proto
from tollway.budget.types import Priority, Quota, QuotaState, Reservation, Scope, State, Unit, Window
from tollway.budget.v1 import budget_pb2

_MINUTE = Quota(scope=Scope.TENANT, window=Window.MINUTE, unit=Unit.TOKENS, limit=1000, subject="")


def test_statuses_of_one_counter_each_carry_their_own_numbers() -> None:
    first = status_to_proto(QuotaState(_MINUTE, "acme", 10, 990, 1_765_000_060_000))
    second = status_to_proto(QuotaState(_MINUTE, "acme", 400, 600, 1_765_000_060_000))
    assert (first.used, first.remaining) == (10, 990)
    assert (second.used, second.remaining) == (400, 600)
    assert second.quota.unit == budget_pb2.QUOTA_UNIT_TOKENS
    assert second.quota.window == budget_pb2.WINDOW_MINUTE
    assert second.quota.limit == 1000
    assert second.subject == "acme"
    assert second.reset_time.ToMilliseconds() == 1_765_000_060_000


def test_a_new_minute_or_subject_changes_the_status() -> None:
    status_to_proto(QuotaState(_MINUTE, "acme", 10, 990, 1_765_000_060_000))
    later = status_to_proto(QuotaState(_MINUTE, "acme", 5, 995, 1_765_000_120_000))
    other = status_to_proto(QuotaState(_MINUTE, "beta", 5, 995, 1_765_000_120_000))
    assert later.reset_time.ToMilliseconds() == 1_765_000_120_000
    assert other.subject == "beta"


def test_a_conversation_quota_has_no_reset_time() -> None:
    q = Quota(scope=Scope.CONVERSATION, window=Window.CONVERSATION, unit=Unit.TOKENS, limit=50, subject="")
    status = status_to_proto(QuotaState(q, "c1", 3, 47, 0))
    assert not status.HasField("reset_time")
    assert status.quota.scope == budget_pb2.QUOTA_SCOPE_CONVERSATION


def test_a_reservation_message_carries_every_field() -> None:
    r = Reservation(
        tenant="acme",
        id="a" * 32,
        state=State.RESERVED,
        model="gpt-4o-mini",
        api_key_id="",
        feature="search",
        conversation_id="",
        priority=Priority.BATCH,
        request_id="req-1",
        input_tokens=13,
        granted_output_tokens=64,
        tokens=77,
        cost_usd_nanos=12_345,
        pricing_version="v3",
        created_ms=1_765_000_000_250,
        expires_ms=1_765_000_300_250,
        attempt=2,
    )
    out = reservation_to_proto(r)
    assert out.name == f"tenants/acme/reservations/{'a' * 32}"
    assert out.state == budget_pb2.RESERVATION_STATE_RESERVED
    assert (out.tenant_id, out.api_key_id, out.feature, out.model) == ("acme", "", "search", "gpt-4o-mini")
    assert out.priority == budget_pb2.PRIORITY_BATCH
    assert (out.request_id, out.input_tokens, out.granted_output_tokens) == ("req-1", 13, 64)
    assert (out.tokens, out.cost_usd_nanos, out.pricing_version, out.attempt) == (77, 12_345, "v3", 2)
    assert out.create_time.ToMilliseconds() == 1_765_000_000_250
    assert out.expire_time.ToMilliseconds() == 1_765_000_300_250
