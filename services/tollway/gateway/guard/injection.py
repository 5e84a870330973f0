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
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import ahocorasick

from tollway.mesh.frozen import frozen

__all__ = ["SIGNALS", "Classifier", "HeuristicClassifier", "InjectionVerdict"]


@frozen(slots=True)
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

    def classify(self, text: str, role: str = "user") -> InjectionVerdict:
        """The verdict on ``text``, one turn's content; ``role`` is the turn's ("user", "tool"):
        text a tool returned is data, so instructions addressed to the model weigh more there."""
        ...


# (name, weight, trigger words, the rest of the pattern) over the lower-cased text. Each
# trigger becomes its own pattern, trigger first, so the regex engine finds it with a fast
# substring search instead of trying every position (see pii.py's speed rules). Weights
# were set, and the policy's default threshold (0.6) chosen, on the tuning half of
# bastioncorpus (rows whose id hashes even; bench/guard.py) after a blind first run; one
# weak signal alone stays under the threshold, two together pass it.
_W = r"(?:\w+\s+){0,3}"  # up to three filler words: "ignore all of the previous ..."
_OBJECT = (
    r"(?:instructions?|prompts?|rules|directions|guidelines|directives|constraints|context|messages?|programming"
    r"|(?:content\s+)?polic(?:y|ies))\b"
)
SIGNALS: tuple[tuple[str, float, tuple[str, ...], str], ...] = (
    (
        "ignore_instructions",
        0.9,
        ("ignore", "disregard", "forget", "override", "bypass", "skip"),
        rf"\s+{_W}(?:previous|prior|above|earlier|preceding|initial|original|system|your|all|any|the)\s+{_W}{_OBJECT}",
    ),
    (
        "ignore_everything",
        0.85,
        ("ignore", "disregard", "forget"),
        r"\s+(?:about\s+)?(?:everything|all\s+(?:of\s+)?(?:that|this|the\s+above))\s+"
        r"(?:above|before|previously|prior|we\s+(?:discussed|said)|you\s+(?:were|have\s+been)\s+told|i\s+said)",
    ),
    (
        "new_instructions",
        0.7,
        ("new ", "updated ", "real ", "actual "),
        r"(?:system\s+)?(?:instructions?|rules|directives?)\s*(?::|are\b)",
    ),
    (
        "rules_changed",
        0.7,
        (
            "your rules have changed",
            "your instructions have changed",
            "system update:",
            "system override",
            "important system update",
            "the rules no longer apply",
            "you now allow all",
        ),
        r"",
    ),
    # The same attacks in the other languages the gateway commonly sees (de, fr, es, it).
    (
        "ignore_instructions_intl",
        0.9,
        ("ignoriere", "vergiss", "ignorez", "ignore", "oubliez", "oublie", "olvida", "ignora", "dimentica"),
        r"\s+(?:\w+\s+){0,3}(?:anweisungen|regeln|instructions|consignes|instrucciones|reglas|istruzioni|regole)\b",
    ),
    (
        "no_restrictions_intl",
        0.6,
        (
            "keine regeln",
            "ohne einschränkungen",
            "ohne regeln",
            "sans restrictions",
            "sans filtre",
            "sin restricciones",
            "sin filtro",
            "senza restrizioni",
            "senza filtri",
            "modo desarrollador",
            "mode développeur",
            "entwicklermodus",
        ),
        r"",
    ),
    (
        "prompt_leak_intl",
        0.85,
        (
            "prompt di sistema",
            "system-prompt",
            "systemprompt",
            "prompt système",
            "prompt systeme",
            "instructions système",
            "instructions systeme",
            "prompt del sistema",
            "instrucciones del sistema",
        ),
        r"",
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
        "prompt_leak_given",
        0.8,
        (
            "instructions you were given",
            "instructions you have been given",
            "instructions you received",
            "repeat the words above",
            "repeat everything above",
            "words above starting with",
            "text above starting with",
            "print the full system prompt",
            "print your system prompt",
        ),
        r"",
    ),
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
            "uncensored",
            "no content policy",
            "without a content policy",
            "unfiltered ai",
            "unrestricted ai",
        ),
        r"",
    ),
    (
        "no_restrictions",
        0.55,
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
            "end of user input",
            "end of system prompt",
            "end of instructions",
            "### end",
        ),
        r"",
    ),
    (
        "encoded_command",
        0.8,
        ("decode", "base64", "rot13", "reverse", "hex"),
        r".{0,50}\b(?:follow|comply|execute|obey|do\s+(?:exactly\s+)?what|then\s+answer|instruction\s+inside)",
    ),
    (
        "hidden_instruction",
        0.5,
        ("<!--",),
        r".{0,200}?(?:important|instruction|assistant|ai|when\s+summari[sz]ing).{0,200}?-->",
    ),
    ("unauthorised_action", 0.5, ("without ",), r"(?:asking|approval|confirmation|permission|telling)\b"),
    (
        "data_exfiltration",
        0.6,
        (
            "send",
            "forward",
            "email",
            "e-mail",
            "upload",
            "post",
            "collect",
            "export",
            "envoie",
            "envía",
            "invia",
            "sende",
        ),
        r"\b.{0,60}?(?:customer|client|user|order|all|full|internal)\s+"
        r"(?:list|data|database|records|emails|details|information)\b.{0,80}?\b(?:to|externally|extern)\b",
    ),
    (
        "addresses_the_model",
        0.6,
        (
            "note to the bot",
            "note to the ai",
            "note to the assistant",
            "ai assistant reading",
            "ai agents ",
            "if you are an ai",
            "llm reading",
            "assistant reading this",
            "to the ai model",
            "dear ai",
            "bot:",
        ),
        r"",
    ),
    (
        "forged_reasoning",
        0.6,
        (
            "<thinking>",
            "reasoning trace",
            "i have concluded that",
            "i've already reasoned",
            "i have already reasoned",
            "i have verified this internally",
            "is exempt from",
            "are exempt from",
            "already established that",
            "ya he determinado",
            "j'ai deja etabli",
            "j'ai déjà établi",
        ),
        r"",
    ),
    (
        "memory_instruction",
        0.5,
        (
            "remember for all future",
            "for all future tasks",
            "from now on",
            "on the next user message",
            "note to self",
            "in every summary",
            "every report you generate",
            "at the end of every",
            "in every response",
            "ab sofort",
            "ab jetzt",
            "d'ora in poi",
            "à partir de maintenant",
            "de ahora en adelante",
        ),
        r"",
    ),
    (
        "secret_exfiltration",
        0.55,
        ("print", "reveal", "send", "show", "leak", "give"),
        r"\b.{0,40}\b(?:api\s+key|password|secret|credentials|token)s?\b.{0,40}\b(?:context|prompt|memory|system|environment)",
    ),
)
# Only in text a tool returned (web pages, e-mails, files): data that addresses the model or
# tells it to call a tool. In a user's own turn the same words are an ordinary request.
TOOL_SIGNALS: tuple[tuple[str, float, tuple[str, ...], str], ...] = (
    (
        "instructs_the_model",
        0.55,
        (
            "when you summarize",
            "when you summarise",
            "when summarizing",
            "when summarising",
            "when you process",
            "in your summary",
            "in your reply",
            "in your response",
            "before you reply",
            "before responding",
            "end of your reply",
            "you must",
            "you should first",
            "should first",
        ),
        r"",
    ),
    ("tool_call_in_data", 0.55, ("call ", "use ", "run ", "invoke "), r"[a-z]+_[a-z_]+\b"),
)


