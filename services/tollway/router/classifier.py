"""How hard is this request? Picks the tier for ``model: auto``.

The default :class:`HeuristicClassifier` scores cheap, explainable cues (prompt length,
code, reasoning and multi-step wording, conversation length, tools, structured output)
and maps the score to small / medium / large. Any object with the same ``classify``
method can replace it: the catalog names it as ``routing.classifier:
"package.module:factory"`` (a class or a function returning the classifier).
"""

from __future__ import annotations

import importlib
import re
from typing import Protocol

from tollway.common.chat import ChatRequest
from tollway.common.tokens import count_tokens
from tollway.mesh.frozen import frozen


@frozen
class Classification:
    """A classifier's verdict.

    Attributes:
        tier: "small", "medium" or "large".
        score: The complexity score behind it (classifier-specific scale).
        reason: Why, for a person reading a call record.
    """

    tier: str
    score: float
    reason: str


class ComplexityClassifier(Protocol):
    """Anything that can put a request in a tier."""

    name: str

    def classify(self, request: ChatRequest) -> Classification: ...


_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction \w+\(|#include\b|\bimport \w+|\bSELECT\b.+\bFROM\b|"
    r"Traceback \(most recent call last\)|\bpublic static\b|=>|\w+\(\)\s*[;{]",
    re.IGNORECASE | re.DOTALL,
)
_REASONING = re.compile(
    r"\b(why|explain|prove|derive|analy[sz]e|compare|contrast|trade-?offs?|evaluate|justify|reason(?:ing)?|"
    r"critique|design|architect|optimi[sz]e|debug|step[- ]by[- ]step|pros and cons|implications?)\b",
    re.IGNORECASE,
)
_MULTI_STEP = re.compile(
    r"(^\s*(?:\d+[.)]|[-*])\s+\S)|\b(first(?:ly)?|then|after that|finally|next,|and also|in addition)\b",
    re.IGNORECASE | re.MULTILINE,
)


class HeuristicClassifier:
    """Scores length, code, reasoning and multi-step cues, turns, tools and JSON output.

    Args:
        medium_at: The score from which a request is medium.
        large_at: The score from which a request is large.
    """

    name = "heuristic"

    def __init__(self, medium_at: float = 2.0, large_at: float = 4.5) -> None:
        self.medium_at = medium_at
        self.large_at = large_at

    def classify(self, request: ChatRequest) -> Classification:
        user_text = "\n".join(m.content for m in request.messages if m.role in ("user", "tool"))
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        tokens = sum(count_tokens(m.content) for m in request.messages)
        cues: list[str] = []
        score = 0.0
        if tokens > 250:
            score += 3 if tokens > 4000 else 2 if tokens > 1000 else 1
            cues.append(f"{tokens} prompt tokens")
        if _CODE.search(user_text):
            score += 2
            cues.append("code")
        reasoning = {m.lower() for m in _REASONING.findall(last_user)}
        if reasoning:
            score += min(2.0, float(len(reasoning)))
            cues.append("reasoning cues (" + ", ".join(sorted(reasoning)[:3]) + ")")
        steps = len(_MULTI_STEP.findall(last_user))
        if steps >= 2:
            score += 1.5 if steps >= 4 else 1.0
            cues.append(f"{steps} multi-step cues")
        turns = sum(1 for m in request.messages if m.role in ("user", "assistant"))
        if turns > 6:
            score += 1.0 if turns <= 12 else 2.0
            cues.append(f"{turns} turns")
        if request.tools:
            score += 1.0
            cues.append(f"{len(request.tools)} tools")
        if request.response_format.type == "json_schema":
            score += 0.5
            cues.append("JSON schema output")
        tier = "large" if score >= self.large_at else "medium" if score >= self.medium_at else "small"
        why = ", ".join(cues) if cues else f"short ({tokens} prompt tokens), no code, reasoning or multi-step cues"
        return Classification(tier=tier, score=score, reason=f"{tier} (score {score:g}): {why}")


def load_classifier(spec: str) -> ComplexityClassifier:
    """The classifier a catalog names: "heuristic" or "package.module:factory".

    Raises:
        ValueError: The spec does not name an importable classifier; the message quotes it.
    """
    if spec in ("", "heuristic"):
        return HeuristicClassifier()
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"routing.classifier {spec!r}: use 'heuristic' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"routing.classifier {spec!r} cannot be loaded: {exc}") from None
    classifier = factory()
    if not callable(getattr(classifier, "classify", None)):
        raise ValueError(f"routing.classifier {spec!r} made {classifier!r}, which has no classify(request) method")
    if not getattr(classifier, "name", ""):
        classifier.name = spec
    return classifier
