"""The input guard: size limits, denied topics, prompt injection and PII, before anything is spent.

Runs in the gateway, in-process, right after authentication and before the prompt, the
cache and the budget: a refused request reaches no provider and reserves nothing. The
checks go from cheapest to dearest, and the first refusal ends the check:

1. size limits (INVALID_ARGUMENT ``GUARD_INPUT_TOO_LARGE``, a BadRequest violation per field);
2. denied topics, in user turns (PERMISSION_DENIED ``GUARD_TOPIC_DENIED``);
3. prompt injection, in user and tool turns (PERMISSION_DENIED ``GUARD_INJECTION_DETECTED``,
   or a "flag" decision when the policy only records it); system turns are the caller's
   own instructions and are not scored;
4. PII in every turn: a type whose action is "reject" refuses (PERMISSION_DENIED
   ``GUARD_PII_REJECTED``, naming the type and the turn, never the value); "redact"
   replaces it.

Error messages and metadata never quote the offending text.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from tollway.common.chat import ChatMessage, ChatRequest
from tollway.gateway.guard.decisions import GuardDecision, GuardRejected, GuardTooLarge
from tollway.gateway.guard.injection import Classifier, HeuristicClassifier
from tollway.gateway.guard.pii import Finding, PiiType
from tollway.gateway.guard.policy import GuardPolicy, InjectionAction, PiiAction
from tollway.gateway.guard.redaction import Vault, redact
from tollway.mesh.frozen import frozen

__all__ = ["InputGuard", "InputVerdict"]

_INJECTION_ROLES = frozenset({"user", "tool"})


@frozen
class InputVerdict:
    """What the input guard let through.

    Attributes:
        messages: The turns to send on: redacted where the policy says so, the caller's own
            objects where nothing changed.
        decisions: Every rule that applied, in order.
        vault: The originals behind reversible placeholders (None when there are none);
            hand it to the output guard so the answer is mapped back.
    """

    messages: tuple[ChatMessage, ...]
    decisions: tuple[GuardDecision, ...] = ()
    vault: Vault | None = None

    @property
    def changed(self) -> bool:
        """Whether any turn was redacted."""
        return any(d.action == "redact" for d in self.decisions)

    def apply(self, chat: ChatRequest) -> ChatRequest:
        """``chat`` with the guarded turns (``chat`` itself when nothing changed)."""
        return dataclasses.replace(chat, messages=self.messages) if self.changed else chat


class InputGuard:
    """Applies a :class:`GuardPolicy` to a request's turns; one instance per gateway.

    Args:
        classifier: Scores turns for prompt injection (default: the heuristic one).
    """

    def __init__(self, classifier: Classifier | None = None) -> None:
        self.classifier: Classifier = classifier or HeuristicClassifier()

    def check(self, messages: Sequence[ChatMessage], policy: GuardPolicy) -> InputVerdict:
        """Checks and redacts ``messages`` under ``policy``.

        Raises:
            GuardTooLarge: A size limit is exceeded (INVALID_ARGUMENT).
            GuardRejected: A denied topic, an injection signal at or above the threshold
                (action reject), or a PII type whose action is reject (PERMISSION_DENIED).
        """
        self._check_sizes(messages, policy)
        decisions: list[GuardDecision] = []
        if policy.topic_pattern is not None:
            self._check_topics(messages, policy)
        if policy.injection.enabled:
            flagged = self._check_injection(messages, policy)
            if flagged is not None:
                decisions.append(flagged)
        return self._pii(messages, policy, decisions)

    def _check_sizes(self, messages: Sequence[ChatMessage], policy: GuardPolicy) -> None:
        limits = policy.limits
        bad: list[tuple[str, str]] = []
        rule = ""
        if limits.max_messages and len(messages) > limits.max_messages:
            bad.append(("messages", f"{len(messages)} messages, over the limit of {limits.max_messages}"))
            rule = "limits.max_messages"
        total = 0
        for i, m in enumerate(messages):
            n = len(m.content)
            total += n
            if limits.max_message_chars and n > limits.max_message_chars:
                bad.append(
                    (
                        f"messages[{i}].content",
                        f"{n} characters, over the limit of {limits.max_message_chars} per message",
                    )
                )
                rule = rule or "limits.max_message_chars"
        if limits.max_input_chars and total > limits.max_input_chars:
            bad.append(("messages", f"{total} characters in all, over the limit of {limits.max_input_chars}"))
            rule = rule or "limits.max_input_chars"
        if bad:
            decision = GuardDecision("input", rule, "reject")
            raise GuardTooLarge(
                f"the input is too large for this key's guard policy: {bad[0][0]}: {bad[0][1]}; shorten it or "
                "ask for a larger limit",
                bad,
                metadata={"rule": rule, "policy": policy.name},
                decisions=(decision,),
            )

    def _check_topics(self, messages: Sequence[ChatMessage], policy: GuardPolicy) -> None:
        assert policy.topic_pattern is not None
        for i, m in enumerate(messages):
            if m.role != "user":
                continue
            hit = policy.topic_pattern.search(m.content.lower())
            if hit is not None:
                topic = policy.topic_of(hit.group())
                rule = f"topic.{topic}"
                raise GuardRejected(
                    f"messages[{i}] touches the topic {topic!r}, which this key's guard policy does not allow",
                    reason="GUARD_TOPIC_DENIED",
                    metadata={"rule": rule, "topic": topic, "message_index": str(i), "policy": policy.name},
                    decisions=(GuardDecision("input", rule, "reject"),),
                )

    def _check_injection(self, messages: Sequence[ChatMessage], policy: GuardPolicy) -> GuardDecision | None:
        threshold = policy.injection.threshold
        worst_score, worst_index, worst_signals = 0.0, -1, ()
        for i, m in enumerate(messages):
            if m.role not in _INJECTION_ROLES or not m.content:
                continue
            verdict = self.classifier.classify(m.content, m.role)
            if verdict.score > worst_score:
                worst_score, worst_index, worst_signals = verdict.score, i, verdict.signals
        if worst_score < threshold:
            return None
        signals = ",".join(worst_signals)
        if policy.injection.action is InjectionAction.FLAG:
            return GuardDecision("input", "injection", "flag", detail=signals)
        raise GuardRejected(
            f"messages[{worst_index}] looks like a prompt-injection attempt (score {worst_score:.2f}, "
            f"threshold {threshold:.2f}; signals: {signals}); rephrase it, or ask for the policy to be changed",
            reason="GUARD_INJECTION_DETECTED",
            metadata={
                "rule": "injection",
                "score": f"{worst_score:.3f}",
                "threshold": f"{threshold:.3f}",
                "signals": signals,
                "message_index": str(worst_index),
                "policy": policy.name,
            },
            decisions=(GuardDecision("input", "injection", "reject", detail=signals),),
        )

    def _pii(
        self, messages: Sequence[ChatMessage], policy: GuardPolicy, decisions: list[GuardDecision]
    ) -> InputVerdict:
        scanner = policy.scanner
        if not scanner.types:
            return InputVerdict(tuple(messages), tuple(decisions))
        found: list[tuple[int, list[Finding]]] = []
        for i, m in enumerate(messages):
            if m.content:
                findings = scanner.scan(m.content)
                if findings:
                    found.append((i, findings))
        if not found:
            return InputVerdict(tuple(messages), tuple(decisions))
        for i, findings in found:
            for f in findings:
                if policy.action(f.type) is PiiAction.REJECT:
                    rule = f"pii.{f.type.value}"
                    raise GuardRejected(
                        f"messages[{i}] contains {_a(f.type)} ({f.kind}), which this key's guard policy refuses; "
                        "remove it and send again",
                        reason="GUARD_PII_REJECTED",
                        metadata={
                            "rule": rule,
                            "type": f.type.value,
                            "kind": f.kind,
                            "message_index": str(i),
                            "policy": policy.name,
                        },
                        decisions=(*decisions, GuardDecision("input", rule, "reject", detail=f.kind)),
                    )
        replace = {t: a is PiiAction.REDACT for t, a in policy.pii.items()}
        vault = Vault() if policy.reversible else None
        out = list(messages)
        counts: Counter[PiiType] = Counter()
        for i, findings in found:
            m = out[i]
            out[i] = dataclasses.replace(m, content=redact(m.content, findings, replace, vault))
            counts.update(f.type for f in findings if replace.get(f.type, False))
        for t, n in counts.items():
            decisions.append(GuardDecision("input", f"pii.{t.value}", "redact", n))
        return InputVerdict(tuple(out), tuple(decisions), vault if vault else None)


def _a(pii_type: PiiType) -> str:
    return {
        PiiType.EMAIL: "an e-mail address",
        PiiType.PHONE: "a phone number",
        PiiType.CARD: "a payment card number",
        PiiType.IBAN: "an IBAN",
        PiiType.NATIONAL_ID: "a national id number",
        PiiType.SECRET: "an API key or other secret",
    }[pii_type]
