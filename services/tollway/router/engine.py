"""Routes one chat request through its fallback chain and streams the answer back.

For each model of the chain (the decided model, its catalog fallbacks, the last resort)
the router tries its deployments in the balancer's order, skipping those whose circuit
breaker is open (no network call), retrying as the request's policy allows, and falling
through to the next model when the policy gives up. Nothing reaches the caller until an
attempt produced its first text (or finished): a failure before that is invisible except
in ``fallback_path`` and ``attempt_count``. After the first text the answer belongs to
that attempt; if it then fails, the stream ends with :class:`StreamFailed` carrying the
partial usage, and no other model's text is ever spliced in.

Each deployment may carry its provider's limits (requests and tokens per minute, shared
by every replica through Redis, :mod:`tollway.router.limits`). A deployment at its limit
is skipped for the next one, recorded in ``fallback_path`` as "<deployment> (LIMIT_RPM)"
or "(LIMIT_TPM)"; when every deployment of the last model in the chain is at its limit the
request waits for the window (at most the policy's ``limit_wait_s``), else it is refused
with RESOURCE_EXHAUSTED naming the limits (QuotaFailure) and when one frees (RetryInfo).

Which models the chain holds is the request's policy: a request that names a model stays
on that model's deployments unless it (or the catalog's ``routing.model_fallback``) allows
another model; ``auto`` follows its chain. Deployments that lack a capability the request
needs (tools, JSON) are not tried.

Every wait on a provider is bounded by the deployment's timeouts: connecting, the first
token (a stalled deployment is left for the next one, and not retried within the request),
and each gap between tokens (the stream then ends in-band). A timeout is logged at WARNING,
naming the deployment and the setting that ran out, and counted.

Events: RouteStarted, then TextDelta*, then RouteCompleted or StreamFailed. Errors before
RouteStarted are raised as typed errors (the caller sees a status).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from tollway.common.catalog import Catalog, CatalogSource, Deployment, Model
from tollway.common.chat import ChatRequest, TextDelta, ToolCall, Usage
from tollway.common.route import RouteCompleted, RouteEvent, RouteStarted, RoutingDecision, StreamFailed
from tollway.common.tokens import count_request_tokens, count_tokens
from tollway.mesh import errors, tracing
from tollway.router import metrics
from tollway.router.balancer import Balancer
from tollway.router.breaker import Breakers, Permit
from tollway.router.classifier import ComplexityClassifier, load_classifier
from tollway.router.limits import Pick, ProviderLimits, describe
from tollway.router.policy import BACKGROUND, INTERACTIVE, RetryPolicy
from tollway.router.providers.base import ProviderAdapter
from tollway.router.routing import decide, required_capabilities, unfit_reason
from tollway.router.tools import ToolCallAssembler, ToolCallError
from tollway.router.types import Completion, ErrorKind, ProviderError, StreamEnd, ToolCallDelta, UsageUpdate
from tollway.router.validation import check_answer

log = logging.getLogger("tollway.router.engine")


_UNAVAILABLE = 14


@dataclasses.dataclass
class _Failure:
    model: str
    deployment: str
    kind: str  # an ErrorKind value, "BREAKER_OPEN", "NO_API_KEY" or "DEPLOYMENT_LIMIT"
    message: str
    retry_after_s: float | None = None
    missing_env: str = ""  # for NO_API_KEY: the variable that is not set


@dataclasses.dataclass
class _Run:
    """One request's progress through its chain."""

    request: ChatRequest
    decision: RoutingDecision
    policy: RetryPolicy
    deadline: float
    clock: Callable[[], float]
    attempts: int = 0
    path: list[str] = dataclasses.field(default_factory=list)
    failures: list[_Failure] = dataclasses.field(default_factory=list)
    discarded: Usage = dataclasses.field(default_factory=Usage)
    done: bool = False
    last_error: ProviderError | None = None
    prompt_tokens: int = 0
    limit_waited_s: float = 0.0
    whole: bool = False

    def remaining(self) -> float:
        return self.deadline - self.clock()


def provider_error(exc: ProviderError) -> errors.TollwayError:
    """The typed error a caller sees for a provider's verdict on the request itself."""
    meta = {"provider": exc.provider, "http_status": str(exc.status)}
    return errors.InvalidArgument(
        f"provider {exc.provider} rejected the request: {exc.message}",
        reason="PROVIDER_REJECTED_REQUEST",
        metadata=meta,
    )


