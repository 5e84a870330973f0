"""OpenAI's Batch API over the jobs service (``tollway.jobs.v1``): JSONL in, JSONL out.

Existing batch code works by base URL:

    POST /v1/files (purpose=batch)        -> JobsService.CreateFile
    POST /v1/batches {input_file_id, ...} -> the file's lines checked here, then SubmitBatch
    GET  /v1/batches/{id}                 -> GetBatch (status and request_counts)
    GET  /v1/batches?limit=&after=        -> ListBatches (newest first)
    POST /v1/batches/{id}/cancel          -> CancelBatch
    GET  /v1/files/{id}, /content         -> GetFile, or a batch's output/error JSONL from ListJobs

Each input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``; the body
is read exactly as ``/v1/chat/completions`` reads it (without ``stream``). Unlike OpenAI, which accepts
the batch and fails it later, a bad file is refused at once: the 400 names the line and what is wrong
with it, or the limit it passes, and no item is queued. Items run at priority ``batch``.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollway.gateway.v1 import gateway_pb2
from tollway.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from tollway.mesh import clients
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import files, translate
from tollway.openai_compat.errors import ApiError, from_invalid, from_rpc, unreachable
from tollway.openai_compat.http import json_body, metadata
from tollway.openai_compat.json_response import JsonResponse

ENDPOINT = "/v1/chat/completions"
# OpenAI's own limit per batch; the jobs service may set a lower one (its refusal names it).
MAX_LINES = 50_000
MAX_CUSTOM_ID_CHARS = 64
_PAGE = 1000


def _line_error(line: int, what: str) -> ApiError:
    return ApiError(
        400, f"input file line {line}: {what}", "invalid_request_error", "invalid_batch_line", "input_file_id"
    )


def parse_input(content: bytes, max_lines: int = MAX_LINES) -> list[tuple[str, gateway_pb2.GenerateRequest]]:
    """The (custom_id, request) of every line of a batch input file, in order.

    Raises:
        ApiError: 400 naming the first bad line (1-based) and what is wrong, or the limit.
    """
    out: list[tuple[str, gateway_pb2.GenerateRequest]] = []
    seen: set[str] = set()
    for n, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_lines:
            raise _line_error(n, f"a batch holds at most {max_lines} requests; split the file")
        try:
            line = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _line_error(n, f"not a JSON object ({exc})") from None
        if not isinstance(line, dict):
            raise _line_error(n, "not a JSON object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
            raise _line_error(n, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters")
        if custom_id in seen:
            raise _line_error(n, f"custom_id {custom_id!r} is used twice; each line needs its own")
        seen.add(custom_id)
        if line.get("method") != "POST":
            raise _line_error(n, 'method must be "POST"')
        if line.get("url") != ENDPOINT:
            raise _line_error(n, f"url {line.get('url')!r} is not supported; batches run {ENDPOINT}")
        body = line.get("body")
        if not isinstance(body, dict):
            raise _line_error(n, "body must be a JSON object (a chat completions request)")
        if body.get("stream"):
            raise _line_error(n, "body.stream must be false or absent: batch answers are not streamed")
        try:
            req, _, _ = translate.chat_request(body)
        except InvalidArgument as exc:
            raise _line_error(n, exc.message) from None
        out.append((custom_id, req))
    if not out:
        raise ApiError(400, "the input file has no requests", "invalid_request_error", "empty_file", "input_file_id")
    return out


def batch_id(name: str) -> str:
    return "batch_" + name.removeprefix("jobbatches/")


def batch_name(openai_id: str) -> str:
    ident = openai_id.removeprefix("batch_")
    if not files.ID.fullmatch(ident):
        raise ApiError(404, f"no such batch: {openai_id}", "invalid_request_error", param="batch_id")
    return f"jobbatches/{ident}"


def _status(b: jobs_pb2.Batch) -> str:
    if b.done:
        return "cancelled" if b.cancel_requested else "completed"
    return "cancelling" if b.cancel_requested else "in_progress"


def batch_json(b: jobs_pb2.Batch) -> dict[str, Any]:
    """OpenAI's batch object of a jobs batch."""
    ident = b.name.removeprefix("jobbatches/")
    done_at = b.end_time.seconds if b.HasField("end_time") else None
    status = _status(b)
    labels = dict(b.labels)
    return {
        "id": batch_id(b.name),
        "object": "batch",
        "endpoint": ENDPOINT,
        "errors": None,
        "input_file_id": files.file_id(b.input_file) if b.input_file else None,
        "completion_window": "24h",
        "status": status,
        "output_file_id": files.OUTPUT_PREFIX + ident if b.done and b.succeeded_count else None,
        "error_file_id": files.ERROR_PREFIX + ident if b.done and (b.failed_count or b.cancelled_count) else None,
        "created_at": b.create_time.seconds,
        "in_progress_at": b.create_time.seconds,
        "expires_at": b.expire_time.seconds if b.HasField("expire_time") else None,
        "finalizing_at": done_at,
        "completed_at": done_at if status == "completed" else None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": done_at if status == "cancelled" else None,
        "request_counts": {
            "total": b.total_count,
            "completed": b.succeeded_count,
            "failed": b.failed_count + b.cancelled_count,
        },
        "metadata": labels or None,
    }


