"""The guards as one request runs them: policy, input verdict, output guard, and what they did.

:mod:`tollway.gateway.guard` holds the checks; this module holds their per-request state so
the lifecycle stays orchestration. One :class:`Guards` per gateway (the policy file, the input
guard, the summary cache); one :class:`GuardRun` per request, made by :meth:`Guards.check_input`
after the prompt is rendered and before retrieval, the cache and the budget.

What a request's record gets (``CallRecord.guard_decisions``), never a matched value:

- each guard decision, as ``stage:rule=action`` (``input:pii.email=redactx2``);
- a context trim, as ``context:window=summarised`` or ``=dropped`` with the counts;
- a structured answer, as ``output:structured=valid``, ``=repaired``, ``=retried`` (with
  the attempts) or ``=failed``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from tollway.common.chat import ChatMessage, ChatRequest
from tollway.gateway.guard import metrics as guard_metrics
from tollway.gateway.guard.context import MemorySummaryCache, TrimReport, fit_context
from tollway.gateway.guard.decisions import GuardDecision
from tollway.gateway.guard.inputs import InputGuard
from tollway.gateway.guard.output import OutputGuard
from tollway.gateway.guard.policy import GuardPolicies, GuardPolicy, GuardPolicySource
from tollway.gateway.guard.redaction import Vault
from tollway.mesh import tracing

__all__ = ["GuardRun", "Guards", "structured_instruction"]


class ChargingSummariser(Protocol):
    """Condenses turns into a summary of at most ``max_tokens``; ``charge`` is the request the
    summary serves, whose tenant it may bill (the gateway's ``Gateway.summarise`` does)."""

    def __call__(self, turns: tuple[ChatMessage, ...], max_tokens: int, *, charge: Any = None) -> Awaitable[str]: ...


class Guards:
    """The gateway's guards: the policies (re-read when their file changes) and the input guard.

    Args:
        policies: A policy file source (reloadable) or fixed policies.
        input_guard: The input guard (default: the heuristic injection classifier).
        summariser: Condenses older turns when a conversation outgrows the window; None drops them.
    """

    def __init__(
        self,
        policies: GuardPolicySource | GuardPolicies,
        input_guard: InputGuard | None = None,
        summariser: ChargingSummariser | None = None,
    ) -> None:
        self.policies = policies
        self.input_guard = input_guard or InputGuard()
        self.summariser = summariser
        self.summaries = MemorySummaryCache()

    def policy(self, tenant: str, key_id: str) -> GuardPolicy:
        """The policy in force for ``tenant`` and ``key_id``."""
        source = self.policies
        current = source.current if isinstance(source, GuardPolicySource) else source
        return current.resolve(tenant, key_id)

    def reload(self) -> None:
        """Re-reads the policy file if it changed (a bad edit keeps the policies in force)."""
        if isinstance(self.policies, GuardPolicySource):
            self.policies.reload_if_changed()

    def check_input(self, chat: ChatRequest, tenant: str, key_id: str) -> GuardRun:
        """Runs the input guard over ``chat`` under the caller's policy.

        Raises:
            GuardTooLarge: A size limit (INVALID_ARGUMENT ``GUARD_INPUT_TOO_LARGE``).
            GuardRejected: A denied topic, an injection signal or a rejected PII type
                (PERMISSION_DENIED with the rule in ErrorInfo). Both carry ``decisions``.
        """
        with tracing.stage("gateway", "guard.input") as span:
            policy = self.policy(tenant, key_id)
            verdict = self.input_guard.check(chat.messages, policy)
            tracing.annotate(span, {"tollway.guard.decisions": len(verdict.decisions)})
            return GuardRun(policy, verdict.apply(chat), list(verdict.decisions), verdict.vault)

    async def fit(self, run: GuardRun, chat: ChatRequest, context_window: int, charge: Any = None) -> ChatRequest:
        """``chat`` fitted into ``context_window`` (older turns summarised or dropped); noted on ``run``.

        Args:
            charge: The request a summary serves, passed on to the summariser (which charges its
                tenant for the summary).

        Raises:
            InvalidArgument: CONTEXT_WINDOW_EXCEEDED when the system prefix, or it with the
                last turn, cannot fit.
        """
        with tracing.stage("gateway", "guard.context"):
            summariser = self.summariser
            if summariser is not None and charge is not None:
                summariser = functools.partial(summariser, charge=charge)
            fitted = await fit_context(chat, context_window, summariser=summariser, cache=self.summaries)
        run.trim = fitted.report
        return fitted.request


@dataclasses.dataclass
class GuardRun:
    """The guards' state for one request.

    Attributes:
        policy: The policy in force.
        chat: The request after the input guard (redacted where the policy says so).
        decisions: Input decisions, then output ones as the answer streams.
        vault: The originals behind reversible placeholders (None: none).
        trim: What fitting the context did (None when it was not run).
        structured: How a structured answer ended ("" when none was asked for).
    """

    policy: GuardPolicy
    chat: ChatRequest
    decisions: list[GuardDecision] = dataclasses.field(default_factory=list)
    vault: Vault | None = None
    trim: TrimReport | None = None
    structured: str = ""
    _outputs: list[OutputGuard] = dataclasses.field(default_factory=list)

    def output_guard(self) -> OutputGuard | None:
        """A fresh output guard for one answer (None when the policy changes nothing in answers)."""
        guard = OutputGuard(self.policy, self.vault)
        if not (self.policy.output.enabled and guard.active):
            return None
        self._outputs.append(guard)
        return guard

    def all_decisions(self) -> tuple[GuardDecision, ...]:
        """Every decision so far, the output guards' included."""
        out = list(self.decisions)
        for guard in self._outputs:
            out.extend(guard.decisions())
        return tuple(out)

    def record_items(self) -> tuple[str, ...]:
        """What the call record keeps: the decisions, the trim and the structured outcome."""
        items = [d.text() for d in self.all_decisions()]
        if self.trim is not None and self.trim.trimmed:
            how = "summarised" if self.trim.summarised else "dropped"
            items.append(
                f"context:window={how}x{self.trim.removed_messages}"
                f"({self.trim.input_tokens_before}->{self.trim.input_tokens_after} tokens)"
            )
        if self.structured:
            items.append(f"output:structured={self.structured}")
        return tuple(items)

    def observe(self, model: str) -> None:
        """Counts the decisions and the trim in the guards' metrics (once, at the end)."""
        guard_metrics.observe_decisions(self.all_decisions())
        if self.trim is not None:
            guard_metrics.observe_trim(model, self.trim)


def structured_instruction(schema_text: str | None) -> ChatMessage:
    """The system turn that asks a model which cannot be forced for JSON of the right shape."""
    if schema_text is None:
        return ChatMessage("system", "Answer with one JSON object only: no prose, no Markdown fences.")
    return ChatMessage(
        "system",
        "Answer with one JSON object only (no prose, no Markdown fences) that matches this JSON Schema:\n"
        + schema_text,
    )


def rejected_record_items(decisions: Sequence[GuardDecision]) -> tuple[str, ...]:
    """The record items of a refused request."""
    return tuple(d.text() for d in decisions)
