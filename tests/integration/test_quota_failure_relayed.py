"""A router refusal for a per-deployment rate limit reaches the gateway's gRPC client with its
QuotaFailure (which limit) and RetryInfo, not only its ErrorInfo: the gateway re-raises the
router's error and must pass those details on (mesh.errors.from_rpc_error).

The whole path on real processes: the gateway with its budget, the router, real Redis and the
wire-exact fake provider (the only stand-in: a hosted LLM)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.jobs import auth
from tests.support.small_stack import roomy_stack
from tollway.cli import _create_key
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(120)

TENANT = "relay-co"


@pytest.fixture(scope="module")
def one_rpm_stack(fake_openai: str) -> Iterator[Stack]:
    models = "  one-rpm: {provider: fakeai, upstream_model: fake-ok, limits: {rpm: 1}}\n"
    services = ("gateway", "router", "budget")
    with roomy_stack("quota-relay-", models, fake_openai, TENANT, services=services, tokens=1_000_000) as stack:
        yield stack


def _complete() -> gateway_pb2.CompleteRequest:
    return gateway_pb2.CompleteRequest(
        model="one-rpm", messages=[common_pb2.Message(role="user", content="hi")], max_tokens=16
    )


async def test_a_deployment_limit_refusal_carries_quota_failure_through_the_gateway(one_rpm_stack: Stack) -> None:
    key, _ = await _create_key(one_rpm_stack.redis_url, TENANT)
    async with grpc.aio.insecure_channel(one_rpm_stack.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        await stub.Complete(_complete(), metadata=auth(key))  # the minute's one request
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(_complete(), metadata=auth(key))
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    status = rpc_status.from_call(err)
    assert status is not None
    found: dict[str, list[object]] = {}
    for d in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                found.setdefault(cls.__name__, []).append(msg)
    assert len(found.get("QuotaFailure", [])) == 1, status.details
    (qf,) = found["QuotaFailure"]
    assert isinstance(qf, error_details_pb2.QuotaFailure)
    subjects = [v.subject for v in qf.violations]
    assert subjects == ["deployment:fakeai/one-rpm/default"], qf
    assert (
        "1 requests per minute" in qf.violations[0].description
        or "1 request per minute" in qf.violations[0].description
    )
    assert len(found.get("RetryInfo", [])) == 1