def result_line(job: jobs_pb2.Job) -> dict[str, Any]:
    """One line of a batch's output (a succeeded item) or error file (the others)."""
    ident = "batch_req_" + job.name.removeprefix("jobs/")
    if job.WhichOneof("result") == "response":
        body = translate.completion_json(job.response)
        response = {"status_code": 200, "request_id": job.response.request_id, "body": body}
        return {"id": ident, "custom_id": job.metadata.custom_id, "response": response, "error": None}
    if job.metadata.state == jobs_pb2.JOB_STATE_CANCELLED:
        error = {"code": "batch_cancelled", "message": "the batch was cancelled before this request ran"}
        return {"id": ident, "custom_id": job.metadata.custom_id, "response": None, "error": error}
    code = next((c for c in grpc.StatusCode if c.value[0] == job.error.code), grpc.StatusCode.UNKNOWN)
    status, kind = translate.HTTP_ERRORS.get(code, (500, "api_error"))
    body = translate.error_json(job.error.message, kind)
    response = {"status_code": status, "request_id": "job-" + job.name.removeprefix("jobs/"), "body": body}
    return {"id": ident, "custom_id": job.metadata.custom_id, "response": response, "error": None}


def _jobs_error(err: grpc.aio.AioRpcError) -> ApiError:
    if unreachable(err):
        return ApiError(
            503,
            f"the jobs service is unavailable ({err.details() or 'no connection'}); retry shortly",
            "service_unavailable",
            "jobs_unavailable",
            None,
            {"retry-after": "1"},
        )
    return from_rpc(err)


