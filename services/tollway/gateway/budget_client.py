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

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Mapping

import grpc
import quicktok

from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.common.chat import ChatRequest, Usage
from tollway.mesh.errors import from_rpc_error

SERVICE_NAME = "tollway.budget.v1.BudgetService"
PRIORITIES = {
    "": budget_pb2.PRIORITY_UNSPECIFIED,
    "interactive": budget_pb2.PRIORITY_INTERACTIVE,
    "normal": budget_pb2.PRIORITY_NORMAL,
    "batch": budget_pb2.PRIORITY_BATCH,
}
# Chat templates wrap each turn in a few tokens and prime the answer with a few more.
_PER_MESSAGE, _PER_REPLY = 3, 3


@functools.cache
def _encoding(name: str) -> quicktok.Tokenizer:
    return quicktok.get_encoding(name)


def count_prompt_tokens(request: ChatRequest, encoding: str = "o200k_base") -> int:
    """Prompt tokens of ``request`` under ``encoding`` (tiktoken-compatible), with the framing
    chat templates add, the tool calls in the history and the tool schemas offered.

    The same count as the router's ``tollway.router.tokens.count_prompt_tokens`` for plain
    chats; it lives here until that function moves to ``tollway.common`` (services may not
    import each other).
    """
    enc = _encoding(encoding)
    total = _PER_REPLY
    for m in request.messages:
        total += _PER_MESSAGE + enc.count(m.content)
        if m.name:
            total += enc.count(m.name)
        for call in m.tool_calls:
            total += enc.count(call.name) + enc.count(call.arguments)
    for tool in request.tools:
        total += enc.count(
            json.dumps({"name": tool.name, "description": tool.description, "parameters": tool.parameters})
        )
    return total


@dataclasses.dataclass(frozen=True)
class Limit:
    """The tightest quota of one unit after a reservation (for ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float | None


@dataclasses.dataclass(frozen=True)
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
    """

    name: str
    max_output_tokens: int
    input_tokens: int
    tokens: int
    cost_usd_nanos: int
    pricing_version: str
    tokens_limit: Limit | None = None
    requests_limit: Limit | None = None


def _limit(status: budget_pb2.QuotaStatus, has: bool, now_s: float) -> Limit | None:
    if not has:
        return None
    reset = status.reset_time.ToMilliseconds() / 1000 - now_s if status.HasField("reset_time") else None
    return Limit(status.quota.limit, status.remaining, max(0.0, reset) if reset is not None else None)


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


class BudgetClient:
    """Reserve, commit and release through the budget service's stub.

    Args:
        channel: A channel to the budget service (or the mesh listener).
        default_max_tokens: The max_tokens of a request that sets none (the gateway's default).
        count_prompt_tokens: Counts a request's prompt tokens (the model's tokenizer).
        timeout_s: Deadline of each call.
        clock: Now, Unix seconds (for reset times).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        default_max_tokens: int = 256,
        count_prompt_tokens: Callable[[ChatRequest], int] = count_prompt_tokens,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stub = budget_pb2_grpc.BudgetServiceStub(channel)
        self._default_max_tokens = default_max_tokens
        self._count = count_prompt_tokens
        self._timeout_s = timeout_s
        self._clock = clock

    def estimate(self, request: ChatRequest) -> tuple[int, int]:
        """``(prompt tokens, effective max_tokens)`` of ``request``."""
        return max(1, self._count(request)), request.max_tokens or self._default_max_tokens

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
            ResourceExhausted: A quota has no room (``retry_after_s``, ``metadata`` for headers).
            InvalidArgument, NotFound: Bad input, unknown tenant or model.
            Unavailable: The budget service cannot be reached (the tenant's policy decides).
        """
        input_tokens, max_tokens = self.estimate(request)
        req = budget_pb2.ReserveBudgetRequest(
            tenant_id=tenant,
            api_key_id=api_key_id,
            feature=feature,
            model=request.model,
            conversation_id=conversation_id,
            priority=PRIORITIES[priority],
            input_tokens=input_tokens,
            max_output_tokens=max_tokens,
            min_output_tokens=min_output_tokens,
            provider=provider,
            request_id=request.request_id,
        )
        try:
            resp = await self._stub.ReserveBudget(req, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        now = self._clock()
        r = resp.reservation
        return BudgetHold(
            name=r.name,
            max_output_tokens=r.granted_output_tokens,
            input_tokens=r.input_tokens,
            tokens=r.tokens,
            cost_usd_nanos=r.cost_usd_nanos,
            pricing_version=r.pricing_version,
            tokens_limit=_limit(resp.tightest_tokens, resp.HasField("tightest_tokens"), now),
            requests_limit=_limit(resp.tightest_requests, resp.HasField("tightest_requests"), now),
        )

    async def commit(
        self, hold: BudgetHold, usage: Usage, *, model: str = "", provider: str = "", partial: bool = False
    ) -> budget_pb2.CommitBudgetResponse:
        """Commits the usage the provider reported (or counted, for a cut stream). Idempotent.

        Args:
            hold: The reservation.
            usage: Input (cached included), output and cached input tokens.
            model: The model that answered, when routing or fallback changed it.
            provider: The provider that answered.
            partial: The stream was cut or the client went away.

        Raises:
            TollwayError: As the service reported it (FailedPrecondition when released).
        """
        req = budget_pb2.CommitBudgetRequest(
            name=hold.name,
            model=model,
            provider=provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            partial=partial,
        )
        try:
            return await self._stub.CommitBudget(req, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    async def release(self, hold: BudgetHold, reason: str) -> None:
        """Returns the whole estimate (the call failed before the provider produced anything).
        Idempotent.

        Raises:
            TollwayError: As the service reported it (FailedPrecondition when committed).
        """
        try:
            await self._stub.ReleaseBudget(
                budget_pb2.ReleaseBudgetRequest(name=hold.name, reason=reason[:64]), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
