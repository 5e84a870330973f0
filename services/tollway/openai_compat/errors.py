"""One error value for every HTTP surface, written in each API's own shape.

A gateway status, a bad field or a refusal of this process becomes an :class:`ApiError`
(HTTP status, message, OpenAI error type, code, param, headers); each surface renders it:
OpenAI's ``{"error": {message, type, param, code}}`` (chat, embeddings, Responses) or
Anthropic's ``{"type": "error", "error": {type, message}}`` (Messages). A 429 keeps the
gateway's ``retry-after`` and ``x-ratelimit-*`` headers on every surface.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import translate
from tollway.openai_compat.json_response import JsonResponse

_RATE_LIMIT_PREFIX = "x-ratelimit-"

# Anthropic's error type for each HTTP status (its SDK picks the exception class by status).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclasses.dataclass
class ApiError(Exception):
    """A refusal, before any byte of the answer was sent.

    Attributes:
        status: The HTTP status.
        message: What went wrong and what to do.
        kind: OpenAI's error type (``invalid_request_error``...).
        code: A stable code (the gateway's reason, lower case), or None.
        param: The request field at fault, or None.
        headers: Response headers (``retry-after``, ``x-ratelimit-*``).
    """

    status: int
    message: str
    kind: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def openai(self) -> JsonResponse:
        body = translate.error_json(self.message, self.kind, self.code, self.param)
        return JsonResponse(body, status_code=self.status, headers=self.headers)

    def anthropic(self) -> JsonResponse:
        return JsonResponse(anthropic_body(self.status, self.message), status_code=self.status, headers=self.headers)


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object for ``status``."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def rate_limit_headers(metadata: Any) -> dict[str, str]:
    """The gateway's ``x-ratelimit-*`` budget headers, passed on under the same names."""
    return {k: str(v) for k, v in metadata or () if k.startswith(_RATE_LIMIT_PREFIX)}


def unreachable(err: grpc.aio.AioRpcError) -> bool:
    """Whether the gateway itself did not answer: every status it sends carries a
    google.rpc.Status (the mesh's error decorator); an UNAVAILABLE without one came from the
    channel (nothing accepted the connection, or it broke)."""
    return err.code() == grpc.StatusCode.UNAVAILABLE and rpc_status.from_call(err) is None


def unreachable_message(err: grpc.aio.AioRpcError) -> str:
    return f"the gateway is unavailable ({err.details() or 'no connection'}); retry shortly"


def from_rpc(err: grpc.aio.AioRpcError) -> ApiError:
    """The HTTP refusal of a failed gateway call."""
    if unreachable(err):
        return ApiError(
            503, unreachable_message(err), "service_unavailable", "gateway_unavailable", None, {"retry-after": "1"}
        )
    status, kind = translate.HTTP_ERRORS.get(err.code(), (500, "api_error"))
    headers = rate_limit_headers(err.trailing_metadata())
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after":
            headers["retry-after"] = str(value)
    reason, param = _details(err)
    code = reason.lower() if reason and reason != err.code().name else err.code().name.lower()
    return ApiError(status, err.details() or err.code().name, kind, code, param, headers)


def _details(err: grpc.aio.AioRpcError) -> tuple[str, str | None]:
    """The ErrorInfo reason and the first BadRequest field of a gateway status ("" and None without)."""
    status = rpc_status.from_call(err)
    reason, param = "", None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR) and param is None:
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            param = bad.field_violations[0].field if bad.field_violations else None
    return reason, param


def from_invalid(exc: InvalidArgument) -> ApiError:
    """The 400 of a field this process refused (the first violation is the ``param``)."""
    param = exc.violations[0][0] if exc.violations else None
    code = exc.reason.lower() if exc.reason != "INVALID_ARGUMENT" else None
    return ApiError(400, exc.message, "invalid_request_error", code, param)


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413, f"request body is {size} bytes; the limit is {limit}", "invalid_request_error", "request_too_large"
    )


def bad_json(exc: ValueError) -> ApiError:
    return ApiError(400, f"the body is not valid JSON: {exc}", "invalid_request_error")


def stream_failure(err: grpc.aio.AioRpcError) -> tuple[str, str]:
    """``(message, code)`` of a gateway call that failed after the stream began."""
    if unreachable(err):
        return unreachable_message(err), "gateway_unavailable"
    return err.details() or "stream failed", err.code().name.lower()