class BatchesApi:
    """The routes of ``/v1/files`` and ``/v1/batches``; talks to JobsService at ``jobs_addr``
    (empty: those routes answer 503 saying the jobs service is not configured)."""

    def __init__(self, jobs_addr: str, max_body_bytes: int) -> None:
        self.jobs_addr = jobs_addr
        self.max_body_bytes = max_body_bytes
        self._stub: jobs_pb2_grpc.JobsServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self.routes = [
            Route("/v1/files", self.create_file, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    def stub(self) -> jobs_pb2_grpc.JobsServiceStub:
        """The JobsService stub, its channel made on first use (in the server's event loop)."""
        if not self.jobs_addr:
            raise ApiError(
                503,
                "batches need the jobs service, and this server has none (TOLLWAY_OPENAI_COMPAT_JOBS_ADDR is empty)",
                "service_unavailable",
                "jobs_not_configured",
            )
        if self._stub is None:
            self._channel = clients.channel(self.jobs_addr)
            self._stub = jobs_pb2_grpc.JobsServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Closes the channel; safe to call when none was made, and more than once."""
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def _call(self, request: Request, method: str, message: Any) -> Any:
        try:
            return await getattr(self.stub(), method)(message, metadata=metadata(request), timeout=30)
        except grpc.aio.AioRpcError as err:
            raise _jobs_error(err) from None

    async def create_file(self, request: Request) -> Response:
        try:
            raw = await request.body()
            if len(raw) > self.max_body_bytes:
                raise ApiError(
                    413, f"the upload is {len(raw)} bytes; the limit is {self.max_body_bytes}", "invalid_request_error"
                )
            filename, purpose, content = files.parse_upload(request.headers.get("content-type", ""), raw)
            if purpose == "batch":
                parse_input(content)  # a bad file is refused at upload, naming its line
            reply = await self._call(
                request, "CreateFile", jobs_pb2.CreateFileRequest(filename=filename, purpose=purpose, content=content)
            )
        except ApiError as exc:
            return exc.openai()
        return JsonResponse(files.file_json(reply.file))

    async def _batch_items(self, request: Request, batch: str) -> list[jobs_pb2.Job]:
        items: list[jobs_pb2.Job] = []
        token = ""
        while True:
            page = await self._call(
                request, "ListJobs", jobs_pb2.ListJobsRequest(batch=batch, page_size=_PAGE, page_token=token)
            )
            items += page.jobs
            token = page.next_page_token
            if not token:
                return items

    async def get_file(self, request: Request) -> Response:
        openai_id = request.path_params["file_id"]
        try:
            if openai_id.startswith((files.OUTPUT_PREFIX, files.ERROR_PREFIX)):
                content, created = await self._derived(request, openai_id)
                return JsonResponse(files.derived_file_json(openai_id, created, len(content)))
            reply = await self._call(request, "GetFile", jobs_pb2.GetFileRequest(name=files.file_name(openai_id)))
        except ApiError as exc:
            return exc.openai()
        f = reply.file
        f.ClearField("content")
        return JsonResponse(files.file_json(f))

    async def file_content(self, request: Request) -> Response:
        openai_id = request.path_params["file_id"]
        try:
            if openai_id.startswith((files.OUTPUT_PREFIX, files.ERROR_PREFIX)):
                content, _ = await self._derived(request, openai_id)
            else:
                reply = await self._call(request, "GetFile", jobs_pb2.GetFileRequest(name=files.file_name(openai_id)))
                content = reply.file.content
        except ApiError as exc:
            return exc.openai()
        return Response(content, media_type="application/jsonl")

    async def _derived(self, request: Request, openai_id: str) -> tuple[bytes, int]:
        """The JSONL of a batch's output or error file, and the batch's creation time."""
        output = openai_id.startswith(files.OUTPUT_PREFIX)
        ident = openai_id.removeprefix(files.OUTPUT_PREFIX if output else files.ERROR_PREFIX)
        if not files.ID.fullmatch(ident):
            raise ApiError(404, f"no such file: {openai_id}", "invalid_request_error", param="file_id")
        name = f"jobbatches/{ident}"
        batch = (await self._call(request, "GetBatch", jobs_pb2.GetBatchRequest(name=name))).batch
        if not batch.done:
            raise ApiError(
                404, f"{openai_id} is written when the batch completes", "invalid_request_error", param="file_id"
            )
        lines = [
            json.dumps(result_line(j), separators=(",", ":"))
            for j in await self._batch_items(request, name)
            if (j.metadata.state == jobs_pb2.JOB_STATE_SUCCEEDED) == output
        ]
        return ("\n".join(lines) + "\n" if lines else "").encode(), batch.create_time.seconds

    async def create_batch(self, request: Request) -> Response:
        try:
            body = await json_body(request, self.max_body_bytes)
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object", "invalid_request_error")
            if body.get("endpoint") != ENDPOINT:
                raise ApiError(
                    400,
                    f"endpoint {body.get('endpoint')!r} is not supported; use {ENDPOINT}",
                    "invalid_request_error",
                    param="endpoint",
                )
            if body.get("completion_window", "24h") != "24h":
                raise ApiError(
                    400, 'completion_window must be "24h"', "invalid_request_error", param="completion_window"
                )
            meta = body.get("metadata") or {}
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise ApiError(400, "metadata must map strings to strings", "invalid_request_error", param="metadata")
            input_id = body.get("input_file_id")
            if not isinstance(input_id, str):
                raise ApiError(400, "input_file_id is required", "invalid_request_error", param="input_file_id")
            name = files.file_name(input_id)
            f = (await self._call(request, "GetFile", jobs_pb2.GetFileRequest(name=name))).file
            items = [jobs_pb2.BatchItem(request=req, custom_id=cid) for cid, req in parse_input(f.content)]
            submit = jobs_pb2.SubmitBatchRequest(
                items=items, priority=gateway_pb2.PRIORITY_BATCH, input_file=name, labels=meta
            )
            reply = await self._call(request, "SubmitBatch", submit)
        except InvalidArgument as exc:
            return from_invalid(exc).openai()
        except ApiError as exc:
            return exc.openai()
        return JsonResponse(batch_json(reply.batch))

    async def list_batches(self, request: Request) -> Response:
        """``GET /v1/batches?limit=&after=``: the caller's batches, newest first, in OpenAI's list shape."""
        try:
            limit = _limit(request)
            after = request.query_params.get("after")
            token = batch_name(after) if after else ""
            reply = await self._call(
                request, "ListBatches", jobs_pb2.ListBatchesRequest(page_size=limit, page_token=token)
            )
        except ApiError as exc:
            return exc.openai()
        return JsonResponse(_list_json([batch_json(b) for b in reply.batches], reply.next_page_token))

    async def list_files(self, request: Request) -> Response:
        """``GET /v1/files?purpose=&limit=&after=``: the caller's uploaded files, newest first, in
        OpenAI's list shape (a batch's output and error files are reached through the batch)."""
        try:
            limit = _limit(request)
            after = request.query_params.get("after")
            order = request.query_params.get("order", "desc")
            if order != "desc":
                raise ApiError(
                    400,
                    f"order {order!r} is not supported: files list newest first",
                    "invalid_request_error",
                    param="order",
                )
            if after and not files.ID.fullmatch(after.removeprefix("file-")):
                raise ApiError(
                    400,
                    f"after {after[:80]!r} is not a file id this list returned",
                    "invalid_request_error",
                    param="after",
                )
            query = jobs_pb2.ListFilesRequest(
                page_size=limit,
                page_token=files.file_name(after) if after else "",
                purpose=request.query_params.get("purpose", ""),
            )
            reply = await self._call(request, "ListFiles", query)
        except ApiError as exc:
            return exc.openai()
        return JsonResponse(_list_json([files.file_json(f) for f in reply.files], reply.next_page_token))

    async def delete_file(self, request: Request) -> Response:
        """``DELETE /v1/files/{file_id}``: removes an uploaded file now."""
        openai_id = request.path_params["file_id"]
        try:
            await self._call(request, "DeleteFile", jobs_pb2.DeleteFileRequest(name=files.file_name(openai_id)))
        except ApiError as exc:
            return exc.openai()
        return JsonResponse({"id": openai_id, "object": "file", "deleted": True})

    async def get_batch(self, request: Request) -> Response:
        try:
            name = batch_name(request.path_params["batch_id"])
            reply = await self._call(request, "GetBatch", jobs_pb2.GetBatchRequest(name=name))
        except ApiError as exc:
            return exc.openai()
        return JsonResponse(batch_json(reply.batch))

    async def cancel_batch(self, request: Request) -> Response:
        try:
            name = batch_name(request.path_params["batch_id"])
            reply = await self._call(request, "CancelBatch", jobs_pb2.CancelBatchRequest(name=name))
        except ApiError as exc:
            return exc.openai()
        return JsonResponse(batch_json(reply.batch))


def _limit(request: Request) -> int:
    """The ``limit`` query parameter of a list (1 to 100, 20 when absent).

    Raises:
        ApiError: 400 naming the parameter.
    """
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, f"limit {raw!r} must be 1 to 100", "invalid_request_error", param="limit")
    return int(raw)


def _list_json(data: list[dict[str, Any]], next_page_token: str) -> dict[str, Any]:
    """OpenAI's list object around ``data`` (newest first)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": bool(next_page_token),
    }
