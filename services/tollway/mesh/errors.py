"""Typed errors for domain code, and their one translation to gRPC statuses.

Domain code raises these; it never touches gRPC. Servicer methods are wrapped with
:func:`rpc_errors`, which turns them into a rich ``google.rpc.Status``: always an
``ErrorInfo`` (stable reason, domain ``<service>.tollway``, dynamic values in
metadata), plus ``BadRequest``, ``QuotaFailure`` or ``RetryInfo`` as they apply.

A Redis outage that reaches a servicer (refused, reset, or a command past its deadline,
see :mod:`tollway.mesh.redis`) is UNAVAILABLE with reason ``REDIS_UNAVAILABLE``, not an
internal error: the client may retry, and the message says which part is down.

Exception tree::

    TollwayError
    ├── InvalidArgument        INVALID_ARGUMENT   (400)
    ├── NotFound               NOT_FOUND          (404)
    ├── AlreadyExists          ALREADY_EXISTS     (409)
    ├── FailedPrecondition     FAILED_PRECONDITION(400)
    ├── Unauthenticated        UNAUTHENTICATED    (401)
    ├── PermissionDenied       PERMISSION_DENIED  (403)
    ├── ResourceExhausted      RESOURCE_EXHAUSTED (429, retry-after)
    ├── Unavailable            UNAVAILABLE        (503, retry-after)
    ├── DeadlineExceeded       DEADLINE_EXCEEDED  (504)
    └── Internal               INTERNAL           (500)
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tollway.mesh import metrics, propagation
from tollway.mesh import redis as mesh_redis

log = logging.getLogger("tollway.errors")


class TollwayError(Exception):
    """Base of every error Tollway reports to a caller.

    Attributes:
        message: What was wrong and what to do about it, for a human.
        reason: A stable UPPER_SNAKE identifier a program may switch on.
        metadata: Dynamic values (names, limits) that belong in ErrorInfo.metadata.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        # Details of a callee's status this error has no typed field for (a QuotaFailure on an
        # UNAVAILABLE, a PreconditionFailure): re-raised across the mesh, they reach the client.
        self.carried_details: list[any_pb2.Any] = []


class InvalidArgument(TollwayError):
    """The request is malformed; ``violations`` names each bad field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[tuple[str, str]] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class NotFound(TollwayError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(TollwayError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(TollwayError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(TollwayError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(TollwayError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class _Retryable(TollwayError):
    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class ResourceExhausted(_Retryable):
    """A quota or rate limit is spent; ``quota_violations`` says which (subject, description)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        quota_violations: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s, reason=reason, metadata=metadata)
        self.quota_violations = list(quota_violations)


class Unavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(TollwayError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Internal(TollwayError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def redis_unavailable(exc: BaseException) -> Unavailable:
    """The error a caller sees when Redis is unreachable or stalled (``exc`` is a Redis outage)."""
    kind = "did not answer in time" if "Timeout" in type(exc).__name__ else "is unreachable"
    return Unavailable(
        f"Redis {kind} ({type(exc).__name__}: {str(exc)[:200]}); the request was not completed, retry shortly",
        retry_after_s=1.0,
        reason="REDIS_UNAVAILABLE",
        metadata={"dependency": "redis", "error": type(exc).__name__},
    )


def _pack(msg: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def to_status(exc: TollwayError, domain: str) -> grpc.Status:
    """Builds the rich gRPC status for ``exc``, with details and a retry-after header."""
    status, retry_after = _status(exc, domain)
    built = rpc_status.to_status(status)
    if retry_after is None:
        return built
    # A plain header too: through Envoy it becomes the HTTP `retry-after` of a 429/503.
    trailing = (*built.trailing_metadata, ("retry-after", str(math.ceil(retry_after))))
    return _Status(built.code, built.details, trailing)


def status_proto(exc: TollwayError, domain: str) -> status_pb2.Status:
    """``exc`` as a ``google.rpc.Status`` with its details: the error of one item of a batch,
    which travels in the answer rather than as the call's status."""
    return _status(exc, domain)[0]


def _status(exc: TollwayError, domain: str) -> tuple[status_pb2.Status, float | None]:
    """The status of ``exc`` and its retry delay (None when it has none)."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=domain, metadata=exc.metadata))]
    retry_after: float | None = None
    if isinstance(exc, InvalidArgument) and exc.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations
                    ]
                )
            )
        )
    if isinstance(exc, ResourceExhausted) and exc.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                        for s, d in exc.quota_violations
                    ]
                )
            )
        )
    if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
        retry_after = max(0.0, exc.retry_after_s)
        seconds = int(retry_after)
        details.append(
            _pack(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((retry_after - seconds) * 1e9))
                )
            )
        )
    built = {d.type_url for d in details}
    details += [d for d in exc.carried_details if d.type_url not in built]
    return status_pb2.Status(code=exc.code.value[0], message=exc.message, details=details), retry_after


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def from_rpc_error(err: grpc.aio.AioRpcError) -> TollwayError:
    """Rebuilds the typed error a downstream service raised, keeping reason and details.

    ErrorInfo gives the reason and metadata, RetryInfo the retry delay; a BadRequest becomes an
    InvalidArgument's violations and a QuotaFailure a ResourceExhausted's quota violations
    (which limit was hit). Those on another code, and a PreconditionFailure, are carried as
    they came (``carried_details``), so a service that re-raises the error passes them on.
    """
    status = rpc_status.from_call(err)
    return _typed(err.code(), err.details() or err.code().name, status.details if status is not None else ())


def from_status_proto(status: status_pb2.Status) -> TollwayError:
    """Rebuilds the typed error of a ``google.rpc.Status`` (an item of a batch's answer), as
    :func:`from_rpc_error` does for a failed call."""
    code = _BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _typed(code, status.message or code.name, status.details)


def _typed(code: grpc.StatusCode, message: str, status_details: Iterable[any_pb2.Any]) -> TollwayError:
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[tuple[str, str]] = []
    quota: list[tuple[str, str]] = []
    retry_after: float | None = None
    other: list[any_pb2.Any] = []
    for detail in status_details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            violations = [(v.field, v.description) for v in br.field_violations]
            other.append(detail)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            qf = error_details_pb2.QuotaFailure()
            detail.Unpack(qf)
            quota = [(v.subject, v.description) for v in qf.violations]
            other.append(detail)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            retry_after = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            other.append(detail)
    reason = info.reason if info else None
    metadata = dict(info.metadata) if info else None
    cls = _BY_CODE.get(code, Internal)
    typed: TollwayError
    if cls is InvalidArgument:
        typed = InvalidArgument(message, violations, reason=reason, metadata=metadata)
    elif cls is ResourceExhausted:
        typed = ResourceExhausted(
            message, retry_after_s=retry_after, quota_violations=quota, reason=reason, metadata=metadata
        )
    elif cls is Unavailable:
        typed = Unavailable(message, retry_after_s=retry_after, reason=reason, metadata=metadata)
    elif code == grpc.StatusCode.CANCELLED:
        typed = Unavailable(message, reason=reason or "CANCELLED", metadata=metadata)
    else:
        typed = cls(message, reason=reason, metadata=metadata)
    # to_status rebuilds the typed ones (and skips a carried detail of a type it built).
    typed.carried_details = other
    return typed


_BY_CODE: dict[grpc.StatusCode, type[TollwayError]] = {
    c.code: c
    for c in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}

_CODE_NUMBERS = {c: c.value[0] for c in grpc.StatusCode}
_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def code_number(code: grpc.StatusCode) -> int:
    """The google.rpc.Code number of a grpc status code (for in-band error events)."""
    return _CODE_NUMBERS.get(code, code_pb2.UNKNOWN)


H = TypeVar("H", bound=Callable[..., Any])


def as_tollway_error(exc: BaseException, where: str) -> TollwayError:
    """The error a caller is told for ``exc``, raised in ``where`` (``service.Method``): a typed
    error as it is, a Redis outage as UNAVAILABLE naming Redis, anything else INTERNAL without its
    text (logged here with its traceback)."""
    if isinstance(exc, TollwayError):
        return exc
    if mesh_redis.is_outage(exc):
        log.warning("Redis outage in %s: %r", where, exc)
        return redis_unavailable(exc)
    log.exception("unhandled error in %s", where, exc_info=exc)
    return Internal(f"internal error in {where}; see the service log")


def rpc_errors(domain: str) -> Callable[[H], H]:
    """Wraps a servicer method so typed errors become rich statuses, times it, and captures
    the headers that travel on to the calls it makes (:mod:`tollway.mesh.propagation`).

    Works for unary methods (coroutines) and server-streaming methods (async
    generators). Anything that is not a TollwayError is logged with its traceback
    and reported as INTERNAL without leaking its text.

    Args:
        domain: The ErrorInfo domain, ``<service>.tollway``.
    """

    def decorate(fn: H) -> H:
        method = fn.__name__
        service = domain.split(".", 1)[0]
        # The histogram child of this method, looked up once: labels() costs ~15 us a call (a lock
        # and a dict lookup), paid on every RPC, and several times per request when co-located.
        seconds = metrics.RPC_SECONDS.labels(service, method)

        async def _fail(exc: BaseException, context: grpc.aio.ServicerContext) -> None:
            err = as_tollway_error(exc, f"{service}.{method}")
            metrics.RPC_ERRORS.labels(service, method, err.code.name).inc()
            status = to_status(err, domain)
            await context.abort(status.code, status.details, status.trailing_metadata)

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start = time.perf_counter()
                propagation.capture(context.invocation_metadata())
                try:
                    async for item in fn(self, request, context):
                        yield item
                except (grpc.aio.AbortError, GeneratorExit):
                    raise
                except Exception as exc:
                    await _fail(exc, context)
                finally:
                    seconds.observe(time.perf_counter() - start)

            return stream  # type: ignore[return-value]

        @functools.wraps(fn)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            propagation.capture(context.invocation_metadata())
            try:
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _fail(exc, context)
            finally:
                seconds.observe(time.perf_counter() - start)

        return unary  # type: ignore[return-value]

    return decorate
