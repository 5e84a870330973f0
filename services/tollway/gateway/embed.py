"""Embeddings through the gateway: the same key, checks, budget and call record as chat.

The embedding service makes the vectors; this module decides what a request may ask, counts
its tokens (:mod:`tollway.common.tokens`, the counter chat budgets use), reserves them with
the gateway's :class:`~tollway.gateway.budgeting.Budgeting` before the model runs and settles
after, prices the call and writes its call record.

Budget and price: the budget service prices models of the catalog, which lists chat models
only. An embedding model that the catalog names is reserved and priced as itself; any other
(the self-hosted MiniLM) is reserved and priced as ``TOLLWAY_GATEWAY_EMBEDDING_BUDGET_MODEL``,
else as the catalog's self-hosted last-resort model (``routing.last_resort``, the local
compute's price), so request and token quotas apply to embeddings exactly as to chat. With
none of them, nothing is reserved and the cost is 0.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import grpc

from tollway.common.caching import CacheMode, CachePolicy
from tollway.common.catalog import Catalog
from tollway.common.chat import ChatMessage, ChatRequest, Usage
from tollway.common.tokens import count_tokens
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.gateway import metrics
from tollway.gateway.auth import Tenant
from tollway.gateway.budget_client import BudgetHold
from tollway.gateway.budgeting import Admission, Budgeting, Settlement
from tollway.gateway.calllog import CallLog
from tollway.gateway.callrecord import CallRecord
from tollway.gateway.request import GatewayRequest, check_budget_fields
from tollway.gateway.validation import Limits
from tollway.mesh.errors import InvalidArgument, TollwayError, Unavailable, from_rpc_error
from tollway.mesh.frozen import frozen

# The embedding service's own limit on texts per call (EmbedRequest.texts).
MAX_INPUTS = 256
PROVIDER = "embedding"


@frozen
class EmbedCall:
    """One embeddings request, as the client sent it (not yet checked)."""

    model: str
    inputs: tuple[str, ...]
    dimensions: int = 0
    user: str = ""
    feature: str = ""
    request_id: str = ""
    priority: str = ""


@frozen
class EmbedResult:
    """The vectors and what they cost; ``reply`` is the embedding service's answer, kept as
    it came so the vectors are not copied on their way out; ``hold`` is the reservation the
    call ran on (for the remaining-budget headers), None without one."""

    request_id: str
    model: str
    reply: embedding_pb2.EmbedResponse
    usage: Usage
    cost_usd_micros: int
    hold: BudgetHold | None = None


def check(call: EmbedCall, limits: Limits) -> None:
    """Checks every field before anything is spent.

    Raises:
        InvalidArgument: Listing each bad field (``inputs[3]``, ``dimensions``...).
    """
    bad: list[tuple[str, str]] = []
    if not call.inputs:
        bad.append(("inputs", "at least one text is required"))
    elif len(call.inputs) > MAX_INPUTS:
        bad.append(("inputs", f"at most {MAX_INPUTS} texts per request, got {len(call.inputs)}"))
    total = 0
    for i, text in enumerate(call.inputs):
        if not text:
            bad.append((f"inputs[{i}]", "must not be empty"))
        total += len(text)
    if total > limits.max_input_chars:
        bad.append(("inputs", f"{total} characters in all; the limit is {limits.max_input_chars}"))
    if call.dimensions < 0:
        bad.append(("dimensions", f"must be 0 (the model's) or more, got {call.dimensions}"))
    if len(call.model) > 128:
        bad.append(("model", "at most 128 characters"))
    if len(call.user) > 128:
        bad.append(("user", "at most 128 characters"))
    if len(call.feature) > 64:
        bad.append(("feature", "at most 64 characters"))
    if call.request_id and (len(call.request_id) > 64 or not call.request_id.replace("-", "").isalnum()):
        bad.append(("request_id", "1 to 64 characters of letters, digits and -"))
    if bad:
        fields = ", ".join(f for f, _ in bad)
        raise InvalidArgument(f"invalid request: {bad[0][0]}: {bad[0][1]} (problems in: {fields})", bad)


def count_input_tokens(inputs: Sequence[str]) -> int:
    """The tokens of the inputs, as OpenAI's ``usage.prompt_tokens`` counts them (no chat framing)."""
    return sum(count_tokens(text) for text in inputs)


