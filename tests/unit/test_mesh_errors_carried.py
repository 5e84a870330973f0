"""A callee's error re-raised across the mesh keeps what the client needs to act on: which quota
(QuotaFailure), which field (BadRequest), which precondition (PreconditionFailure)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from tollway.mesh import errors


def _as_rpc_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    """The error a caller's stub raises for ``status`` (what the callee's servicer aborted with)."""
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )


def _relayed(exc: errors.TollwayError, callee: str = "router.tollway") -> status_pb2.Status:
    """``exc`` raised by a callee, rebuilt by its caller and raised again to the client."""
    again = errors.from_rpc_error(_as_rpc_error(errors.to_status(exc, callee)))
    out = errors.to_status(again, "gateway.tollway")
    return status_pb2.Status.FromString(dict(out.trailing_metadata)["grpc-status-details-bin"])


def _unpacked(status: status_pb2.Status, cls: type[Message]) -> list[Message]:
    found = []
    for d in status.details:
        if d.Is(cls.DESCRIPTOR):
            msg = cls()
            d.Unpack(msg)
            found.append(msg)
    return found


def test_a_deployment_limit_keeps_its_quota_failure_and_retry_info() -> None:
    limit = ("deployment fakeai/lim-one/default", "its limit of 2 requests per minute is reached")
    exc = errors.ResourceExhausted("no deployment free", retry_after_s=30, quota_violations=[limit])
    again = errors.from_rpc_error(_as_rpc_error(errors.to_status(exc, "router.tollway")))
    assert isinstance(again, errors.ResourceExhausted)
    assert again.quota_violations == [limit]
    assert again.retry_after_s == 30
    status = _relayed(exc)
    (qf,) = _unpacked(status, error_details_pb2.QuotaFailure)  # once, not twice
    assert [(v.subject, v.description) for v in qf.violations] == [limit]
    assert len(_unpacked(status, error_details_pb2.RetryInfo)) == 1
    assert len(_unpacked(status, error_details_pb2.ErrorInfo)) == 1


def test_field_violations_survive_once() -> None:
    exc = errors.InvalidArgument("bad", [("messages", "at least one")], reason="EMPTY")
    status = _relayed(exc)
    (br,) = _unpacked(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in br.field_violations] == [("messages", "at least one")]
    (info,) = _unpacked(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("EMPTY", "gateway.tollway")


def test_a_precondition_failure_is_carried_as_it_came() -> None:
    pf = error_details_pb2.PreconditionFailure(
        violations=[error_details_pb2.PreconditionFailure.Violation(type="STATE", subject="jobs/1", description="done")]
    )
    exc = errors.FailedPrecondition("already done", reason="DONE")
    packed = any_pb2.Any()
    packed.Pack(pf)
    exc.carried_details = [packed]
    status = _relayed(exc, "jobs.tollway")
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert _unpacked(status, error_details_pb2.PreconditionFailure) == [pf]


def test_a_quota_failure_on_another_code_is_carried() -> None:
    qf = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(subject="s", description="d")]
    )
    packed = any_pb2.Any()
    packed.Pack(qf)
    exc = errors.Unavailable("every deployment at its limit or down", retry_after_s=1)
    exc.carried_details = [packed]
    again = errors.from_rpc_error(_as_rpc_error(errors.to_status(exc, "router.tollway")))
    assert isinstance(again, errors.Unavailable)
    assert _unpacked(_relayed(again), error_details_pb2.QuotaFailure) == [qf]


def test_an_error_without_details_carries_nothing() -> None:
    err = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "no such thing")
    again = errors.from_rpc_error(err)
    assert isinstance(again, errors.NotFound)
    assert again.carried_details == []
