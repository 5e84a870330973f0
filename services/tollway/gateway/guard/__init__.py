"""Guardrails, structured output and context-window management, in-process with the gateway.

Plain domain modules (no gRPC, no Redis) that the gateway's lifecycle calls on the request
path: :mod:`.inputs` before the cache and the budget, :mod:`.output` over the streamed
deltas, :mod:`.structured` around the router call when JSON is asked for, :mod:`.context`
before the budget estimate. :mod:`.policy` reads ``deploy/guard.yaml``; :mod:`.metrics`
counts what they did.

They run in the gateway rather than as a service of their own because the output guard
sits on every streamed delta, where a network hop per delta would add to the time to each
token; and every check here is CPU-bound and costs less than a gRPC round trip (the input
guard about 2 ms of CPU on an 8k-token prompt, the output guard a few µs per delta).

How the lifecycle calls them, in order (``Gateway.generate``):

1. Resolve the policy: ``policies.current.resolve(tenant, api_key_id)`` (a
   :class:`.policy.GuardPolicySource` built in ``__main__`` from ``TOLLWAY_GATEWAY_GUARD_POLICY``,
   re-read with ``reload_if_changed()``). Compile ``response_format`` with
   :func:`.structured.compile_format` (INVALID_JSON_SCHEMA before anything is spent).
2. After the prompt is rendered and before the tier-1 cache lookup:
   ``verdict = input_guard.check(chat.messages, policy)``; ``chat = verdict.apply(chat)``.
   A refusal is raised as it is (GuardTooLarge 400, GuardRejected 403). The cache key and
   ``prompt_hash`` are taken over the guarded messages.
3. On a cache miss, before the budget: ``fit = await fit_context(chat, model.context_window,
   summariser=..., cache=..., input_budget=...)``; the reservation's estimate is
   ``fit.report.input_tokens_after + max_tokens``; the router gets ``fit.request``. The cache
   store keeps the key of step 2 (the untrimmed, guarded request).
4. Streaming: ``guard = OutputGuard(policy, verdict.vault)``; per router TextDelta:
   ``safe = guard.feed(text)``; if ``safe``: append it to the answer kept for the cache and
   the record, and yield ``TextDelta(guard.restore(safe))`` (TTFT is taken here). Before
   RouteCompleted or StreamFailed is passed on: ``guard.flush()`` the same way. Cached
   answers replayed go through a fresh OutputGuard too.
5. JSON asked for (and the provider does not enforce it): ``await generate_structured(attempt,
   chat.messages, compiled, model=...)`` where ``attempt`` admits budget, calls
   ``router.complete`` and settles, once per call; the JSON text goes out as one delta.
6. Record: the decisions of steps 2 and 4 (:func:`.decisions.record_text`), the policy name and
   version, ``fit.report.record_text()`` and the structured attempts; then
   :func:`.metrics.observe_decisions`, ``observe_trim`` and ``observe_structured``. Never a
   matched value: decisions and reports carry rules, counts and kinds only.
"""
