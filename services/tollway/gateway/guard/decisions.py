"""What the guards decided, as values the call record and the metrics take.

A decision names the stage, the rule and the action, and counts how often it applied; it
never carries the text that triggered it, so a call record holding decisions holds no PII.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tollway.mesh.errors import InvalidArgument, PermissionDenied
from tollway.mesh.frozen import frozen

Stage = Literal["input", "output"]
Action = Literal["redact", "reject", "block", "flag", "restore"]

__all__ = ["Action", "GuardDecision", "GuardRejected", "GuardTooLarge", "Stage", "record_text"]


@frozen(slots=True)
class GuardDecision:
    """One rule that applied.

    Attributes:
        stage: "input" (the request) or "output" (the answer).
        rule: What applied: "pii.email", "injection", "topic.weapons", "limits.max_input_chars".
        action: "redact", "reject" (the request was refused), "block" (an answer item was
            replaced), "flag" (recorded only), "restore" (placeholders mapped back).
        count: How many items it applied to.
        detail: A non-identifying refinement: the card network, an id's kind, the
            injection signals; never the matched text.
    """

    stage: Stage
    rule: str
    action: Action
    count: int = 1
    detail: str = ""

    def text(self) -> str:
        """``stage:rule=action`` plus ``xN`` when it applied more than once, and the detail."""
        out = f"{self.stage}:{self.rule}={self.action}"
        if self.count != 1:
            out += f"x{self.count}"
        if self.detail:
            out += f"({self.detail})"
        return out


def record_text(decisions: Iterable[GuardDecision]) -> str:
    """The decisions as one call-record field: their :meth:`GuardDecision.text` joined by "; "."""
    return "; ".join(d.text() for d in decisions)


class GuardRejected(PermissionDenied):
    """A guard refused the request (PERMISSION_DENIED); ``decisions`` says which rule.

    ErrorInfo metadata carries ``rule``, ``policy`` and the rule's own values (PII type
    and message index, injection score and threshold, topic name), never the text.
    """

    def __init__(
        self, message: str, *, reason: str, metadata: dict[str, str], decisions: tuple[GuardDecision, ...]
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.decisions = decisions


class GuardTooLarge(InvalidArgument):
    """The input is over a size limit (INVALID_ARGUMENT, with a BadRequest violation per field)."""

    def __init__(
        self,
        message: str,
        violations: list[tuple[str, str]],
        *,
        metadata: dict[str, str],
        decisions: tuple[GuardDecision, ...],
    ) -> None:
        super().__init__(message, violations, reason="GUARD_INPUT_TOO_LARGE", metadata=metadata)
        self.decisions = decisions
