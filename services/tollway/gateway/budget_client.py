"""The gateway's view of the budget service: reserve before the router, commit or release after.

The estimate is the prompt counted with the model's tokenizer (never bytes / 4) plus the
effective max_tokens; the budget service prices it from the catalog. Every call carries the
request id, so each RPC is idempotent and the channel may retry it on UNAVAILABLE (open it
with ``tollway.mesh.clients.channel(addr, idempotent_services=[SERVICE_NAME])``).

Refusals come back as the typed errors of :mod:`tollway.mesh.errors` (ResourceExhausted with
its retry-after), ready for the gateway's own error path; :func:`rate_limit_headers` and
:func:`refusal_headers` give the ``x-ratelimit-*`` headers of a success and of a 429.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.common.chat import ChatRequest, Usage
from tollway.common.tokens import count_request_tokens
from tollway.mesh import tracing
from tollway.mesh.errors import Internal, ResourceExhausted, TollwayError, from_rpc_error, from_status_proto
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.gateway.budget")

SERVICE_NAME = "tollway.budget.v1.BudgetService"
_ADMIT = {
    budget_pb2.UNAVAILABLE_POLICY_ADMIT: True,
    budget_pb2.UNAVAILABLE_POLICY_REFUSE: False,
}
PRIORITIES = {
    "": budget_pb2.PRIORITY_UNSPECIFIED,
    "interactive": budget_pb2.PRIORITY_INTERACTIVE,
    "normal": budget_pb2.PRIORITY_NORMAL,
    "batch": budget_pb2.PRIORITY_BATCH,
}


@frozen
class Limit:
    """The tightest quota of one unit after a reservation (for ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float | None


@frozen
class BudgetHold:
    """A granted reservation.

    Attributes:
        name: Pass to :meth:`BudgetClient.commit` or :meth:`BudgetClient.release`.
        max_output_tokens: The max_tokens to send to the model (fewer than asked only when
            the caller allowed it with ``min_output_tokens``).
        input_tokens: The prompt tokens counted for the estimate.
        tokens: Tokens held.
        cost_usd_nanos: Dollars held, in billionths.
        pricing_version: The price table version of the estimate.
        tokens_limit: The tightest token quota left, if any applies.
        requests_limit: The tightest request quota left, if any applies.
        admit_when_unavailable: The tenant's policy while the budget service is down:
            True admits (and charges later), False refuses, None when the service did not say.
        attempt: Which hold of the request id this is; its commit or release names it, so a
            late settlement of this hold cannot settle a later attempt's.
    """

    name: str
    max_output_tokens: int
    input_tokens: int
    tokens: int
    cost_usd_nanos: int
    pricing_version: str
    tokens_limit: Limit | None = None
    requests_limit: Limit | None = None
    admit_when_unavailable: bool | None = None
    attempt: int = 0


def _limit(status: budget_pb2.QuotaStatus, now_s: float) -> Limit:
    reset = None
    if status.HasField("reset_time"):
        ts = status.reset_time  # read as is: Timestamp.ToMilliseconds is Python, and checks a range
        reset = max(0.0, ts.seconds + ts.nanos / 1e9 - now_s)
    return Limit(status.quota.limit, status.remaining, reset)


def rate_limit_headers(hold: BudgetHold) -> dict[str, str]:
    """The ``x-ratelimit-{limit,remaining,reset}-{tokens,requests}`` headers of a success."""
    out: dict[str, str] = {}
    for unit, lim in (("tokens", hold.tokens_limit), ("requests", hold.requests_limit)):
        if lim is None:
            continue
        out[f"x-ratelimit-limit-{unit}"] = str(lim.limit)
        out[f"x-ratelimit-remaining-{unit}"] = str(lim.remaining)
        if lim.reset_s is not None:
            out[f"x-ratelimit-reset-{unit}"] = f"{math.ceil(lim.reset_s)}s"
    return out


def refusal_headers(metadata: Mapping[str, str], retry_after_s: float | None) -> dict[str, str]:
    """The headers of a 429 from a refusal's ErrorInfo metadata (``ResourceExhausted.metadata``)."""
    unit = {"tokens": "tokens", "requests": "requests"}.get(metadata.get("unit", ""))
    out: dict[str, str] = {}
    if retry_after_s is not None:
        out["retry-after"] = str(math.ceil(retry_after_s))
    if unit:
        out[f"x-ratelimit-limit-{unit}"] = metadata.get("limit", "")
        out[f"x-ratelimit-remaining-{unit}"] = metadata.get("remaining", "0")
        if retry_after_s is not None:
            out[f"x-ratelimit-reset-{unit}"] = f"{math.ceil(retry_after_s)}s"
    return out


def _attempt(hold: BudgetHold | str, attempt: int | None) -> int:
    if attempt is not None:
        return attempt
    return 0 if isinstance(hold, str) else hold.attempt


def _error(err: grpc.aio.AioRpcError) -> TollwayError:
    """The typed error of a failed budget call; a refusal keeps its QuotaFailure, so the
    gateway's own 429 says which quota and window refused."""
    exc = from_rpc_error(err)
    if not isinstance(exc, ResourceExhausted):
        return exc
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            exc.quota_violations = [(v.subject, v.description) for v in failure.violations]
    return exc


# A commit's answer when nobody joined it in its turn: it is then sent as a CommitBudget of its own.
_ALONE: Any = object()
_Waiting = tuple[budget_pb2.CommitBudgetRequest, "asyncio.Future[budget_pb2.CommitBudgetResponse]"]


class BudgetClient:
    """Reserve, commit, release and saved-cost records through the budget service's stub.

    Args:
        channel: A channel to the budget service (or the mesh listener).
        default_max_tokens: The max_tokens of a request that sets none (the gateway's default).
        count_prompt_tokens: Counts a request's prompt tokens (the model's tokenizer).
        timeout_s: Deadline of each call.
        clock: Now, Unix seconds (for reset times).
        batch_commits: Commits made in the same turn of the event loop go to the service in
            one ``BatchCommitBudget`` call (each caller still gets its own result or error).
        max_batch: The most commits one such call carries.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        default_max_tokens: int = 256,
        count_prompt_tokens: Callable[[ChatRequest], int] = count_request_tokens,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        batch_commits: bool = True,
        max_batch: int = 256,
    ) -> None:
        self._stub = budget_pb2_grpc.BudgetServiceStub(channel)
        self._batching = batch_commits
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._default_max_tokens = default_max_tokens
        self._count = count_prompt_tokens
        self._timeout_s = timeout_s
        self._clock = clock

    def estimate(self, request: ChatRequest, counted: int | None = None) -> tuple[int, int]:
        """``(prompt tokens, effective max_tokens)`` of ``request``.

        Args:
            counted: The prompt's tokens when the caller has counted them already with the
                same tokenizer (the gateway's context fit does); then the prompt is not counted
                again, which on a long prompt costs about as much as the reserve itself.
        """
        tokens = self._count(request) if counted is None else counted
        return max(1, tokens), request.max_tokens or self._default_max_tokens

    async def reserve(
        self,
        request: ChatRequest,
        *,
        tenant: str,
        api_key_id: str = "",
        feature: str = "",
        conversation_id: str = "",
        priority: str = "",
        provider: str = "",
        min_output_tokens: int = 0,
    ) -> BudgetHold:
        """Reserves the estimate of ``request`` (before the router call).

        ``request.request_id`` must be set: it makes a retried reserve return the same hold.

        Raises:
            ResourceExhausted: A quota has no room (``retry_after_s``, ``metadata`` for
                headers, ``quota_violations`` naming the quota and window).
            InvalidArgument, NotFound: Bad input, unknown tenant or model.
            Unavailable, DeadlineExceeded: The budget service cannot be reached (the tenant's
                policy decides).
        """
        input_tokens, max_tokens = self.estimate(request)
        return await self.reserve_counted(
            model=request.model,
            input_tokens=input_tokens,
            max_output_tokens=max_tokens,
            request_id=request.request_id,
            tenant=tenant,
            api_key_id=api_key_id,
            feature=feature,
            conversation_id=conversation_id,
            priority=priority,
            provider=provider,
            min_output_tokens=min_output_tokens,
        )

    async def reserve_counted(
        self,
        *,
        model: str,
        input_tokens: int,
        max_output_tokens: int,
        request_id: str,
        tenant: str,
        api_key_id: str = "",
        feature: str = "",
        conversation_id: str = "",
        priority: str = "",
        provider: str = "",
        min_output_tokens: int = 0,
        admitted_while_unavailable: bool = False,
    ) -> BudgetHold:
        """Reserves an estimate already counted (see :meth:`reserve`).

        With ``admitted_while_unavailable`` the call already happened while the budget
        service was down: it is held past every quota (never refused) so that its commit
        charges it.
        """
        req = budget_pb2.ReserveBudgetRequest(
            tenant_id=tenant,
            api_key_id=api_key_id,
            feature=feature,
            model=model,
            conversation_id=conversation_id,
            priority=PRIORITIES[priority],
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            provider=provider,
            request_id=request_id,
            admitted_while_unavailable=admitted_while_unavailable,
        )
        try:
            with tracing.stage("gateway", "budget.reserve"):
                resp = await self._stub.ReserveBudget(req, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None
        now = self._clock()
        r = resp.reservation
        return BudgetHold(
            name=r.name,
            max_output_tokens=r.granted_output_tokens,
            input_tokens=r.input_tokens,
            tokens=r.tokens,
            cost_usd_nanos=r.cost_usd_nanos,
            pricing_version=r.pricing_version,
            tokens_limit=_limit(resp.tightest_tokens, now) if resp.HasField("tightest_tokens") else None,
            requests_limit=_limit(resp.tightest_requests, now) if resp.HasField("tightest_requests") else None,
            admit_when_unavailable=_ADMIT.get(resp.unavailable_policy),
            attempt=r.attempt,
        )

    async def commit(
        self,
        hold: BudgetHold | str,
        usage: Usage,
        *,
        model: str = "",
        provider: str = "",
        partial: bool = False,
        attempt: int | None = None,
    ) -> budget_pb2.CommitBudgetResponse:
        """Commits the usage the provider reported (or counted, for a cut stream). Idempotent.

        Commits made in the same turn of the event loop (the gateway starts its settlements
        together) travel in one ``BatchCommitBudget`` call; each caller still gets its own
        answer or error.

        Args:
            hold: The reservation (or its name).
            attempt: The attempt it was made for; by default the hold's (0, whichever holds
                the reservation, for a name).
            usage: Input (cached included), output and cached input tokens.
            model: The model that answered, when routing or fallback changed it.
            provider: The provider that answered.
            partial: The stream was cut or the client went away.

        Raises:
            TollwayError: As the service reported it (FailedPrecondition when released).
        """
        req = budget_pb2.CommitBudgetRequest(
            name=hold if isinstance(hold, str) else hold.name,
            model=model,
            provider=provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            partial=partial,
            attempt=_attempt(hold, attempt),
        )
        if not self._batching:
            return await self._commit_one(req)
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append((req, answer))
        if len(self._waiting) == 1:
            # After this turn of the loop: the settlements started with this one join it.
            asyncio.get_running_loop().call_soon(self._send_waiting)
        elif len(self._waiting) >= self._max_batch:
            self._send_waiting()
        result = await answer
        if result is _ALONE:
            return await self._commit_one(req)
        return result

    async def _commit_one(self, req: budget_pb2.CommitBudgetRequest) -> budget_pb2.CommitBudgetResponse:
        try:
            with tracing.stage("gateway", "budget.commit"):
                return await self._stub.CommitBudget(req, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        if len(batch) == 1:
            # Nobody joined it: its caller sends it as itself, in its own task.
            if not batch[0][1].done():
                batch[0][1].set_result(_ALONE)
        elif batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        """Commits ``batch`` (one call for all of them) and answers each waiting caller with its own
        result or error, as a commit of its own would have."""
        try:
            results = await self._commit_batch([req for req, _ in batch])
        except asyncio.CancelledError:
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # the call failed whole: every commit with it
            results = [exc] * len(batch)
        for (_, answer), result in zip(batch, results, strict=True):
            if answer.done():  # its caller went away; the commit was sent all the same
                continue
            if isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    async def _commit_batch(
        self, requests: list[budget_pb2.CommitBudgetRequest]
    ) -> list[budget_pb2.CommitBudgetResponse | BaseException]:
        """Each commit's result or error: one call, or one call each when the service has no batches
        (learned, for good, when a batch call is answered UNIMPLEMENTED)."""
        if self._batching:
            try:
                with tracing.stage("gateway", "budget.commit_batch"):
                    resp = await self._stub.BatchCommitBudget(
                        budget_pb2.BatchCommitBudgetRequest(requests=requests), timeout=self._timeout_s
                    )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise _error(err) from None
                # A budget service older than this gateway (services are deployed one by one).
                log.info("the budget service has no BatchCommitBudget; committing one reservation a call")
                self._batching = False
            else:
                return self._answers(requests, resp)
        return await asyncio.gather(*(self._commit_one(req) for req in requests), return_exceptions=True)

    @staticmethod
    def _answers(
        requests: list[budget_pb2.CommitBudgetRequest], resp: budget_pb2.BatchCommitBudgetResponse
    ) -> list[budget_pb2.CommitBudgetResponse | BaseException]:
        if len(resp.results) != len(requests):
            # Zipped against the wrong answers, a caller would take another's result as its own.
            raise Internal(
                f"the budget service answered {len(resp.results)} results to a batch of {len(requests)} commits"
            )
        return [from_status_proto(r.error) if r.HasField("error") else r.response for r in resp.results]

    async def release(self, hold: BudgetHold | str, reason: str, *, attempt: int | None = None) -> None:
        """Returns the whole estimate (the call failed before the provider produced anything).
        Idempotent.

        Args:
            hold: The reservation (or its name).
            reason: Why, for the ledger.
            attempt: The attempt it was made for; by default the hold's (0, whichever holds
                the reservation, for a name).

        Raises:
            TollwayError: As the service reported it (FailedPrecondition when committed, or
                STALE_ATTEMPT when a later attempt of the request id holds it).
        """
        name = hold if isinstance(hold, str) else hold.name
        req = budget_pb2.ReleaseBudgetRequest(name=name, reason=reason[:64], attempt=_attempt(hold, attempt))
        try:
            with tracing.stage("gateway", "budget.release"):
                await self._stub.ReleaseBudget(req, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None

    async def record_saved(
        self,
        *,
        tenant: str,
        model: str,
        usage: Usage,
        request_id: str,
        cache_tier: str,
        api_key_id: str = "",
        feature: str = "",
    ) -> int:
        """Records what a cache hit saved (``usage``: the cached answer's tokens). Idempotent
        by request id. Returns the saving, in billionths of a dollar.

        Raises:
            TollwayError: As the service reported it.
        """
        req = budget_pb2.RecordSavedCostRequest(
            tenant_id=tenant,
            api_key_id=api_key_id,
            feature=feature,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_tier=cache_tier,
            request_id=request_id,
        )
        try:
            resp = await self._stub.RecordSavedCost(req, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None
        return resp.saved_cost_usd_nanos