_Signal = tuple[str, float, tuple[str, ...], str]


def _automaton(specs: tuple[_Signal, ...]) -> ahocorasick.Automaton:
    """One Aho-Corasick automaton over every trigger: each value lists, for the signals the
    trigger starts, the signal's name, weight and the pattern that must follow the trigger."""
    automaton = ahocorasick.Automaton()
    entries: dict[str, list[tuple[str, float, re.Pattern[str]]]] = defaultdict(list)
    for name, weight, triggers, rest in specs:
        follow = re.compile(rest, re.DOTALL)
        for trigger in triggers:
            entries[trigger].append((name, weight, follow))
    for trigger, signals in entries.items():
        automaton.add_word(trigger, (len(trigger), tuple(signals)))
    automaton.make_automaton()
    return automaton


# One pass over the text finds every trigger at once (pyahocorasick, C); only where one is
# found does a pattern run, anchored right after it. A regex per trigger would read the
# whole text once per trigger (186 of them).
_USER = _automaton(SIGNALS)
_TOOL = _automaton((*SIGNALS, *TOOL_SIGNALS))
_PAYLOAD_RUN = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_A85 = re.compile(r"<~(.{8,4096}?)~>", re.DOTALL)
_SMUGGLED = re.compile(r"ignore|instruction|system prompt|disregard|reveal|jailbreak|send_email|forward")
_SPACED = re.compile(r"\b(?:\w ){3,}\w\b")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_LEET_WORD = re.compile(r"[a-z][0-9][a-z0-9]")
_LEET = str.maketrans("013457@$", "oieastas")
# Obfuscated variants (reversed, spaced out, leetspeak, URL-encoded) are tried on short
# turns only: attacks are short, and a long document read several times costs as much.
_VARIANT_MAX_CHARS = 2048