def may_change_model(request: ChatRequest, decision: RoutingDecision, catalog: Catalog) -> bool:
    """Whether another model than the decided one may answer ``request``.

    ``auto`` names no model, so its chain is the point. A named model stays itself unless
    the request says otherwise (``allow_model_fallback``), or, when it says nothing, the
    catalog's ``routing.model_fallback``.
    """
    if decision.how in ("auto", "cascade"):
        return True
    if request.allow_model_fallback is not None:
        return request.allow_model_fallback
    return catalog.routing.model_fallback


class Router:
    """Decides, balances, breaks circuits, retries and falls back; streams normalised events.

    Args:
        catalog: The catalog, or a reloading source of it.
        adapters: One adapter per wire format ("openai_compat", "anthropic", "gemini").
        breakers: Shared circuit breakers; None allows every call.
        balancer: Spreads traffic over deployments (a fresh one by default).
        policies: The retry policy per name ("interactive", "background").
        deadline_s: Deadline per policy name when the caller set none.
        rng: Jitter and balancing randomness (seeded in tests).
        sleep: How to wait between retries (recorded in tests).
        limits: Provider limits per deployment; None (or no store) allows every call.
        limit_wait_s: Per policy name, the longest a request waits in all for a provider
            limit's window when every deployment of its last model is at its limit.
    """

    def __init__(
        self,
        catalog: Catalog | CatalogSource,
        adapters: dict[str, ProviderAdapter],
        *,
        breakers: Breakers | None = None,
        balancer: Balancer | None = None,
        policies: dict[str, RetryPolicy] | None = None,
        deadline_s: dict[str, float] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        limits: ProviderLimits | None = None,
        limit_wait_s: dict[str, float] | None = None,
    ) -> None:
        self.source = catalog if isinstance(catalog, CatalogSource) else CatalogSource.fixed(catalog)
        self.adapters = adapters
        self.breakers = breakers or Breakers(None)
        self.balancer = balancer or Balancer()
        self.policies = policies or {"interactive": INTERACTIVE, "background": BACKGROUND}
        self.deadline_s = deadline_s or {"interactive": 60.0, "background": 600.0}
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self._classifiers: dict[str, ComplexityClassifier] = {}
        self.limits = limits or ProviderLimits(None)
        self.limit_wait_s = limit_wait_s or {"interactive": 2.0, "background": 30.0}

    @property
    def catalog(self) -> Catalog:
        """The catalog now in force."""
        return self.source.current

    def classifier(self, catalog: Catalog) -> ComplexityClassifier:
        spec = catalog.routing.classifier
        if spec not in self._classifiers:
            self._classifiers[spec] = load_classifier(spec)
        return self._classifiers[spec]

    def decide(self, request: ChatRequest) -> RoutingDecision:
        """The routing decision for ``request`` under the current catalog (no provider call)."""
        catalog = self.catalog
        return decide(request, catalog, self.classifier(catalog))

    async def generate(
        self, request: ChatRequest, deadline: float | None = None, *, whole: bool = False, prompt_tokens: int = 0
    ) -> AsyncIterator[RouteEvent]:
        """Streams RouteStarted, TextDelta..., then RouteCompleted or StreamFailed.

        Args:
            request: The provider-neutral request.
            deadline: When the caller gives up, on ``time.monotonic()``'s clock; None uses
                the policy's default deadline.
            whole: The caller wants the answer only once it is whole (``Complete``): each
                deployment is asked for a whole answer instead of a stream (one body to read
                and parse instead of an event per token), unless it sets
                ``stream_whole_answers``. A whole attempt either answers or fails before any
                event leaves, so its failure always falls through to the next deployment or
                model; it waits ``timeout_s`` for its answer (no first token to time).
            prompt_tokens: The prompt's tokens as ``count_request_tokens`` counts them, when the
                caller counted them already (the gateway does, for its budget); 0 counts them here.

        Raises:
            errors.NotFound: The model is not in the catalog.
            errors.InvalidArgument: The model cannot serve the request, or a provider
                rejected it as malformed (400).
            errors.TollwayError: Every model of the chain failed before its first token
                (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, FAILED_PRECONDITION).
        """
        catalog = self.catalog
        # Counted once here (or by the caller), for the decision, the fallbacks and the limits.
        prompt_tokens = prompt_tokens or count_request_tokens(request)
        decision = decide(request, catalog, self.classifier(catalog), prompt_tokens)
        metrics.DECISIONS.labels(decision.how, decision.tier).inc()
        policy = self.policies.get(request.policy, INTERACTIVE)
        if deadline is None:
            deadline = self._clock() + self.deadline_s.get(policy.name, 60.0)
        run = _Run(request, decision, policy, deadline, self._clock, prompt_tokens=prompt_tokens, whole=whole)
        if decision.cascade_from:
            async for event in self._cascade(run, catalog.models[decision.cascade_from]):
                yield event
            if run.done:
                return
        first = catalog.models[decision.model]
        chain = [first]
        if may_change_model(request, decision, catalog):
            chain += [m for m in catalog.chain(first)[1:] if not unfit_reason(m, request, prompt_tokens)]
        for i, model in enumerate(chain):
            async for event in self._try_model(run, model, last=i == len(chain) - 1):
                yield event
            if run.done:
                return
            if run.remaining() <= 0:
                break
        raise self._exhausted(run)

    # -- one model ---------------------------------------------------------------------

    async def _try_model(self, run: _Run, model: Model, last: bool) -> AsyncIterator[RouteEvent]:
        """Attempts ``model`` on its deployments as the policy allows; falls through silently.

        A retry goes to a deployment not tried yet when there is one (at once); otherwise
        to the same ones again after the policy's backoff.
        """
        needs = required_capabilities(run.request)
        order = [d for d in self.balancer.order(model.deployments) if needs <= model.deployment_capabilities(d)]
        refused: set[str] = set()
        tried: set[str] = set()
        cursor = 0
        attempts = 0
        # Interactive requests keep half the remaining time for the rest of the chain.
        share = 1.0 if last or run.policy.name == "background" else 0.5
        limited: set[str] = set()  # skipped for a limit at least once (recorded once)
        tokens = self._limit_tokens(run, model)
        while attempts < run.policy.max_attempts and run.remaining() > 0:
            picked: tuple[Deployment, Permit, Pick] | None = None
            while picked is None:
                candidates: list[Deployment] = []
                for j in range(len(order)):
                    dep = order[(cursor + j) % len(order)]
                    if dep.key in refused:
                        continue
                    if dep.missing_key:
                        refused.add(dep.key)
                        run.failures.append(
                            _Failure(
                                model.name,
                                dep.key,
                                "NO_API_KEY",
                                f"{dep.api_key_env} is not set for {dep.key}",
                                missing_env=dep.api_key_env,
                            )
                        )
                        continue
                    candidates.append(dep)
                if not candidates:
                    break
                pick = await self.limits.pick(candidates, tokens)
                self._note_skips(run, model, pick, tokens, limited, refused)
                if pick.deployment is None:
                    if not await self._wait_for_limit(run, model, pick, last):
                        break
                    continue
                dep = pick.deployment
                cursor = order.index(dep) + 1
                permit = await self.breakers.acquire(dep.key)
                if permit.allowed:
                    picked = (dep, permit, pick)
                    break
                await self.limits.give_back(pick)
                refused.add(dep.key)
                run.failures.append(
                    _Failure(
                        model.name,
                        dep.key,
                        "BREAKER_OPEN",
                        f"circuit open for {dep.key} (next probe in {permit.retry_in_s:.1f}s)",
                        permit.retry_in_s,
                    )
                )
            if picked is None:
                break
            dep, permit, _pick = picked
            attempts += 1
            run.attempts += 1
            tried.add(dep.key)
            if run.whole and not dep.stream_whole_answers:
                attempt = self._attempt_whole(run, model, dep, permit)
            else:
                attempt = self._attempt(run, model, dep, permit, share)
            async for event in attempt:
                yield event
            if run.done:
                return
            error = run.last_error
            assert error is not None
            if error.kind is ErrorKind.BAD_REQUEST:
                raise provider_error(error)
            if error.kind is ErrorKind.TIMEOUT:
                # A stalled deployment rarely recovers within one request: asking it again
                # would spend another full timeout. Another deployment may still be tried.
                refused.add(dep.key)
            if not error.retryable or attempts >= run.policy.max_attempts:
                break
            fresh = [d for d in order if d.key not in refused and d.key not in tried]
            if fresh:
                cursor = order.index(fresh[0])  # another deployment: no reason to wait
                metrics.RETRIES.labels(model.name, error.kind.value, "another_deployment").inc()
                continue
            wait = run.policy.delay(attempts, error.retry_after_s, run.remaining(), self._rng)
            if wait is None:
                break
            metrics.RETRIES.labels(model.name, error.kind.value, "backoff").inc()
            await self._sleep(wait)
        why = self._why_left(run, model)
        run.path.append(f"{model.name} ({why})")
        metrics.FALLBACKS.labels(model.name, why).inc()

    @staticmethod
    def _limit_tokens(run: _Run, model: Model) -> int:
        """What a call counts against a tokens-per-minute limit: the prompt plus the output it
        may produce, as providers count a request when it arrives."""
        return run.prompt_tokens + (run.request.max_tokens or model.max_output_tokens)

    @staticmethod
    def _note_skips(run: _Run, model: Model, pick: Pick, tokens: int, limited: set[str], refused: set[str]) -> None:
        """Records each deployment passed over for a limit (once per request and model)."""
        for dep, verdict in pick.skipped:
            if verdict.wait_ms < 0:
                refused.add(dep.key)  # the request alone is over its tokens-per-minute limit
            if dep.key in limited:
                continue
            limited.add(dep.key)
            wait_s = verdict.wait_ms / 1000 if verdict.wait_ms >= 0 else None
            run.failures.append(
                _Failure(model.name, dep.key, "DEPLOYMENT_LIMIT", describe(dep, verdict, tokens), wait_s)
            )
            run.path.append(f"{dep.key} (LIMIT_{verdict.limit.upper()})")

    async def _wait_for_limit(self, run: _Run, model: Model, pick: Pick, last: bool) -> bool:
        """Waits for the soonest limit window to free, if the request may; False to give up.

        Only the last model of the chain waits: an earlier one falls through to the next
        model, which may be free now.
        """
        wait_ms = pick.shortest_wait_ms()
        if wait_ms is None or not last:
            return False
        wait = wait_ms / 1000
        allowed = self.limit_wait_s.get(run.policy.name, 0.0) - run.limit_waited_s
        if wait > allowed or wait >= run.remaining():
            return False
        metrics.LIMIT_WAITS.labels(model.name).inc()
        await self._sleep(wait)
        run.limit_waited_s += wait
        run.path.append(f"{model.name} (WAITED_{wait_ms}MS_FOR_LIMIT)")
        return True

    @staticmethod
    def _why_left(run: _Run, model: Model) -> str:
        mine = [f for f in run.failures if f.model == model.name]
        if not mine:
            return "DEADLINE" if run.remaining() <= 0 else "SKIPPED"
        return mine[-1].kind

    # -- one attempt -------------------------------------------------------------------

    async def _attempt(
        self, run: _Run, model: Model, dep: Deployment, permit: Permit, share: float = 1.0
    ) -> AsyncIterator[RouteEvent]:
        """Streams one provider call. Sets ``run.done`` once the request is answered (or
        failed after text); otherwise leaves the failure in ``run.last_error``."""
        request = run.request
        adapter = self.adapters[dep.wire]
        start = self._clock()
        self.balancer.started(dep)
        tools = ToolCallAssembler()
        text: list[str] = []
        hint: Usage | None = None
        started = False
        settled = False
        breaker_told = False  # a probe reports its success at the first token
        ttft_ms: float | None = None
        stream = adapter.stream(request, dep)
        # Ended in `finally`.
        span = self._attempt_span(run, model, dep, whole=False)
        span_error = ""
        span_attributes: dict[str, tracing.AttributeValue] = {}
        try:
            budget = min(dep.ttft_timeout_s, run.remaining() * share)
            try:
                if budget <= 0:
                    raise ProviderError(
                        dep.provider, "no time left before the request deadline", kind=ErrorKind.TIMEOUT
                    )
                async with asyncio.timeout(budget):
                    event = await anext(stream)
                    while isinstance(event, UsageUpdate):
                        hint = event.usage
                        event = await anext(stream)
            except TimeoutError:
                # The deployment's own limit, or the share of the request's deadline it got.
                setting = "first_token_timeout_s" if budget >= dep.ttft_timeout_s else "request deadline"
                raise ProviderError(
                    dep.provider,
                    f"no first token from {dep.key} within {budget:.2f}s ({setting})",
                    kind=ErrorKind.TIMEOUT,
                    timeout=setting,
                ) from None
            ttft_ms = (self._clock() - start) * 1000
            metrics.TTFT_SECONDS.labels(dep.provider, model.name).observe(ttft_ms / 1000)
            if permit.probe:
                # The half-open probe holds the one lease: every other caller is refused until it
                # reports. Its first token proves the deployment answers, so it closes the breaker
                # now; waiting for the whole answer would keep traffic away for as long as that
                # takes. A failure later in the stream is still recorded (the breaker is closed by
                # then, so it counts like any call's).
                await self.breakers.record(permit, ok=True)
                permit = dataclasses.replace(permit, probe=False)
                breaker_told = True
            while True:
                if isinstance(event, TextDelta):
                    if not started:
                        started = True
                        yield self._started(run, model, dep)
                    text.append(event.text)
                    yield event
                elif isinstance(event, ToolCallDelta):
                    tools.add(event)
                elif isinstance(event, UsageUpdate):
                    hint = event.usage
                elif isinstance(event, StreamEnd):
                    calls = tools.calls()
                    usage, reported = self._final_usage(run.prompt_tokens, event.usage, hint, "".join(text), calls)
                    span_attributes = {
                        "tollway.tokens.input": usage.input_tokens,
                        "tollway.tokens.output": usage.output_tokens,
                        "tollway.cost_usd": self._cost(model, usage) / 1e6,
                    }
                    settled = True
                    await self._succeeded(model, dep, permit, ttft_ms, tell_breaker=not breaker_told)
                    if not started:
                        started = True
                        yield self._started(run, model, dep)
                    run.done = True
                    yield RouteCompleted(
                        event.finish_reason or "stop",
                        usage,
                        reported,
                        int(ttft_ms),
                        calls,
                        self._cost(model, usage),
                        run.discarded,
                    )
                    return
                event = await anext(stream)
        except (ProviderError, ToolCallError, StopAsyncIteration) as exc:
            err = self._as_provider_error(exc, dep)
            span_error = f"{err.kind.value}: {err.message[:200]}"
            settled = True
            await self._failed(model, dep, permit, err, ttft_ms)
            if not started:
                run.last_error = err
                run.failures.append(_Failure(model.name, dep.key, err.kind.value, err.message, err.retry_after_s))
                return
            run.done = True
            metrics.STREAM_FAILURES.labels(dep.provider, model.name).inc()
            reason = {
                ErrorKind.CONNECTION: "PROVIDER_STREAM_CUT",
                ErrorKind.TIMEOUT: "PROVIDER_STALLED",
                ErrorKind.MALFORMED: "PROVIDER_STREAM_MALFORMED",
            }.get(err.kind, "PROVIDER_STREAM_ERROR")
            yield StreamFailed(
                code=_UNAVAILABLE,
                message=f"provider {dep.provider} failed mid-answer ({model.name}): {err.message}; "
                "the answer is incomplete, retry the request",
                reason=reason,
                partial_usage=self._partial_usage(run.prompt_tokens, hint, "".join(text)),
            )
        finally:
            if not settled:
                # The caller went away: the outcome says nothing about the deployment.
                self.balancer.finished(dep, ok=True, counted=False)
                self.breakers.abandon(permit)
                span_error = "CANCELLED"
            if ttft_ms is not None:
                span_attributes["tollway.ttft_ms"] = round(ttft_ms, 1)
            tracing.end(span, span_error, **span_attributes)
            await stream.aclose()

    async def _attempt_whole(
        self, run: _Run, model: Model, dep: Deployment, permit: Permit
    ) -> AsyncIterator[RouteEvent]:
        """Asks one deployment for a whole answer (not streamed). Sets ``run.done`` once it is
        answered; otherwise leaves the failure in ``run.last_error`` (nothing has left yet).

        It may take the rest of the request's deadline, as a stream may once its first token came:
        a long answer is not cut to leave time for the chain. A provider that sends nothing is given
        up after the deployment's ``timeout_s`` (the adapter's wait for each read).
        """
        start = self._clock()
        self.balancer.started(dep)
        span = self._attempt_span(run, model, dep, whole=True)
        try:
            completion = await self._whole_answer(run, dep, run.remaining())
        except (ProviderError, ToolCallError) as exc:
            err = self._as_provider_error(exc, dep)
            tracing.end(span, f"{err.kind.value}: {err.message[:200]}")
            await self._failed(model, dep, permit, err, None)
            run.last_error = err
            run.failures.append(_Failure(model.name, dep.key, err.kind.value, err.message, err.retry_after_s))
            return
        except BaseException:
            # The caller went away: the outcome says nothing about the deployment.
            self.balancer.finished(dep, ok=True, counted=False)
            self.breakers.abandon(permit)
            tracing.end(span, "CANCELLED")
            raise
        elapsed_ms = (self._clock() - start) * 1000
        usage, reported = self._final_usage(
            run.prompt_tokens, completion.usage, None, completion.text, completion.tool_calls
        )
        tracing.end(
            span,
            "",
            **{
                "tollway.tokens.input": usage.input_tokens,
                "tollway.tokens.output": usage.output_tokens,
                "tollway.cost_usd": self._cost(model, usage) / 1e6,
            },
        )
        # No first token to time: the balancer's speed estimate is of streams' first tokens.
        await self._succeeded(model, dep, permit, None)
        started = self._started(run, model, dep)
        async for event in self._emit_whole(run, started, model, completion, usage, reported, elapsed_ms):
            yield event

    async def _whole_answer(self, run: _Run, dep: Deployment, budget: float) -> Completion:
        """``dep``'s whole answer, within ``budget`` seconds; each read also waits at most the
        deployment's ``timeout_s`` (the adapter's own limit)."""
        if budget <= 0:
            raise ProviderError(dep.provider, "no time left before the request deadline", kind=ErrorKind.TIMEOUT)
        try:
            async with asyncio.timeout(budget):
                return await self.adapters[dep.wire].complete(run.request, dep)
        except TimeoutError:
            raise ProviderError(
                dep.provider,
                f"no whole answer from {dep.key} within {budget:.2f}s (request deadline)",
                kind=ErrorKind.TIMEOUT,
                timeout="request deadline",
            ) from None

    @staticmethod
    def _attempt_span(run: _Run, model: Model, dep: Deployment, *, whole: bool) -> tracing.Span | None:
        """One span per provider call (its caller ends it: an attempt yields, so it is never current)."""
        return tracing.start(
            "router",
            "provider.attempt",
            **{
                "tollway.provider": dep.provider,
                "tollway.model": model.name,
                "tollway.deployment": dep.key,
                "tollway.attempt": run.attempts,
                "tollway.whole": whole,
            },
        )

    def _started(self, run: _Run, model: Model, dep: Deployment) -> RouteStarted:
        return RouteStarted(model.name, dep.provider, run.attempts, tuple(run.path), run.decision, dep.key)

    async def _succeeded(
        self, model: Model, dep: Deployment, permit: Permit, ttft_ms: float | None, tell_breaker: bool = True
    ) -> None:
        metrics.ATTEMPTS.labels(dep.provider, model.name, "ok").inc()
        self.balancer.finished(dep, ok=True, ttft_ms=ttft_ms)
        if tell_breaker:
            await self.breakers.record(permit, ok=True)

    async def _failed(
        self, model: Model, dep: Deployment, permit: Permit, err: ProviderError, ttft_ms: float | None
    ) -> None:
        metrics.ATTEMPTS.labels(dep.provider, model.name, err.kind.value).inc()
        fault = err.kind.deployment_fault
        self.balancer.finished(dep, ok=not fault, ttft_ms=ttft_ms, retry_after_s=err.retry_after_s)
        detail = f"{err.kind.value}: {err.message}"
        await self.breakers.record(permit, ok=not fault, detail=detail, refused=err.refused)
        if err.kind is ErrorKind.TIMEOUT:
            # A stall says nothing on the wire: this line is how an operator learns of it.
            timeout = err.timeout or "timeout"
            metrics.PROVIDER_TIMEOUTS.labels(dep.provider, dep.key, timeout).inc()
            log.warning(
                "provider %s timed out: %s",
                dep.key,
                err.message[:300],
                extra={"provider": dep.provider, "deployment": dep.key, "timeout": timeout, "model": model.name},
            )
            return
        log.info(
            "attempt failed",
            extra={"deployment": dep.key, "kind": err.kind.value, "status": err.status, "error": err.message[:300]},
        )

    @staticmethod
    def _as_provider_error(exc: Exception, dep: Deployment) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, ToolCallError):
            return ProviderError(dep.provider, str(exc), kind=ErrorKind.MALFORMED)
        return ProviderError(dep.provider, "stream ended without an end event", kind=ErrorKind.CONNECTION)

    # -- the cascade -------------------------------------------------------------------

    async def _cascade(self, run: _Run, small: Model) -> AsyncIterator[RouteEvent]:
        """Asks the small model for a whole answer; keeps it only if it passes validation."""
        tokens = self._limit_tokens(run, small)
        for dep in self.balancer.order(small.deployments):
            pick = await self.limits.pick([dep], tokens)
            if pick.deployment is None:
                # The cascade never waits: the larger model is the better use of the time.
                self._note_skips(run, small, pick, tokens, set(), set())
                continue
            permit = await self.breakers.acquire(dep.key)
            if not permit.allowed:
                await self.limits.give_back(pick)
                run.failures.append(_Failure(small.name, dep.key, "BREAKER_OPEN", "circuit open", permit.retry_in_s))
                continue
            run.attempts += 1
            start = self._clock()
            self.balancer.started(dep)
            settled = False
            try:
                try:
                    async with asyncio.timeout(max(0.001, min(dep.timeout_s, run.remaining() / 2))):
                        completion = await self.adapters[dep.wire].complete(run.request, dep)
                except TimeoutError:
                    raise ProviderError(dep.provider, "cascade answer took too long", kind=ErrorKind.TIMEOUT) from None
                elapsed_ms = (self._clock() - start) * 1000
                settled = True
                await self._succeeded(small, dep, permit, elapsed_ms)
            except ProviderError as err:
                settled = True
                await self._failed(small, dep, permit, err, None)
                run.failures.append(_Failure(small.name, dep.key, err.kind.value, err.message, err.retry_after_s))
                run.path.append(f"{small.name} (CASCADE_{err.kind.value})")
                return
            finally:
                if not settled:
                    self.balancer.finished(dep, ok=True, counted=False)
                    self.breakers.abandon(permit)
            usage, reported = self._final_usage(
                run.prompt_tokens, completion.usage, None, completion.text, completion.tool_calls
            )
            verdict = check_answer(completion, run.request)
            if verdict:
                run.discarded = run.discarded + usage
                run.path.append(f"{small.name} (CASCADE_REJECTED: {verdict})")
                metrics.FALLBACKS.labels(small.name, "CASCADE_REJECTED").inc()
                return
            decision = dataclasses.replace(
                run.decision, model=small.name, tier=small.tier, reason=run.decision.reason + "; small answer accepted"
            )
            started = RouteStarted(small.name, dep.provider, run.attempts, tuple(run.path), decision, dep.key)
            async for event in self._emit_whole(run, started, small, completion, usage, reported, elapsed_ms):
                yield event
            return
        run.path.append(f"{small.name} ({self._why_left(run, small)})")

    async def _emit_whole(
        self,
        run: _Run,
        started: RouteStarted,
        model: Model,
        completion: Completion,
        usage: Usage,
        reported: bool,
        elapsed_ms: float,
    ) -> AsyncIterator[RouteEvent]:
        run.done = True
        yield started
        if completion.text:
            yield TextDelta(completion.text)
        yield RouteCompleted(
            completion.finish_reason or "stop",
            usage,
            reported,
            int(elapsed_ms),
            completion.tool_calls,
            self._cost(model, usage),
            run.discarded,
        )

    # -- usage, cost, errors -----------------------------------------------------------

    @staticmethod
    def _final_usage(
        prompt_tokens: int, reported: Usage | None, hint: Usage | None, text: str, calls: tuple[ToolCall, ...]
    ) -> tuple[Usage, bool]:
        """The answer's usage: the provider's, else its hint with the output counted, else the
        prompt as the run counted it and the output counted (``False``: not reported)."""
        if reported is not None and (reported.input_tokens or reported.output_tokens):
            return reported, True
        counted_out = count_tokens(text + "".join(c.arguments for c in calls))
        if hint is not None and hint.input_tokens:
            return dataclasses.replace(hint, output_tokens=max(hint.output_tokens, counted_out)), True
        return Usage(prompt_tokens, counted_out), False

    @staticmethod
    def _partial_usage(prompt_tokens: int, hint: Usage | None, text: str) -> Usage:
        counted_out = count_tokens(text)
        if hint is not None and hint.input_tokens:
            return dataclasses.replace(hint, output_tokens=max(hint.output_tokens, counted_out))
        return Usage(prompt_tokens, counted_out)

    @staticmethod
    def _cost(model: Model, usage: Usage) -> int:
        return model.price.cost_usd_micros(
            usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens
        )

    def _exhausted(self, run: _Run) -> errors.TollwayError:
        """The error for a request no model of the chain could answer."""
        seen: dict[str, int] = {}
        for f in run.failures:
            line = f"{f.deployment}: {f.message}"
            seen[line] = seen.get(line, 0) + 1
        tried = "; ".join(f"{line} (x{n})" if n > 1 else line for line, n in seen.items()) or "nothing was tried"
        meta = {
            "attempt_count": str(run.attempts),
            "fallback_path": " -> ".join(run.path),
            "providers": ",".join(sorted({f.deployment.split("/", 1)[0] for f in run.failures})),
        }
        kinds = {f.kind for f in run.failures}
        waits = [f.retry_after_s for f in run.failures if f.retry_after_s is not None]
        retry_after = min(waits) if waits else None
        if run.remaining() <= 0 and kinds - {"BREAKER_OPEN"} <= {ErrorKind.TIMEOUT.value}:
            return errors.DeadlineExceeded(
                f"no model answered before the deadline; tried: {tried}",
                reason="PROVIDER_DEADLINE_EXCEEDED",
                metadata=meta,
            )
        if kinds == {"NO_API_KEY"}:
            envs = list(dict.fromkeys(f.missing_env for f in run.failures))
            models = list(dict.fromkeys(f.model for f in run.failures))
            hint = "" if len(run.path) > 1 else "; or allow another model to answer (x-tollway-allow-fallback: true)"
            return errors.Unavailable(
                f"model {', '.join(models)} cannot be called: no API key is configured "
                f"(set {' or '.join(envs)} in the router's environment){hint}",
                reason="PROVIDER_KEY_MISSING",
                metadata={**meta, "model": ",".join(models), "missing_env": ",".join(envs)},
            )
        if kinds == {"BREAKER_OPEN"}:
            return errors.Unavailable(
                f"every deployment that could answer is failing and its circuit is open: {tried}; "
                "retry after the retry-after delay",
                retry_after_s=retry_after,
                reason="CIRCUIT_OPEN",
                metadata=meta,
            )
        if "DEPLOYMENT_LIMIT" in kinds and kinds <= {"DEPLOYMENT_LIMIT", "BREAKER_OPEN", ErrorKind.RATE_LIMITED.value}:
            limited = [f for f in run.failures if f.kind == "DEPLOYMENT_LIMIT"]
            return errors.ResourceExhausted(
                "every deployment that could answer is at its provider limit; "
                f"{'; '.join(f.message for f in limited)}; retry after the retry-after delay",
                retry_after_s=retry_after,
                reason="DEPLOYMENT_LIMIT",
                metadata={**meta, "deployments": ",".join(f.deployment for f in limited)},
                quota_violations=[(f"deployment:{f.deployment}", f.message) for f in limited],
            )
        if kinds <= {ErrorKind.RATE_LIMITED.value, "BREAKER_OPEN"}:
            return errors.ResourceExhausted(
                f"every provider that could answer is rate-limiting: {tried}",
                retry_after_s=retry_after,
                reason="PROVIDER_RATE_LIMITED",
                metadata=meta,
            )
        if kinds <= {ErrorKind.AUTH.value, ErrorKind.NOT_FOUND.value, "NO_API_KEY", "BREAKER_OPEN"}:
            return errors.FailedPrecondition(
                f"the providers refused Tollway's credentials or do not know the model: {tried}; "
                "check the API keys and upstream model names in the model catalog",
                reason="PROVIDER_MODEL_NOT_FOUND" if kinds == {ErrorKind.NOT_FOUND.value} else "PROVIDER_AUTH_FAILED",
                metadata=meta,
            )
        return errors.Unavailable(
            f"no provider could answer: {tried}",
            retry_after_s=retry_after,
            reason="PROVIDER_UNAVAILABLE",
            metadata=meta,
        )