class EmbeddingModels:
    """The embedding service's models (id -> vector length), fetched once and refreshed on a miss."""

    def __init__(self, stub: embedding_pb2_grpc.EmbeddingServiceStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._dims: dict[str, int] = {}
        self._default = ""

    async def dimension(self, model: str) -> tuple[str, int] | None:
        """``(model id, vector length)`` of ``model`` ("" = the default), or None when not served."""
        if not self._dims or (model and model not in self._dims):
            reply = await self._stub.ListModels(embedding_pb2.ListModelsRequest(), timeout=self._timeout_s)
            self._dims = {m.id: m.dimension for m in reply.models}
            self._default = reply.default_model
        name = model or self._default
        return (name, self._dims[name]) if name in self._dims else None


class Embedder:
    """Runs Embed calls for one gateway process.

    ``channel`` is set when the service starts (grpc.aio channels belong to their loop); until
    then, and without an embedding service, every call is UNAVAILABLE.

    Args:
        calls: Where call records go (the gateway's own log).
        catalog: The model catalog (prices, and the model embeddings are budgeted as).
        limits: The gateway's request limits.
        budget: The gateway's budgeting, or None without a budget service.
        timeout_s: Deadline of each embedding service call.
        budget_model: The catalog model embeddings are budgeted and priced as when the catalog
            does not list the embedding model ("": the catalog's ``routing.last_resort``).
    """

    def __init__(
        self,
        calls: CallLog,
        catalog: Catalog,
        limits: Limits,
        budget: Budgeting | None,
        timeout_s: float = 10.0,
        *,
        budget_model: str = "",
    ) -> None:
        self.budget_model = budget_model
        self.calls = calls
        self.catalog = catalog
        self.limits = limits
        self.budget = budget
        self.timeout_s = timeout_s
        self._stub: embedding_pb2_grpc.EmbeddingServiceStub | None = None
        self._models: EmbeddingModels | None = None
        self._background: set[asyncio.Task[None]] = set()

    def connect(self, channel: grpc.aio.Channel) -> None:
        """Uses ``channel`` for the embedding service from now on."""
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._models = EmbeddingModels(self._stub, self.timeout_s)

    def priced_as(self, model: str) -> str:
        """The catalog model an embedding model is budgeted and priced as ("" for none)."""
        if self.catalog.resolve(model) is not None:
            return model
        return self.budget_model or self.catalog.routing.last_resort

    async def embed(self, call: EmbedCall, tenant: Tenant, timeout_s: float | None = None) -> EmbedResult:
        """Checks, reserves, embeds, settles and records one request.

        Every path that reserved settles exactly once: a success commits the counted input
        tokens, a failure or a cancelled caller releases the whole reservation (the model's
        work is not billed when the client never got it).

        Raises:
            InvalidArgument: A bad field, or ``dimensions`` the model cannot give.
            NotFound: The embedding service does not serve ``model`` (reason UNKNOWN_MODEL).
            ResourceExhausted: The budget refused (QuotaFailure, retry-after).
            Unavailable: The embedding service cannot be reached.
        """
        check(call, self.limits)
        check_budget_fields(call.priority, "")
        stub, models = self._stub, self._models
        if stub is None or models is None:
            raise Unavailable(
                "this gateway has no embedding service (TOLLWAY_GATEWAY_EMBEDDING_ADDR is empty)",
                reason="EMBEDDING_UNAVAILABLE",
            )
        start = time.perf_counter()
        request_id = call.request_id or uuid.uuid4().hex
        record = CallRecord.begin(request_id, tenant.name, call.feature, call.user, call.model, "")
        record.provider = PROVIDER
        admission: Admission | None = None
        outcome = Settlement(None, reason="failed")
        try:
            model, dimension = await self._model(models, call.model)
            record.model = model
            if call.dimensions and call.dimensions != dimension:
                raise InvalidArgument(
                    f"model {model!r} makes vectors of {dimension} values and cannot shorten them; "
                    f"leave 'dimensions' out or set it to {dimension}",
                    [("dimensions", f"only {dimension} for {model}")],
                    reason="DIMENSIONS_UNSUPPORTED",
                    metadata={"model": model, "dimensions": str(dimension)},
                )
            tokens = count_input_tokens(call.inputs)
            usage = Usage(input_tokens=tokens)
            priced_as = self.priced_as(model)
            if self.budget is not None and priced_as:
                admission = await self.budget.admit(self._budget_request(call, tenant, request_id, priced_as))
            try:
                reply = await stub.Embed(
                    embedding_pb2.EmbedRequest(texts=call.inputs, model=model),
                    timeout=min(timeout_s, self.timeout_s) if timeout_s else self.timeout_s,
                )
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
            outcome = Settlement(usage)
            cost = self._price(priced_as, usage)
            record.input_tokens, record.cost_usd = tokens, cost / 1e6
            hold = admission.hold if admission is not None else None
            return EmbedResult(request_id, reply.model, reply, usage, cost, hold)
        except TollwayError as exc:
            record.status = exc.reason
            raise
        except asyncio.CancelledError:
            record.status = "CANCELLED"
            outcome = Settlement(None, reason="cancelled")
            raise
        finally:
            if admission is not None and self.budget is not None:
                self._later(self.budget.settle(admission, outcome, model="", provider=PROVIDER))
            record.latency_ms = int((time.perf_counter() - start) * 1000)
            metrics.observe_request(record)
            self.calls.add(record)

    async def _model(self, models: EmbeddingModels, model: str) -> tuple[str, int]:
        try:
            found = await models.dimension(model)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        if found is None:
            # The embedding service names the models it serves in its own NOT_FOUND.
            try:
                assert self._stub is not None
                await self._stub.Embed(embedding_pb2.EmbedRequest(texts=["x"], model=model), timeout=self.timeout_s)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
            raise Unavailable(f"the embedding service does not list model {model!r}", reason="EMBEDDING_UNAVAILABLE")
        return found

    @staticmethod
    def _budget_request(call: EmbedCall, tenant: Tenant, request_id: str, priced_as: str) -> GatewayRequest:
        # One user turn per input: the estimate (chat framing included) is a little above the
        # count committed, so the reservation always covers it. One output token: the least
        # the budget service reserves; the commit charges none.
        chat = ChatRequest(
            model=priced_as,
            messages=tuple(ChatMessage("user", text) for text in call.inputs),
            max_tokens=1,
            request_id=request_id,
            tenant=tenant.name,
        )
        priority = call.priority or tenant.priority
        return GatewayRequest(
            chat=chat,
            user=call.user,
            feature=call.feature,
            cache=CachePolicy(mode=CacheMode.BYPASS),
            api_key_id=tenant.key_id,
            priority=priority,  # type: ignore[arg-type]  # checked by check_budget_fields
        )

    def _price(self, priced_as: str, usage: Usage) -> int:
        entry = self.catalog.resolve(priced_as) if priced_as else None
        return entry.price.cost_usd_micros(usage.input_tokens, 0) if entry is not None else 0

    def _later(self, work: object) -> None:
        # The settlement runs in its own task: a caller that goes away cannot cancel it.
        task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Waits for settlements still running (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
