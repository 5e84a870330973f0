"""gRPC <-> domain translation for tollway.jobs.v1. No job logic lives here."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, json_format, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tollway.gateway.v1 import gateway_pb2
from tollway.jobs import jobs as jobs_domain
from tollway.jobs.auth import Callers
from tollway.jobs.jobs import Jobs, parse_name
from tollway.jobs.types import Batch, Job, NewJob, Owner, State, StoredFile
from tollway.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from tollway.mesh.errors import InvalidArgument, rpc_errors

DOMAIN = "jobs.tollway"
SERVICE_NAME = "tollway.jobs.v1.JobsService"

_STATE_TO_PROTO = {
    State.QUEUED: jobs_pb2.JOB_STATE_QUEUED,
    State.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    State.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    State.FAILED: jobs_pb2.JOB_STATE_FAILED,
    State.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}


def _ts(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


def job_to_proto(j: Job) -> jobs_pb2.Job:
    meta = jobs_pb2.JobMetadata(
        state=_STATE_TO_PROTO[j.state],  # type: ignore[arg-type]
        create_time=_ts(j.created_ms),
        start_time=_ts(j.started_ms),
        end_time=_ts(j.ended_ms),
        attempt_count=j.attempts,
        model=j.model,
        priority=j.priority,  # type: ignore[arg-type]
        batch=f"jobbatches/{j.batch_id}" if j.batch_id else "",
        batch_index=j.batch_index,
        custom_id=j.custom_id,
        webhook_url=j.webhook_url,
        webhook_state=j.webhook_state,
        expire_time=_ts(j.expire_ms),
        webhook_deliveries=[
            jobs_pb2.WebhookDelivery(attempt_time=_ts(d.attempt_ms), http_status=d.http_status, error=d.error)
            for d in j.deliveries
        ],
    )
    out = jobs_pb2.Job(name=f"jobs/{j.id}", metadata=meta, done=j.state.done)
    if j.state == State.SUCCEEDED:
        out.response.ParseFromString(j.response)
    elif j.state.done and j.error is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=j.error.reason, domain=DOMAIN, metadata={"job": f"jobs/{j.id}"}))
        out.error.CopyFrom(status_pb2.Status(code=j.error.code, message=j.error.message, details=[detail]))
    return out


def job_json(j: Job) -> bytes:
    """A finished job as a webhook body: the Job message in proto JSON."""
    return json_format.MessageToJson(job_to_proto(j), indent=None).encode()


def batch_to_proto(b: Batch) -> jobs_pb2.Batch:
    return jobs_pb2.Batch(
        name=f"jobbatches/{b.id}",
        done=b.done,
        total_count=b.total,
        succeeded_count=b.succeeded,
        failed_count=b.failed,
        cancelled_count=b.cancelled,
        create_time=_ts(b.created_ms),
        end_time=_ts(b.ended_ms),
        cancel_requested=b.cancel_requested,
        input_file=f"files/{b.input_file}" if b.input_file else "",
        labels=b.labels,
        expire_time=_ts(b.expire_ms),
    )


def file_to_proto(f: StoredFile) -> jobs_pb2.File:
    return jobs_pb2.File(
        name=f"files/{f.id}",
        filename=f.filename,
        purpose=f.purpose,
        size_bytes=f.size_bytes,
        create_time=_ts(f.created_ms),
        content=f.content,
    )


def _page_in(token: str, collection: str) -> str:
    """A page token as the domain takes it: the resource id, from ``<collection>/<id>`` (or "")."""
    return parse_name(token, collection, "page_token") if token else ""


def _page_out(next_id: str, collection: str) -> str:
    """The domain's next page (an id, or "") as the resource name clients pass back."""
    return f"{collection}/{next_id}" if next_id else ""


def _new_job(req: gateway_pb2.GenerateRequest, *priorities: int, custom_id: str = "") -> NewJob:
    priority = jobs_domain.resolve_priority(*priorities, req.priority)
    return NewJob(
        request=req.SerializeToString(),
        model=req.model,
        priority=priority,
        custom_id=custom_id,
        lane=jobs_domain.lane_of(priority),
        message_count=len(req.messages),
        has_prompt_ref=req.HasField("prompt_ref"),
    )


