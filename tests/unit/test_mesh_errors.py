from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from tollway.mesh import errors


def _details(status: grpc.Status) -> status_pb2.Status:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def test_invalid_argument_carries_error_info_and_field_violations() -> None:
    exc = errors.InvalidArgument("bad", [("messages", "at least one")], metadata={"n": 0})
    status = errors.to_status(exc, "gateway.tollway")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    rich = _details(status)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    rich.details[0].Unpack(info)
    rich.details[1].Unpack(bad)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INVALID_ARGUMENT", "gateway.tollway", {"n": "0"})
    assert [(v.field, v.description) for v in bad.field_violations] == [("messages", "at least one")]


def test_retryable_errors_carry_retry_info_and_a_retry_after_header() -> None:
    exc = errors.ResourceExhausted("slow down", retry_after_s=2.5, quota_violations=[("tenant:a", "tokens/min")])
    status = errors.to_status(exc, "budget.tollway")
    assert dict(status.trailing_metadata)["retry-after"] == "3"
    types = [d.type_url.rsplit(".", 1)[-1] for d in _details(status).details]
    assert types == ["ErrorInfo", "QuotaFailure", "RetryInfo"]


def test_every_code_number_matches_google_rpc() -> None:
    assert errors.code_number(grpc.StatusCode.UNAVAILABLE) == 14
    assert errors.code_number(grpc.StatusCode.INVALID_ARGUMENT) == 3


def test_an_error_sent_as_a_status_message_comes_back_as_the_same_typed_error() -> None:
    cases: list[errors.TollwayError] = [
        errors.ResourceExhausted(
            "slow down", retry_after_s=2.5, quota_violations=[("tenant:a", "tokens/min")], reason="BUDGET_EXHAUSTED"
        ),
        errors.InvalidArgument("bad", [("requests[2].input_tokens", "at least 0")], metadata={"n": 2}),
        errors.FailedPrecondition("released", reason="ALREADY_RELEASED"),
        errors.Unavailable("redis down", retry_after_s=1.0, reason="REDIS_UNAVAILABLE"),
        errors.NotFound("no such reservation"),
    ]
    for sent in cases:
        back = errors.from_status_proto(errors.status_proto(sent, "budget.tollway"))
        assert type(back) is type(sent)
        assert (back.message, back.reason, back.metadata) == (sent.message, sent.reason, sent.metadata)
        assert getattr(back, "violations", None) == getattr(sent, "violations", None)
        assert getattr(back, "quota_violations", None) == getattr(sent, "quota_violations", None)
        assert getattr(back, "retry_after_s", None) == getattr(sent, "retry_after_s", None)


def test_a_status_message_with_an_unknown_code_number_is_an_internal_error() -> None:
    back = errors.from_status_proto(status_pb2.Status(code=99, message="from the future"))
    assert isinstance(back, errors.Internal) and back.message == "from the future"