def _scan(low: str, automaton: ahocorasick.Automaton, out: dict[str, float]) -> None:
    for end, (length, signals) in automaton.iter(low):
        start = end - length + 1
        # The trigger must begin a word ("skip" yes, "whiskip" no).
        if start and low[start - 1].isalnum():
            continue
        for name, weight, follow in signals:
            if name not in out and follow.match(low, end + 1) is not None:
                out[name] = weight


def _variants(text: str) -> list[str]:
    """Lower-cased de-obfuscations of ``text`` that differ from it."""
    low = text.lower()
    out = [low[::-1]]
    if _SPACED.search(low):
        out.append(_SPACED.sub(lambda m: m.group().replace(" ", ""), low))
    if _LEET_WORD.search(low):
        out.append(low.translate(_LEET))
    if _PERCENT.search(text):
        out.append(urllib.parse.unquote(text).lower())
    return out


class HeuristicClassifier:
    """Known injection phrasings and structural tells, scored as a noisy-OR (see the module)."""

    def classify(self, text: str, role: str = "user") -> InjectionVerdict:
        """Scores ``text``; the verdict names each signal seen once."""
        low = text.lower()
        found: dict[str, float] = {}
        automaton = _TOOL if role == "tool" else _USER
        _scan(low, automaton, found)
        if len(text) <= _VARIANT_MAX_CHARS:
            hidden: dict[str, float] = {}
            for variant in _variants(text):
                _scan(variant, automaton, hidden)
            new = {k: v for k, v in hidden.items() if k not in found}
            if new:
                found.update(new)
                found["obfuscated"] = 0.3
        if _smuggled_payload(text):
            found["encoded_payload"] = 0.7
        if not found:
            return _CLEAN
        miss = 1.0
        for weight in found.values():
            miss *= 1.0 - weight
        return InjectionVerdict(round(1.0 - miss, 4), tuple(found))


_CLEAN = InjectionVerdict(0.0)


def _smuggled_payload(text: str) -> bool:
    # An instruction hidden in base64, hex or ascii85 reads as noise to the patterns above;
    # decode the few long runs and look again. One pass finds base64 and hex runs alike (hex
    # digits are base64 characters). Bounded: at most 8 runs of at most 4 KiB each.
    runs: list[tuple[Callable[[str], str], str]] = []
    # str.split and a length test run at C speed; a character-class regex over the whole
    # text would look at every character in the interpreter's regex loop.
    for token in text.split():
        if len(token) < 24:
            continue
        m = _PAYLOAD_RUN.search(token)
        if m is None:
            continue
        run = m.group()[:4096]
        runs.append((_hex if _HEX.fullmatch(run) else _b64, run))
        if len(runs) == 8:
            break
    if "<~" in text:
        runs.extend((_a85, m.group(1)) for m in _A85.finditer(text))
    for decode, run in runs:
        try:
            decoded = decode(run)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if _SMUGGLED.search(decoded.lower()) is not None:
            return True
    return False


def _b64(run: str) -> str:
    return base64.b64decode(run + "=" * (-len(run) % 4), validate=False).decode("ascii", "strict")


def _hex(run: str) -> str:
    return bytes.fromhex(run).decode("ascii", "strict")


def _a85(run: str) -> str:
    return base64.a85decode(run).decode("ascii", "strict")