class JobsServicer(jobs_pb2_grpc.JobsServiceServicer):
    def __init__(self, jobs: Jobs, callers: Callers) -> None:
        self.jobs = jobs
        self.callers = callers

    async def _owner(self, context: grpc.aio.ServicerContext) -> Owner:
        return await self.callers.authenticate(context.invocation_metadata() or ())

    @rpc_errors(DOMAIN)
    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        owner = await self._owner(context)
        if not request.HasField("request"):
            raise InvalidArgument("request is required: the GenerateRequest to run", [("request", "required")])
        new = _new_job(request.request, request.priority)
        job = await self.jobs.submit(owner, new, request.webhook_url, request.request_id)
        return jobs_pb2.SubmitJobResponse(job=job_to_proto(job))

    @rpc_errors(DOMAIN)
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        owner = await self._owner(context)
        job = await self.jobs.get(owner, parse_name(request.name, "jobs"))
        return jobs_pb2.GetJobResponse(job=job_to_proto(job))

    @rpc_errors(DOMAIN)
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        owner = await self._owner(context)
        if request.state != jobs_pb2.JOB_STATE_UNSPECIFIED and request.state not in _STATE_FROM_PROTO:
            raise InvalidArgument(f"state {request.state} is not a JobState", [("state", "unknown value")])
        batch_id = parse_name(request.batch, "jobbatches", "batch") if request.batch else ""
        page = await self.jobs.list(
            owner,
            request.page_size,
            request.page_token,
            _STATE_FROM_PROTO.get(request.state),
            batch_id,  # type: ignore[call-overload]
        )
        return jobs_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in page.items], next_page_token=page.next_page_token
        )

    @rpc_errors(DOMAIN)
    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        owner = await self._owner(context)
        job = await self.jobs.cancel(owner, parse_name(request.name, "jobs"))
        return jobs_pb2.CancelJobResponse(job=job_to_proto(job))

    @rpc_errors(DOMAIN)
    async def SubmitBatch(
        self, request: jobs_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitBatchResponse:
        owner = await self._owner(context)
        items = [_new_job(it.request, request.priority, custom_id=it.custom_id) for it in request.items]
        input_file = parse_name(request.input_file, "files", "input_file") if request.input_file else ""
        batch = await self.jobs.submit_batch(owner, items, request.webhook_url, input_file, dict(request.labels))
        return jobs_pb2.SubmitBatchResponse(batch=batch_to_proto(batch))

    @rpc_errors(DOMAIN)
    async def GetBatch(
        self, request: jobs_pb2.GetBatchRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetBatchResponse:
        owner = await self._owner(context)
        batch = await self.jobs.get_batch(owner, parse_name(request.name, "jobbatches"))
        return jobs_pb2.GetBatchResponse(batch=batch_to_proto(batch))

    @rpc_errors(DOMAIN)
    async def ListBatches(
        self, request: jobs_pb2.ListBatchesRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListBatchesResponse:
        owner = await self._owner(context)
        page = await self.jobs.list_batches(owner, request.page_size, _page_in(request.page_token, "jobbatches"))
        return jobs_pb2.ListBatchesResponse(
            batches=[batch_to_proto(b) for b in page.items],
            next_page_token=_page_out(page.next_page_token, "jobbatches"),
        )

    @rpc_errors(DOMAIN)
    async def CancelBatch(
        self, request: jobs_pb2.CancelBatchRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelBatchResponse:
        owner = await self._owner(context)
        batch = await self.jobs.cancel_batch(owner, parse_name(request.name, "jobbatches"))
        return jobs_pb2.CancelBatchResponse(batch=batch_to_proto(batch))

    @rpc_errors(DOMAIN)
    async def CreateFile(
        self, request: jobs_pb2.CreateFileRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CreateFileResponse:
        owner = await self._owner(context)
        f = await self.jobs.create_file(owner, request.filename, request.purpose, request.content)
        return jobs_pb2.CreateFileResponse(file=file_to_proto(f))

    @rpc_errors(DOMAIN)
    async def GetFile(
        self, request: jobs_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetFileResponse:
        owner = await self._owner(context)
        f = await self.jobs.get_file(owner, parse_name(request.name, "files"))
        return jobs_pb2.GetFileResponse(file=file_to_proto(f))

    @rpc_errors(DOMAIN)
    async def ListFiles(
        self, request: jobs_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListFilesResponse:
        owner = await self._owner(context)
        token = _page_in(request.page_token, "files")
        page = await self.jobs.list_files(owner, request.page_size, token, request.purpose)
        return jobs_pb2.ListFilesResponse(
            files=[file_to_proto(f) for f in page.items], next_page_token=_page_out(page.next_page_token, "files")
        )

    @rpc_errors(DOMAIN)
    async def DeleteFile(
        self, request: jobs_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.DeleteFileResponse:
        owner = await self._owner(context)
        await self.jobs.delete_file(owner, parse_name(request.name, "files"))
        return jobs_pb2.DeleteFileResponse(name=request.name)
