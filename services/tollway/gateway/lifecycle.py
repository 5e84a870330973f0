"""The life of one admitted request: cache, route, stream, store, record.

Pure orchestration over domain values. service.py authenticates, checks the fields and
translates the proto into a :class:`~tollway.gateway.request.GatewayRequest` first; gRPC
stays there and in the *_client modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from tollway.common.caching import CacheMode, CacheTier
from tollway.common.catalog import Catalog
from tollway.common.chat import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ResponseFormat,
    TextDelta,
    ToolCall,
    Usage,
    merge_deltas,
)
from tollway.common.route import RouteCompleted, RouteEvent, RouteStarted, StreamFailed
from tollway.gateway import metrics
from tollway.gateway.auth import KeyRing
from tollway.gateway.budget_client import BudgetHold
from tollway.gateway.budgeting import Admission, Budgeting, settlement
from tollway.gateway.cache_client import CacheClient, CacheHit, CacheRequest, cacheable
from tollway.gateway.calllog import CallLog
from tollway.gateway.callrecord import CallRecord
from tollway.gateway.grounding import ground, query_of
from tollway.gateway.guard import metrics as guard_metrics
from tollway.gateway.guard.decisions import GuardRejected, GuardTooLarge
from tollway.gateway.guard.output import OutputGuard
from tollway.gateway.guard.structured import StructuredOutputInvalid, compile_format, generate_structured
from tollway.gateway.guarding import GuardRun, Guards, structured_instruction
from tollway.gateway.prompts_client import PromptsClient, ResolvedPrompt
from tollway.gateway.request import GatewayRequest
from tollway.gateway.retrieval_client import Citation, Context, RetrievalClient, assemble_context
from tollway.gateway.router_client import RouterClient
from tollway.gateway.store import GatewayStore
from tollway.gateway.validation import Limits, check_resolved
from tollway.mesh import tracing
from tollway.mesh.errors import FailedPrecondition, ResourceExhausted, TollwayError, Unavailable
from tollway.mesh.frozen import frozen
from tollway.mesh.streams import coalesce

log = logging.getLogger("tollway.gateway")

# How long a finished call's settlement (the budget's commit or release) waits, together with
# the others of that moment, before it starts. Started as soon as the call ends, it ran while the
# answer was still on its way out and while the next request came in: waiting 20 ms cut what
# budgets add to a request by 0.03-0.15 ms at p50 on the native path (bench/stack_ab.py).
# Holds stay that much longer; the budget's exactness does not change.
SETTLE_DELAY_S = 0.02

# A cached answer is replayed in pieces of about this many characters, cut after whitespace.
_REPLAY_PIECE = re.compile(r".{1,48}(?:\s+|$)|\S+", re.DOTALL)


@frozen
class Started:
    """The answer begins: who answers, and whether the cache did (``degraded`` for a stale fallback).

    ``fallback_path`` names the models left before ``model`` answered (empty when the
    requested model answered), so a caller always sees when another model stood in.
    ``budget`` is the reservation the answer runs on (None for a cached answer, or when no
    budget applies), for the remaining-budget headers. ``prompt`` is the prompt version the
    messages were rendered from (None without a ``prompt_ref``), for the event and headers.
    """

    request_id: str
    model: str
    provider: str
    attempt_count: int
    cache_tier: CacheTier
    degraded: bool = False
    fallback_path: tuple[str, ...] = ()
    budget: BudgetHold | None = None
    prompt: ResolvedPrompt | None = None


@frozen
class Completed:
    """The answer is complete; ``ttft_ms`` is the whole latency when no text came."""

    finish_reason: FinishReason
    usage: Usage
    cost_usd_micros: int
    latency_ms: int
    ttft_ms: int
    fallback_path: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()


@frozen
class ToolCallDelta:
    """A piece of a tool call: ``id`` and ``name`` on a call's first piece, then argument text.

    The router hands over whole calls (its stream has no tool-call event yet), so each call
    is one piece today; clients join fragments by ``index`` either way.
    """

    index: int
    id: str
    name: str
    arguments_fragment: str


@frozen
class Failed:
    """The answer broke off after Started (``code`` is a gRPC status code number)."""

    code: int
    message: str
    reason: str
    partial_usage: Usage


@frozen
class Cited:
    """The sources of a grounded answer, sent right after Started and before any text."""

    citations: tuple[Citation, ...]


GatewayEvent = Started | Cited | TextDelta | ToolCallDelta | Completed | Failed


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _released(call: _Call, guard: OutputGuard | None, guarded: str) -> TextDelta | None:
    """Notes text the output guard released (kept guarded for the cache and the record) and
    returns the delta for the client, placeholders mapped back; None when nothing was released."""
    if not guarded:
        return None
    call.first_text()
    call.parts.append(guarded)
    return TextDelta(guard.restore(guarded) if guard is not None else guarded)


def replay_pieces(text: str) -> list[str]:
    """Splits a cached answer into stream pieces that join back to exactly ``text``."""
    return _REPLAY_PIECE.findall(text) or [text]


@dataclasses.dataclass
class _Call:
    """What one request has seen so far (for the stream, the cache store and the record)."""

    chat: ChatRequest
    start: float
    record: CallRecord
    prompt: ResolvedPrompt | None = None
    parts: list[str] = dataclasses.field(default_factory=list)
    ttft_ms: int = 0
    usage: Usage = dataclasses.field(default_factory=Usage)
    cost: int = 0
    status: str = "OK"
    started: bool = False
    # The budget's view: what was reserved, and how the router's answer ended.
    admission: Admission | None = None
    # The prompt's tokens when the gateway counted them (the context fit, the budget
    # estimate), passed on so that the router does not count them again; 0: not counted.
    prompt_tokens: int = 0
    routed: bool = False
    completed: bool = False
    failed: bool = False
    # The sources of a grounded answer (empty without retrieval).
    citations: tuple[Citation, ...] = ()
    # The guards' state (None when this gateway runs without guards).
    guard: GuardRun | None = None
    # The span of the router's stream (tollway.mesh.tracing), ended with the record.
    stream_span: tracing.Span | None = None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.start) * 1000)

    def first_text(self) -> None:
        if not self.parts:
            self.ttft_ms = self.elapsed_ms()
            metrics.TTFT_SECONDS.observe(self.ttft_ms / 1000)


class Gateway:
    """Runs requests end to end; one instance per gateway process."""

    def __init__(
        self,
        keys: KeyRing,
        router: RouterClient | None,
        store: GatewayStore,
        limits: Limits,
        request_timeout_s: float,
        catalog: Catalog,
        cache: CacheClient | None = None,
        budget: Budgeting | None = None,
        prompts: PromptsClient | None = None,
        retrieval: RetrievalClient | None = None,
        guards: Guards | None = None,
        settle_delay_s: float = SETTLE_DELAY_S,
    ) -> None:
        self.catalog = catalog
        self.prompts = prompts
        self.retrieval = retrieval
        self.guards = guards
        self.keys = keys
        self.router = router
        self.budget = budget
        self.cache = cache
        self.store = store
        self.calls = CallLog(store)
        self.limits = limits
        self.request_timeout_s = request_timeout_s
        self.settle_delay_s = settle_delay_s
        self._background: set[asyncio.Task[None]] = set()
        self._settling: list[Coroutine[Any, Any, None]] = []
        self._settle_timer: asyncio.TimerHandle | None = None
        metrics.BACKGROUND_TASKS.set_function(lambda: len(self._background) + len(self._settling))

    async def generate(
        self, request: GatewayRequest, timeout_s: float | None = None, *, stream: bool = True
    ) -> AsyncIterator[GatewayEvent]:
        """Streams Started, TextDelta..., then Completed or Failed.

        With ``stream=False`` (a caller that wants the whole answer) the router is asked
        for the whole answer in one message, and the text arrives as a single delta.

        Errors before Started are raised as TollwayError (the caller turns them into a
        status); after Started they arrive as Failed. When every provider failed and the
        cache holds a stale answer within its grace period, that answer is served instead,
        marked degraded.

        With a budget, a request the cache cannot answer reserves its estimate right before
        the router call (a refusal is raised as ResourceExhausted and reaches no provider),
        and the router is asked for at most the granted max_tokens. Whatever happens next
        settles the reservation exactly once, off the response path: a complete answer
        commits the provider's usage, a cut stream or a client that went away commits what
        was produced (partial), a failure with no output releases it. A cache hit reserves
        nothing; what it saved is recorded.

        A ``prompt_ref`` is resolved first (sticky per user for A/B variants) and applied:
        the cache key, the budget estimate and the router all see the rendered request, and
        the key holds the exact version number, so a new version or a moved label never
        serves another version's answers. Its refusals (NOT_FOUND, INVALID_ARGUMENT naming
        ``prompt_ref.*`` fields, UNAVAILABLE ``PROMPTS_UNAVAILABLE``) are raised as they come.

        Args:
            request: The checked request.
            timeout_s: Seconds the caller will wait, or None; the gateway's own request
                timeout caps it either way.
            stream: Whether the caller streams the answer.
        """
        start = time.perf_counter()
        if request.prompt_ref is not None:
            request = await self._with_prompt(request)
        guard: GuardRun | None = None
        if self.guards is not None:
            # Before retrieval, the cache and the budget: a refusal spends nothing, and the key
            # and prompt_hash are taken over the guarded (redacted) turns.
            guard = self._guard_input(request, start)
            if guard.chat is not request.chat:
                request = dataclasses.replace(request, chat=guard.chat)
        vector: list[float] | None = None
        context: Context | None = None
        if request.retrieval is not None:
            request, context, vector = await self._ground(request)
        chat = request.chat
        call = _Call(chat, start, self._record(request), request.prompt)
        call.guard = guard
        if context is not None:
            call.citations = tuple(context.citations)
            assert request.retrieval is not None
            call.record.retrieval_collection = request.retrieval.collection
            call.record.cited_documents = tuple(context.document_ids)
        call.record.note_request(request.api_key_id, chat.temperature, chat.max_tokens, self.catalog.version)
        cache_req: CacheRequest | None = None
        if self.cache is not None and request.cache.mode is not CacheMode.BYPASS and cacheable(chat):
            cache_req = CacheRequest.of(request)
            call.record.cache_namespace = cache_req.namespace
        try:
            lookup = await self.cache.lookup(cache_req, vector) if self.cache and cache_req else None
            if lookup is not None and lookup.hit is not None:
                hit = lookup.hit
                async for event in self._replay(call, hit, degraded=False, stream=stream):
                    yield event
                if hit.sample_for_quality and hit.tier is CacheTier.SEMANTIC:
                    self._later(self._quality_sample(cache_req, hit))  # type: ignore[arg-type]
                if self.budget is not None:
                    self._later(self.budget.record_saved(request, hit.model, hit.usage, hit.tier.value))
                return
            tier = CacheTier.MISS if cache_req else CacheTier.NOT_CONSULTED
            call.record.cache_tier = tier
            entry = self.catalog.resolve(chat.model)
            if self.guards is not None and guard is not None and entry is not None:
                # Before the estimate: the budget reserves what is sent. The cache keeps the
                # untrimmed request's key.
                call.chat = await self.guards.fit(guard, call.chat, entry.context_window, charge=request)
                if call.chat is not request.chat:
                    request = dataclasses.replace(request, chat=call.chat)
            if call.chat.response_format.wants_json and not call.chat.tools:
                async for event in self._structured(call, request, timeout_s, tier):
                    yield event
                return
            # The context fit counted the prompt it sends on: the estimate and the router take that count.
            counted = guard.trim.input_tokens_after if guard is not None and guard.trim is not None else None
            if self.budget is not None:
                call.admission = await self.budget.admit(request, counted=counted)
                counted = call.admission.input_tokens
                if call.admission.max_tokens != call.chat.max_tokens:
                    call.chat = dataclasses.replace(call.chat, max_tokens=call.admission.max_tokens)
            call.prompt_tokens = counted or 0
            try:
                async for event in self._from_router(call, timeout_s, tier, stream):
                    yield event
            except (Unavailable, ResourceExhausted) as exc:
                # Every provider of the chain is down or rate-limiting: a stale answer beats none.
                if not call.started and self.cache is not None and cache_req is not None:
                    # Nothing was produced: the reservation goes back before the stale answer.
                    call.status = exc.reason
                    self._settle(call)
                    stale = await self.cache.lookup_stale(cache_req, lookup.vector if lookup else None)
                    if stale is not None:
                        call.status = "DEGRADED"
                        async for event in self._replay(
                            call, dataclasses.replace(stale, tier=CacheTier.STALE), degraded=True, stream=stream
                        ):
                            yield event
                        return
                raise
            complete = call.status == "OK" and call.record.finish_reason in ("stop", "length")
            if cache_req is not None and complete and self.cache is not None:
                self._later(
                    self.cache.store(
                        cache_req,
                        lookup.vector if lookup else None,
                        "".join(call.parts),
                        call.usage,
                        call.record.model,
                        call.record.provider,
                        call.record.finish_reason,
                        context.document_ids if context is not None else (),
                    )
                )
        except TollwayError as exc:
            call.status, call.record.error_message = exc.reason, exc.message
            call.failed = call.routed
            if not call.started:
                raise
            # The stream has begun: the failure travels in-band, where SSE clients can see it.
            yield Failed(exc.code.value[0], exc.message, exc.reason, call.usage)
        except asyncio.CancelledError:
            call.status = "CANCELLED"
            raise
        finally:
            # Also reached when the consumer stops iterating (GeneratorExit): the client went away.
            if request.settle_before_answer:
                # The caller's answer waits for this (it is read to its end first): no window in
                # which the gateway has answered but not billed.
                await self._settle_now(call)
            else:
                self._settle(call)
            self._finish_record(call)

    def _guard_input(self, request: GatewayRequest, start: float) -> GuardRun:
        """The input guard's verdict on ``request``; a refusal is recorded, counted and raised.

        Raises:
            GuardTooLarge, GuardRejected: As the input guard raised them (nothing was spent).
        """
        assert self.guards is not None
        try:
            return self.guards.check_input(request.chat, request.chat.tenant, request.api_key_id)
        except (GuardRejected, GuardTooLarge) as exc:
            guard_metrics.observe_decisions(exc.decisions)
            record = self._record(request)  # prompt_hash is a digest; the turns themselves are not kept
            record.note_request(
                request.api_key_id, request.chat.temperature, request.chat.max_tokens, self.catalog.version
            )
            record.status, record.error_message = exc.reason, exc.message
            record.guard_decisions = tuple(d.text() for d in exc.decisions)
            record.latency_ms = int((time.perf_counter() - start) * 1000)
            metrics.observe_request(record)
            self.calls.add(record)
            raise

    async def _structured(
        self, call: _Call, request: GatewayRequest, timeout_s: float | None, tier: CacheTier
    ) -> AsyncIterator[GatewayEvent]:
        """A JSON answer: the attempt loop of :func:`generate_structured`, then the JSON in one delta.

        The model is asked to enforce the format when its catalog entry has the "json"
        capability (llama.cpp compiles the schema into a grammar; hosted providers use
        their structured outputs); otherwise the schema goes in as a system turn. Either way
        the answer is parsed leniently and validated, and a failure is fed back for at most
        two more calls. Each call reserves and settles its own budget, so retries are charged.
        Nothing is streamed before the answer is valid: a retry replaces the answer, and text
        already sent cannot be taken back.

        Raises:
            StructuredOutputInvalid: INTERNAL ``STRUCTURED_OUTPUT_INVALID`` after the last attempt.
            TollwayError: A budget refusal or the router's failure, as they came.
        """
        assert self.router is not None
        timeout = min(timeout_s, self.request_timeout_s) if timeout_s else self.request_timeout_s
        chat = call.chat
        compiled = compile_format(chat.response_format)
        assert compiled is not None
        entry = self.catalog.resolve(chat.model)
        enforced = entry is not None and "json" in entry.capabilities
        if not enforced:
            schema = chat.response_format.schema
            turn = structured_instruction(json.dumps(schema) if schema is not None else None)
            chat = dataclasses.replace(chat, response_format=ResponseFormat(), messages=(turn, *chat.messages))
        first: list[RouteStarted] = []
        attempts = 0

        async def attempt(turns: tuple[ChatMessage, ...]) -> str:
            nonlocal attempts
            attempts += 1
            asked = dataclasses.replace(chat, messages=turns)
            # A retry is its own charge: the budget takes one reservation per request id (the
            # ledger shows "<id>:2", "<id>:3").
            charge_id = chat.request_id if attempts == 1 else f"{chat.request_id[:60]}:{attempts}"
            parts: list[str] = []
            done: RouteCompleted | None = None
            try:
                answer = self._charged_answer(request, asked, charge_id, timeout, "structured_attempt")
                async with contextlib.aclosing(answer) as events:
                    async for event in events:
                        if isinstance(event, RouteStarted):
                            if not first:
                                first.append(event)
                        elif isinstance(event, TextDelta):
                            parts.append(event.text)
                        elif isinstance(event, RouteCompleted):
                            done = event
                        elif isinstance(event, StreamFailed):
                            raise Unavailable(event.message, reason=event.reason)
            finally:
                call.usage = call.usage + (done.usage if done is not None else Usage())
                call.cost += done.cost_usd_micros if done is not None else 0
            return "".join(parts)

        model_name = chat.model
        try:
            result = await generate_structured(attempt, chat.messages, compiled, model=model_name)
        except StructuredOutputInvalid as exc:
            if call.guard is not None:
                call.guard.structured = f"failedx{exc.attempts}"
            guard_metrics.observe_structured(model_name, exc.attempts, False, False)
            raise
        how = "retried" if result.attempts > 1 else "repaired" if result.repaired else "valid"
        if call.guard is not None:
            call.guard.structured = how + (f"x{result.attempts}" if result.attempts > 1 else "")
        guard_metrics.observe_structured(model_name, result.attempts, result.repaired, True)
        started = first[0]
        record = call.record
        record.model, record.provider = started.model, started.provider
        record.attempts, record.deployment = started.attempt_count, started.deployment
        record.fallback_path = " > ".join(started.fallback_path)
        record.finish_reason = "stop"
        call.started = call.routed = call.completed = True
        yield Started(
            call.chat.request_id,
            started.model,
            started.provider,
            started.attempt_count,
            tier,
            False,
            started.fallback_path,
            None,
            call.prompt,
        )
        if call.citations:
            yield Cited(call.citations)
        guard = call.guard.output_guard() if call.guard is not None else None
        for piece in (guard.feed(result.text), guard.flush()) if guard else (result.text,):
            delta = _released(call, guard, piece)
            if delta is not None:
                yield delta
        latency_ms = call.elapsed_ms()
        yield Completed("stop", call.usage, call.cost, latency_ms, call.ttft_ms or latency_ms, started.fallback_path)

    async def summarise(
        self, turns: tuple[ChatMessage, ...], max_tokens: int, charge: GatewayRequest | None = None
    ) -> str:
        """Condenses ``turns`` through the router's small tier (the context guard's summariser).

        With ``charge`` (the request the summary serves) and budgets on, the call is reserved and
        settled under that request's tenant, key, feature and conversation, as
        ``<request id>:summary``; a refusal fails the summary (the context guard then drops the
        turns, and the request's own reservation meets the same quota). A summary the context
        guard's cache already holds costs nothing.
        """
        assert self.router is not None
        model = self.catalog.routing.tiers.get("small", "auto")
        ask = ChatRequest(
            model,
            (
                ChatMessage(
                    "system",
                    "Summarise the conversation below in a few sentences: keep names, numbers, decisions and "
                    "open questions; write nothing else.",
                ),
                ChatMessage("user", "\n\n".join(f"{m.role}: {m.content}" for m in turns)),
            ),
            max_tokens=max_tokens,
        )
        parts: list[str] = []
        if charge is None:
            answer = self.router.complete(ask, self.request_timeout_s)
        else:
            asked = dataclasses.replace(ask, tenant=charge.chat.tenant)
            charge_id = f"{charge.chat.request_id[:60]}:summary"
            answer = self._charged_answer(charge, asked, charge_id, self.request_timeout_s, "context_summary")
        async with contextlib.aclosing(answer) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, StreamFailed):
                    raise Unavailable(event.message, reason=event.reason)
        return "".join(parts).strip()

    async def _charged_answer(
        self, request: GatewayRequest, asked: ChatRequest, charge_id: str, deadline_s: float, reason: str
    ) -> AsyncIterator[RouteEvent]:
        """The router's events for a whole answer to ``asked``, reserved first under ``request``'s
        budget as ``charge_id`` and settled off the path whatever happens (read it under
        ``contextlib.aclosing``, so a consumer that stops early settles at once).

        ``asked`` keeps its own request id for the provider: llama.cpp's server refuses an
        ``x-request-id`` that is not a UUID, and a charge id is "<id>:<n>".

        Raises:
            ResourceExhausted, Unavailable, InvalidArgument: The budget's refusal, before any call.
        """
        assert self.router is not None
        admission: Admission | None = None
        if self.budget is not None:
            charged = dataclasses.replace(asked, request_id=charge_id)
            admission = await self.budget.admit(dataclasses.replace(request, chat=charged))
            asked = dataclasses.replace(asked, max_tokens=admission.max_tokens)
        parts: list[str] = []
        done: RouteCompleted | None = None
        started: RouteStarted | None = None
        try:
            async for event in self.router.complete(asked, deadline_s):
                if isinstance(event, RouteStarted):
                    started = event
                elif isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, RouteCompleted):
                    done = event
                yield event
        finally:
            if admission is not None and self.budget is not None:
                outcome = settlement(
                    completed=done is not None,
                    failed=done is None and started is not None,
                    routed=started is not None,
                    usage=done.usage if done is not None else Usage(),
                    produced_text="".join(parts),
                    input_tokens=admission.input_tokens,
                    reason=reason,
                )
                model = started.model if started is not None and started.model != asked.model else ""
                provider = started.provider if started is not None else ""
                self._later(self.budget.settle(admission, outcome, model=model, provider=provider))

    async def _ground(self, request: GatewayRequest) -> tuple[GatewayRequest, Context, list[float] | None]:
        """``request`` grounded in its collection, the context used, and the query's vector.

        The query is embedded once, by the cache's embedder, and that vector serves the
        search and (later) the semantic tier; a collection with another embedding model
        makes the retrieval service embed the query itself.

        Raises:
            FailedPrecondition: This gateway runs without a retrieval service.
            NotFound, InvalidArgument, Unavailable: The retrieval service's refusal (unknown
                collection, bad filter) or absence, before anything is spent.
        """
        spec = request.retrieval
        assert spec is not None
        if self.retrieval is None:
            raise FailedPrecondition(
                "this gateway runs without a retrieval service (TOLLWAY_GATEWAY_RETRIEVAL_ADDR is empty); "
                "send the request without retrieval",
                reason="RETRIEVAL_NOT_CONFIGURED",
            )
        query = query_of(request.chat)
        vector = await self.cache.embed(query) if self.cache is not None else None
        model = self.cache.embedding_model if self.cache is not None and vector is not None else ""
        chunks = await self.retrieval.search(
            spec.collection,
            query,
            top_k=spec.top_k,
            filters=spec.filters,
            query_embedding=vector or (),
            query_embedding_model=model,
        )
        context = assemble_context(chunks, spec.max_context_tokens)
        metrics.RETRIEVED_CHUNKS.observe(len(context.citations))
        # The cache's vector is of the last message; reuse it only when that was the query.
        same_query = request.chat.messages[-1].content == query
        return dataclasses.replace(request, chat=ground(request.chat, context)), context, vector if same_query else None

    async def _with_prompt(self, request: GatewayRequest) -> GatewayRequest:
        """``request`` with its prompt_ref resolved and applied, checked again as a whole.

        Raises:
            FailedPrecondition: This gateway runs without a prompt store.
            InvalidArgument, NotFound, Unavailable: The prompt store's refusal, as it came;
                or the request and the prompt together break a request limit.
        """
        ref = request.prompt_ref
        assert ref is not None
        if self.prompts is None:
            raise FailedPrecondition(
                "this gateway runs without a prompt store (TOLLWAY_GATEWAY_PROMPTS_ADDR is empty); "
                "send messages instead of prompt_ref",
                reason="PROMPTS_NOT_CONFIGURED",
            )
        # The tenant pins, the user keeps one A/B arm (the tenant does without a user).
        prompt = await self.prompts.resolve(ref, tenant=request.chat.tenant, user=request.user)
        chat = prompt.apply(request.chat)
        if not chat.max_tokens:
            # Neither the request nor the version set one: the gateway's default, as without a prompt.
            chat = dataclasses.replace(chat, max_tokens=self.limits.default_max_tokens)
        check_resolved(chat, self.limits, prompt.template)
        return dataclasses.replace(request, chat=chat, prompt=prompt)

    def _settle(self, call: _Call) -> None:
        """Commits or releases the call's reservation, once, in a task of its own (a client
        that goes away cancels the request, never the settlement), after ``settle_delay_s``
        with the other settlements of that moment."""
        work = self._settlement(call)
        if work is None:
            return
        self._settling.append(work)
        if self._settle_timer is None:
            self._settle_timer = asyncio.get_running_loop().call_later(self.settle_delay_s, self._start_settling)

    def _start_settling(self) -> None:
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        works, self._settling = self._settling, []
        for work in works:
            self._later(work)

    async def _settle_now(self, call: _Call) -> None:
        """:meth:`_settle`, awaited; shielded, so a caller that goes away does not cancel it."""
        work = self._settlement(call)
        if work is not None:
            await asyncio.shield(asyncio.ensure_future(work))

    def _settlement(self, call: _Call) -> Coroutine[Any, Any, None] | None:
        """The work that settles the call's reservation, once (None when there is none)."""
        admission, call.admission = call.admission, None
        if admission is None or self.budget is None:
            return None
        outcome = settlement(
            completed=call.completed,
            failed=call.failed,
            routed=call.routed,
            usage=call.usage,
            produced_text="".join(call.parts),
            input_tokens=admission.input_tokens,
            reason=call.status.lower() if call.status != "OK" else "cancelled",
        )
        model = call.record.model if call.record.model and call.record.model != call.chat.model else ""
        return self.budget.settle(admission, outcome, model=model, provider=call.record.provider)

    async def _from_router(
        self, call: _Call, timeout_s: float | None, tier: CacheTier, stream: bool
    ) -> AsyncIterator[GatewayEvent]:
        timeout = min(timeout_s, self.request_timeout_s) if timeout_s else self.request_timeout_s
        assert self.router is not None, "Gateway.router is set when the service starts"
        fallback: tuple[str, ...] = ()
        # Not made current: it would stay attached across this generator's yields.
        call.stream_span = tracing.start("gateway", "stream", **{"tollway.stream": stream})
        record = call.record
        if stream:
            events = coalesce(self.router.generate(call.chat, timeout, prompt_tokens=call.prompt_tokens), merge_deltas)
        else:
            events = self.router.complete(call.chat, timeout, prompt_tokens=call.prompt_tokens)
        guard = call.guard.output_guard() if call.guard is not None else None
        async for event in events:
            if isinstance(event, TextDelta):
                delta = _released(call, guard, guard.feed(event.text) if guard else event.text)
                if delta is not None:
                    yield delta
                continue
            if guard is not None and isinstance(event, RouteCompleted | StreamFailed):
                delta = _released(call, guard, guard.flush())
                if delta is not None:
                    yield delta
            if isinstance(event, RouteStarted):
                record.model, record.provider = event.model, event.provider
                record.attempts, record.deployment = event.attempt_count, event.deployment
                record.fallback_path = " > ".join(event.fallback_path)
                if event.decision is not None:
                    record.route_method, record.route_reason = event.decision.how, event.decision.reason
                fallback = event.fallback_path
                call.started = call.routed = True
                hold = call.admission.hold if call.admission else None
                yield Started(
                    call.chat.request_id,
                    event.model,
                    event.provider,
                    event.attempt_count,
                    tier,
                    False,
                    fallback,
                    hold,
                    call.prompt,
                )
                if call.citations:
                    yield Cited(call.citations)
            elif isinstance(event, RouteCompleted):
                call.completed = True
                call.usage = event.usage
                # The router prices with everything it knows (cache writes included).
                call.cost = event.cost_usd_micros
                record.finish_reason = event.finish_reason
                record.tools_called = tuple(t.name for t in event.tool_calls)
                record.usage_from_provider = event.usage_reported
                for tool_call in event.tool_calls:
                    yield ToolCallDelta(tool_call.index, tool_call.id, tool_call.name, tool_call.arguments)
                latency_ms = call.elapsed_ms()
                yield Completed(
                    event.finish_reason,
                    event.usage,
                    call.cost,
                    latency_ms,
                    call.ttft_ms or latency_ms,
                    fallback,
                    event.tool_calls,
                )
            elif isinstance(event, StreamFailed):
                call.failed = True
                call.status, call.usage = event.reason, event.partial_usage
                record.error_message = event.message
                call.cost = self._price(record.model, event.partial_usage)
                yield Failed(event.code, event.message, event.reason, event.partial_usage)

    def _price(self, model: str, usage: Usage) -> int:
        """What ``usage`` of ``model`` cost (the router prices complete answers itself)."""
        entry = self.catalog.resolve(model)
        if entry is None:
            return 0
        return entry.price.cost_usd_micros(
            usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens
        )

    async def _replay(self, call: _Call, hit: CacheHit, *, degraded: bool, stream: bool) -> AsyncIterator[GatewayEvent]:
        """Streams a cached answer as a fresh one would arrive (in one piece when nobody streams it)."""
        record = call.record
        record.model, record.provider = hit.model, hit.provider
        record.cache_tier, record.cache_entry = hit.tier, hit.entry_id
        call.started = True
        yield Started(call.chat.request_id, hit.model, hit.provider, 0, hit.tier, degraded, prompt=call.prompt)
        if call.citations:
            yield Cited(call.citations)
        guard = call.guard.output_guard() if call.guard is not None else None
        for piece in replay_pieces(hit.text) if stream else [hit.text]:
            delta = _released(call, guard, guard.feed(piece) if guard else piece)
            if delta is not None:
                yield delta
        if guard is not None:
            delta = _released(call, guard, guard.flush())
            if delta is not None:
                yield delta
        latency_ms = call.elapsed_ms()
        yield Completed(hit.finish_reason, Usage(), 0, latency_ms, call.ttft_ms or latency_ms)

    async def _quality_sample(self, cache_req: CacheRequest, hit: CacheHit) -> None:
        """Answers a semantic hit's request fresh, off the response path, and reports agreement."""
        assert self.router is not None and self.cache is not None
        parts: list[str] = []
        try:
            async for event in self.router.generate(cache_req.chat, self.request_timeout_s):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, StreamFailed):
                    return
        except TollwayError:
            return
        token_f1 = await self.cache.record_quality(cache_req.namespace, hit, "".join(parts))
        if token_f1 is not None:
            # Agreement per model and prompt version too, beside the cache's per-namespace mean.
            self.calls.add_agreement(
                cache_req.tenant,
                cache_req.namespace,
                hit.model,
                cache_req.prompt_template,
                cache_req.prompt_version,
                token_f1,
            )

    @staticmethod
    def _record(request: GatewayRequest) -> CallRecord:
        chat = request.chat
        prompt = request.prompt
        if prompt is None:
            return CallRecord.begin(
                chat.request_id,
                chat.tenant,
                request.feature,
                request.user,
                chat.model,
                _digest(repr([(m.role, m.content) for m in chat.messages])),
            )
        # With a stored prompt the hash names its content (the version's content hash), so
        # records group by prompt text whatever the variables; template and version say which.
        return CallRecord.begin(
            chat.request_id,
            chat.tenant,
            request.feature,
            request.user,
            chat.model,
            prompt.content_hash,
            prompt_template=prompt.template,
            prompt_version=str(prompt.version),
        )

    def _finish_record(self, call: _Call) -> None:
        record = call.record
        record.input_tokens = call.usage.input_tokens
        record.output_tokens = call.usage.output_tokens
        record.cached_tokens = call.usage.cached_input_tokens
        record.cost_usd = call.cost / 1e6
        record.latency_ms = call.elapsed_ms()
        record.ttft_ms = call.ttft_ms
        record.status = call.status
        if call.stream_span is not None or tracing.enabled():
            attributes = {
                "tollway.model": record.model,
                "tollway.provider": record.provider,
                "tollway.cache.tier": record.cache_tier.value,
                "tollway.tokens.input": record.input_tokens,
                "tollway.tokens.output": record.output_tokens,
                "tollway.cost_usd": record.cost_usd,
                "tollway.ttft_ms": record.ttft_ms,
                "tollway.attempts": record.attempts,
                "tollway.status": record.status,
            }
            tracing.end(call.stream_span, "" if call.status in ("OK", "DEGRADED") else call.status, **attributes)
            tracing.annotate(None, attributes)  # the RPC's server span: the request as a whole
        call.stream_span = None
        # What is left waits for the loop's next turn: this runs while the answer is on its way
        # out (a whole answer is sent in this same turn), and the client need not wait for it.
        asyncio.get_running_loop().call_soon(self._file_record, call)

    def _file_record(self, call: _Call) -> None:
        """Completes a finished call's record (its answer's hash, the guards' decisions) and
        files it: metrics, then the call log."""
        record = call.record
        answer = "".join(call.parts)
        record.response_hash = _digest(answer) if call.parts else ""
        if call.guard is not None:
            record.guard_decisions = call.guard.record_items()
            call.guard.observe(record.model or call.chat.model)
        metrics.observe_request(record)
        self.calls.add(record, call.chat.messages, answer)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        # Off the response path: the client has its answer before this runs.
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Waits for settlements, cache stores and call records still waiting (used at shutdown)."""
        await asyncio.sleep(0)  # the records of calls that just ended are filed on the loop's next turn
        self._start_settling()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.calls.close()
