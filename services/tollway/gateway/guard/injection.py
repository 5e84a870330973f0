"""Prompt-injection and jailbreak signals: known patterns plus a few heuristics.

The gateway depends on the :class:`Classifier` protocol only, so a model-based classifier
(a fine-tuned DeBERTa behind ONNX, a hosted moderation endpoint) can replace
:class:`HeuristicClassifier` without touching the guards. The heuristic one is the
default because it costs well under a millisecond per kilobyte and needs no model.

Scoring: each matched signal has a weight in (0, 1], read as the probability that a text
showing it is an attack; signals combine as a noisy-OR, ``1 - prod(1 - w)``, so two weak
signals together outrank one. The policy's threshold turns the score into a decision.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from typing import Protocol

__all__ = ["SIGNALS", "Classifier", "HeuristicClassifier", "InjectionVerdict"]


@dataclasses.dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """A classifier's view of one text.

    Attributes:
        score: In [0, 1]; higher is more likely an attack.
        signals: The names of what was seen ("ignore_instructions", "role_hijack", ...),
            for the call record and the error; never the text itself.
    """

    score: float
    signals: tuple[str, ...] = ()


class Classifier(Protocol):
    """Scores a text for prompt injection; must be safe to call from several tasks at once."""

    def classify(self, text: str) -> InjectionVerdict:
        """The verdict on ``text`` (one message's content)."""
        ...


# (name, weight, trigger words, the rest of the pattern) over the lower-cased text. Each
# trigger becomes its own pattern, trigger first, so the regex engine finds it with a fast
# substring search instead of trying every position (see pii.py's speed rules). Weights
# were set on the tuning half of the assembled set (bench/guard.py).
_W = r"(?:\w+\s+){0,3}"  # up to three filler words: "ignore all of the previous ..."
_OBJECT = (
    r"(?:instructions?|prompts?|rules|directions|guidelines|directives|constraints|context|messages?|programming)\b"
)
SIGNALS: tuple[tuple[str, float, tuple[str, ...], str], ...] = (
    (
        "ignore_instructions",
        0.9,
        ("ignore", "disregard", "forget", "override", "bypass", "skip"),
        rf"\s+{_W}(?:previous|prior|above|earlier|preceding|initial|original|system|your|all|any|the)\s+{_W}{_OBJECT}",
    ),
    (
        "new_instructions",
        0.6,
        ("new ", "updated ", "real ", "actual "),
        r"(?:system\s+)?(?:instructions?|rules|directives?)\s*(?::|are\b)",
    ),
    (
        "prompt_leak",
        0.85,
        (
            "reveal",
            "print",
            "show",
            "repeat",
            "output",
            "display",
            "leak",
            "tell me",
            "list",
            "dump",
            "disclose",
            "give me",
        ),
        rf"\s+{_W}(?:system\s+prompt|initial\s+(?:prompt|instructions)|hidden\s+(?:instructions?|prompt|message|rules)"
        r"|developer\s+(?:message|prompt|instructions)|(?:your|the)\s+instructions\s+verbatim|instructions\s+above)",
    ),
    ("prompt_leak_verbatim", 0.5, ("verbatim", "word for word"), r".{0,60}\b(?:instructions|prompt|rules)\b"),
    (
        "role_hijack",
        0.85,
        (
            "you are now ",
            "you are dan",
            "do anything now",
            "developer mode",
            "jailbreak",
            "jailbroken",
            "god mode",
            "dan mode",
        ),
        r"",
    ),
    (
        "no_restrictions",
        0.6,
        ("no ", "without ", "free of ", "free from "),
        r"(?:any\s+)?(?:safety\s+|ethical\s+|content\s+|moral\s+)?"
        r"(?:restrictions|filters|guidelines|limitations|guardrails|censorship|safeguards)\b",
    ),
    (
        "pretend",
        0.45,
        ("pretend", "imagine", "act as if", "roleplay as", "from now on"),
        r".{0,80}\b(?:no|without|unrestricted|unfiltered|evil|any\s+rules)\b",
    ),
    (
        "safety_off",
        0.55,
        ("ignore ", "disable ", "turn off ", "bypass ", "skip "),
        r"(?:the\s+|your\s+|all\s+)?(?:safety|content\s+filter|moderation|guardrails?)",
    ),
    (
        "delimiter",
        0.75,
        (
            "</system>",
            "<system>",
            "</instructions>",
            "<|im_start|>",
            "<|im_end|>",
            "<|system|>",
            "<|endoftext|>",
            "[inst]",
            "[/inst]",
            "### system",
            "### instruction",
            "begin system prompt",
            "begin new instructions",
        ),
        r"",
    ),
    (
        "encoded_command",
        0.6,
        ("decode", "base64", "rot13", "reverse"),
        r".{0,40}\b(?:follow|comply|execute|obey|do\s+what|then\s+answer)",
    ),
    (
        "hidden_instruction",
        0.5,
        ("<!--",),
        r".{0,200}?(?:important|instruction|assistant|ai|when\s+summari[sz]ing).{0,200}?-->",
    ),
    ("unauthorised_action", 0.5, ("without ",), r"(?:asking|approval|confirmation|permission|telling)\b"),
    (
        "secret_exfiltration",
        0.55,
        ("print", "reveal", "send", "show", "leak", "give"),
        r"\b.{0,40}\b(?:api\s+key|password|secret|credentials|token)s?\b.{0,40}\b(?:context|prompt|memory|system|environment)",
    ),
)
_COMPILED: tuple[tuple[str, float, tuple[re.Pattern[str], ...]], ...] = tuple(
    (name, weight, tuple(re.compile(re.escape(t) + rest, re.DOTALL) for t in triggers))
    for name, weight, triggers, rest in SIGNALS
)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
_SMUGGLED = re.compile(r"ignore|instruction|system prompt|disregard|reveal|jailbreak")


def _found(pattern: re.Pattern[str], low: str) -> bool:
    # The trigger must begin a word ("skip" yes, "whiskip" no); \b cannot lead the pattern
    # without losing the fast substring search, so the boundary is checked here.
    for m in pattern.finditer(low):
        start = m.start()
        if start == 0 or not low[start - 1].isalnum():
            return True
    return False


class HeuristicClassifier:
    """Known injection phrasings and structural tells, scored as a noisy-OR (see the module)."""

    def classify(self, text: str) -> InjectionVerdict:
        """Scores ``text``; the verdict names each signal seen once."""
        low = text.lower()
        miss = 1.0
        signals: list[str] = []
        for name, weight, patterns in _COMPILED:
            if any(_found(p, low) for p in patterns):
                miss *= 1.0 - weight
                signals.append(name)
        if _smuggled_base64(text):
            miss *= 1.0 - 0.7
            signals.append("base64_payload")
        return InjectionVerdict(round(1.0 - miss, 4), tuple(signals)) if signals else _CLEAN


_CLEAN = InjectionVerdict(0.0)


def _smuggled_base64(text: str) -> bool:
    # An instruction hidden in base64 reads as noise to the patterns above; decode the few
    # long runs and look again. Bounded: at most 8 runs of at most 4 KiB each.
    for i, m in enumerate(_BASE64_RUN.finditer(text)):
        if i >= 8:
            break
        run = m.group()[:4096]
        try:
            decoded = base64.b64decode(run + "=" * (-len(run) % 4), validate=False).decode("ascii", "strict")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if _SMUGGLED.search(decoded.lower()) is not None:
            return True
    return False
