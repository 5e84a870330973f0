"""The jobs service's view of GatewayService: who a key is, and running a job as that key."""

from __future__ import annotations

import grpc

from tollway.common import delegation
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.jobs.types import Job, Owner
from tollway.jobs.worker import RunFailure
from tollway.mesh.errors import code_number, from_rpc_error

SERVICE_NAME = "tollway.gateway.v1.GatewayService"


def request_id(job_id: str) -> str:
    """The gateway request id of a job (a name's '/' is not allowed there): the same on every run,
    so the budget charges the job once."""
    return f"job-{job_id}"


def complete_request(job: Job) -> gateway_pb2.CompleteRequest:
    """The gateway call of a job: its GenerateRequest as a CompleteRequest (the two share field
    names and numbers, checked by a unit test), with :func:`request_id` as its request id and the job's
    priority."""
    req = gateway_pb2.CompleteRequest.FromString(job.request)
    req.request_id = request_id(job.id)
    req.priority = job.priority  # type: ignore[assignment]
    return req


class GatewayClient:
    """Calls the gateway over the mesh (its port, or Envoy's mesh listener)."""

    def __init__(self, channel: grpc.aio.Channel, secret: bytes, timeout_s: float) -> None:
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.secret = secret
        self.timeout_s = timeout_s

    async def caller(self, api_key: str) -> Owner:
        """The tenant and key id of ``api_key``.

        Raises:
            TollwayError: The gateway's answer, typed again (UNAUTHENTICATED for a bad key,
                UNAVAILABLE when the gateway cannot be reached).
        """
        try:
            reply = await self.stub.GetCaller(
                gateway_pb2.GetCallerRequest(), metadata=(("authorization", f"Bearer {api_key}"),), timeout=5.0
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return Owner(reply.tenant, reply.key_id, "", reply.default_priority)

    async def run(self, job: Job) -> bytes:
        """Runs ``job`` through the gateway's whole lifecycle as the key that submitted it.

        Returns:
            The serialised CompleteResponse.

        Raises:
            RunFailure: The gateway's status (code, message, ErrorInfo reason).
        """
        token = delegation.mint(self.secret, job.owner.tenant, job.owner.key_id, job.owner.key_sha256, f"jobs/{job.id}")
        try:
            reply = await self.stub.Complete(
                complete_request(job), metadata=(("authorization", f"Bearer {token}"),), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            typed = from_rpc_error(err)
            raise RunFailure(code_number(err.code()), typed.message, typed.reason) from None
        return reply.SerializeToString()
