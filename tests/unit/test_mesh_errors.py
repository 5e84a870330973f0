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
