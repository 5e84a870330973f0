"""Second check on tier-2 (semantic) cache candidates: rejects near-misses that cosine similarity cannot see.

A sentence embedding scores "download Ubuntu 22.04 ISO" and "download Ubuntu 24.04 ISO" at 0.97: nearly all
their words agree, and the one that differs is exactly the one that matters. The verifier looks at that
difference. It compares the query with the cached query and rejects the candidate when they differ in
something that changes the answer while sharing everything else:

========================  ===================================================================================
rule (``reason``)         rejects when
========================  ===================================================================================
``number_mismatch``       the normalised numbers differ ("top 5" vs "top 10", "twice" vs "three times")
``unit_mismatch``         one number in different units, or different units of one dimension ("°C" vs "°F")
``negation_mismatch``     one text is negated and the other is not (parity of not/no/never/without/n't...)
``opposite_terms``        one text says a word and the other its antonym (before/after, ascending/descending)
``class_mismatch``        both name a member of a closed class and the members differ: relative time
                          ("today"/"tomorrow", "this week"), month, weekday, natural language
``role_swap``             the same two words trade places around a directional word ("X to Y" vs "Y to X")
``entity_swap``           a name-like word (capitalised mid-sentence, acronym, letters with digits) is
                          replaced by another one ("Morgan County" vs "Union County", "JEE" vs "NEET")
``term_swap``             a minimal pair: the content words agree, in order, except one slot of up to three
                          words ("npm audit false positives" vs "yarn audit false positives")
``qualifier_added``       the same minimal pair, but one text only adds a qualifier ("New York" vs "New York
                          City", "markdown editors" vs "markdown editors (Spanish)")
========================  ===================================================================================

Paraphrases survive because content words are compared after folding case, inflection, stopwords, common
synonyms and abbreviations, and because word order alone (outside ``role_swap``) is ignored.

The rules are lexical, deterministic and cheap: about 0.1 ms per candidate for short prompts and 0.2 ms
for a 60-word question, both texts analysed from scratch (p50 on the 2-core dev machine); each text's
analysis is memoised, so a cached entry checked again costs less.

Which rules run is configurable: :func:`verify` runs :data:`DEFAULT_RULES`, namespace presets pick their own
(``tollway.cache.presets``), and ``bench/cache_eval.py`` measures them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher

from tollway.cache.verify_lexicon import ANTONYMS, UNIT_DIMENSIONS
from tollway.cache.verify_text import DIRECTIONAL, Features, analyze, similar

__all__ = ["ALL_RULES", "CONTRADICTION_RULES", "DEFAULT_RULES", "Verdict", "Verifier", "verify"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's decision on one candidate.

    Attributes:
        accept: Whether the cached answer may be served for the query.
        reason: Stable snake_case code: ``below_threshold``, ``identical``, ``no_conflict``, or the name of
            the rule that rejected (see the module docstring). Suitable as a metric label.
        detail: Human-readable evidence, e.g. ``"5 vs 10"``; empty when accepted.
    """

    accept: bool
    reason: str
    detail: str = ""


_Rule = Callable[[Features, Features], str | None]


def _fmt(values: Iterable[str]) -> str:
    return ",".join(sorted(values)) or "-"


def _numbers(query: Features, cached: Features) -> str | None:
    q_values = Counter(q.value for q in query.quantities)
    c_values = Counter(q.value for q in cached.quantities)
    if q_values != c_values:
        return f"{_fmt((q_values - c_values).elements())} vs {_fmt((c_values - q_values).elements())}"
    return None


def _units(query: Features, cached: Features) -> str | None:
    for value in sorted({q.value for q in query.quantities}):
        q_units = {q.unit for q in query.quantities if q.value == value and q.unit}
        c_units = {q.unit for q in cached.quantities if q.value == value and q.unit}
        if q_units and c_units and not q_units & c_units:
            return f"{value} {_fmt(q_units)} vs {value} {_fmt(c_units)}"
    dimensions = {UNIT_DIMENSIONS[u] for u in query.units} & {UNIT_DIMENSIONS[u] for u in cached.units}
    for dimension in sorted(dimensions):
        q_units = {u for u in query.units if UNIT_DIMENSIONS[u] == dimension}
        c_units = {u for u in cached.units if UNIT_DIMENSIONS[u] == dimension}
        if q_units != c_units:
            return f"{_fmt(q_units)} vs {_fmt(c_units)}"
    return None


def _negation(query: Features, cached: Features) -> str | None:
    if query.negations % 2 == cached.negations % 2:
        return None
    # Only a flip of an otherwise unchanged statement: a negation inside an added clause ("... that most
    # people don't know about") or a lexical one ("not know" vs "unaware") is left to the other rules.
    only_q, only_c, *_ = _differences(query, cached)
    if len(only_q) <= 1 and len(only_c) <= 1:
        return f"{query.negations} vs {cached.negations} negations"
    return None


def _opposites(query: Features, cached: Features) -> str | None:
    q_words, c_words = set(query.words), set(cached.words)
    for word in sorted(q_words - c_words):
        for opposite in ANTONYMS.get(word, ()):
            if opposite in c_words and opposite not in q_words:
                return f"{word} vs {opposite}"
    return None


def _classes(query: Features, cached: Features) -> str | None:
    for name in sorted(query.classes.keys() & cached.classes.keys()):
        if query.classes[name] != cached.classes[name]:
            return f"{name}: {_fmt(query.classes[name])} vs {_fmt(cached.classes[name])}"
    return None


def _relations(features: Features) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """(connective, left arguments, right arguments) for each directional connective in the text.

    An argument is one of the (up to three) content words nearest to the connective on its side, inside
    the same clause and not past another connective.
    """
    by_position = {token.position: token.key for token in features.tokens}
    relations = []
    for index, word in enumerate(features.words):
        if word not in DIRECTIONAL:
            continue
        left: list[str] = []
        j = index - 1
        while j >= 0 and len(left) < _ARGUMENT_WIDTH and features.words[j] not in DIRECTIONAL:
            if j in by_position:
                left.append(by_position[j])
            if j in features.clause_starts:
                break
            j -= 1
        right: list[str] = []
        j = index + 1
        while (
            j < len(features.words)
            and len(right) < _ARGUMENT_WIDTH
            and j not in features.clause_starts
            and features.words[j] not in DIRECTIONAL
        ):
            if j in by_position:
                right.append(by_position[j])
            j += 1
        if left and right:
            relations.append((word, frozenset(left), frozenset(right)))
    return relations


_ARGUMENT_WIDTH = 3


def _once(features: Features) -> set[str]:
    counts = Counter(token.key for token in features.tokens)
    return {key for key, count in counts.items() if count == 1}


def _role_swap(query: Features, cached: Features) -> str | None:
    # Only words said once in each text can be told apart by position; in long texts that repeat words
    # across clauses any order test would fire on paraphrases.
    unique = _once(query) & _once(cached)
    cached_relations = _relations(cached)
    for connective, q_left, q_right in _relations(query):
        for c_connective, c_left, c_right in cached_relations:
            if connective != c_connective:
                continue
            moved_right = ((q_left & c_right) - c_left - q_right) & unique
            moved_left = ((q_right & c_left) - c_right - q_left) & unique
            if moved_right and moved_left:
                return f"{_fmt(moved_right)} {connective} {_fmt(moved_left)} reversed"
    return None


def _differences(query: Features, cached: Features) -> tuple[set[str], set[str], set[str], set[str], int]:
    q_keys, c_keys = query.keys, cached.keys
    only_q, only_c = set(q_keys - c_keys), set(c_keys - q_keys)
    # Spelling and derivational variants ("negotiate"/"negotiation", "Russia"/"Russian") are the same word.
    for q_key in sorted(only_q):
        match = next((c_key for c_key in sorted(only_c) if similar(q_key, c_key)), None)
        if match is not None:
            only_q.discard(q_key)
            only_c.discard(match)
    q_names = {t.key for t in query.tokens if t.entity and t.key in only_q}
    c_names = {t.key for t in cached.tokens if t.entity and t.key in only_c}
    return only_q, only_c, q_names, c_names, len(q_keys & c_keys)


def _entity_swap(query: Features, cached: Features) -> str | None:
    _, _, q_names, c_names, _ = _differences(query, cached)
    if q_names and c_names:
        return f"{_fmt(q_names)} vs {_fmt(c_names)}"
    return None


def _minimal_edit(query: Features, cached: Features) -> tuple[str, list[str], list[str], int] | None:
    """The single edit that turns one content-word sequence into the other, if exactly one does.

    Returns:
        (kind, query words, cached words, words in common) where kind is ``replace``, ``insert`` or
        ``delete``; None when the texts differ in more than one place or not at all. Spelling variants on
        the two sides of a replacement count as equal.
    """
    q_seq = [token.key for token in query.tokens]
    c_seq = [token.key for token in cached.tokens]
    edits = [op for op in SequenceMatcher(None, q_seq, c_seq, autojunk=False).get_opcodes() if op[0] != "equal"]
    if len(edits) != 1:
        return None
    kind, q_lo, q_hi, c_lo, c_hi = edits[0]
    q_part = [k for k in q_seq[q_lo:q_hi] if not any(similar(k, c) for c in c_seq[c_lo:c_hi])]
    c_part = [k for k in c_seq[c_lo:c_hi] if not any(similar(k, q) for q in q_seq[q_lo:q_hi])]
    if not q_part and not c_part:
        return None
    kind = "replace" if q_part and c_part else "insert" if c_part else "delete"
    return kind, q_part, c_part, len(q_seq) - (q_hi - q_lo)


def _term_swap(query: Features, cached: Features) -> str | None:
    # A minimal pair: the texts say the same content words in the same order except one short slot. The
    # swapped slot is then what the question is about. Wider rewrites are paraphrase territory.
    edit = _minimal_edit(query, cached)
    if edit is None:
        return None
    kind, q_part, c_part, shared = edit
    if kind == "replace" and len(q_part) <= 3 and len(c_part) <= 3 and shared >= 1:
        return f"{_fmt(q_part)} vs {_fmt(c_part)}"
    return None


def _qualifier_added(query: Features, cached: Features) -> str | None:
    # The same minimal pair where one side only adds words: "New York" vs "New York City", "stock markets"
    # vs "U.S. stock markets". The added qualifier narrows the question.
    edit = _minimal_edit(query, cached)
    if edit is None:
        return None
    kind, q_part, c_part, shared = edit
    if kind != "replace" and len(q_part) + len(c_part) <= 3 and shared >= 1:
        return f"+{_fmt(q_part or c_part)}"
    return None


# Ordered cheapest and most certain first; the first rule that objects names the rejection.
ALL_RULES: dict[str, _Rule] = {
    "number_mismatch": _numbers,
    "unit_mismatch": _units,
    "negation_mismatch": _negation,
    "opposite_terms": _opposites,
    "class_mismatch": _classes,
    "role_swap": _role_swap,
    "entity_swap": _entity_swap,
    "term_swap": _term_swap,
    "qualifier_added": _qualifier_added,
}


# Rules that fire only on a hard contradiction (a changed number, unit, polarity, antonym, closed-class
# member or argument order). On the dev sets they cost almost no recall.
CONTRADICTION_RULES: tuple[str, ...] = (
    "number_mismatch",
    "unit_mismatch",
    "negation_mismatch",
    "opposite_terms",
    "class_mismatch",
    "role_swap",
)
# What :func:`verify` runs. The slot rules (``term_swap``, ``qualifier_added``) win on short keyword prompts
# but lose on wordy questions, whose paraphrases often swap one content word for a synonym the lexicon does
# not know; strict namespaces opt into them (see tollway.cache.presets).
DEFAULT_RULES: tuple[str, ...] = (*CONTRADICTION_RULES, "entity_swap")


class Verifier:
    """Applies a chosen set of rules to tier-2 candidates. Stateless apart from the shared text memo.

    Args:
        rules: Names from :data:`ALL_RULES` to apply, in any order (they always run in the module's order).
            Defaults to :data:`DEFAULT_RULES`.

    Raises:
        ValueError: A rule name is unknown.
    """

    def __init__(self, rules: Iterable[str] | None = None) -> None:
        chosen = set(DEFAULT_RULES if rules is None else rules)
        unknown = chosen - ALL_RULES.keys()
        if unknown:
            raise ValueError(f"unknown verifier rules {sorted(unknown)}; known: {', '.join(ALL_RULES)}")
        self._rules = [(name, rule) for name, rule in ALL_RULES.items() if name in chosen]

    @property
    def rules(self) -> tuple[str, ...]:
        """Names of the rules this verifier applies, in application order."""
        return tuple(name for name, _ in self._rules)

    def check(self, query: str, candidate: str) -> Verdict:
        """Compares two texts with the rules only (no similarity gate).

        Args:
            query: The incoming request's text.
            candidate: The cached entry's request text.

        Returns:
            ``accept=False`` with the first objecting rule's name, or ``accept=True``.
        """
        q, c = analyze(query), analyze(candidate)
        if q.canonical == c.canonical:
            return Verdict(True, "identical")
        for name, rule in self._rules:
            detail = rule(q, c)
            if detail is not None:
                return Verdict(False, name, detail)
        return Verdict(True, "no_conflict")

    def verify(self, query: str, candidate: str, cosine: float, threshold: float) -> Verdict:
        """Decides whether a tier-2 candidate may be served: similarity gate first, then the rules.

        Args:
            query: The incoming request's text.
            candidate: The cached entry's request text.
            cosine: Cosine similarity of the two embeddings, in [-1, 1].
            threshold: The namespace's minimum cosine for a semantic hit.

        Returns:
            The verdict; ``reason`` is ``below_threshold`` when the cosine gate fails (no rule runs).
        """
        if cosine < threshold:
            return Verdict(False, "below_threshold", f"{cosine:.4f} < {threshold:.4f}")
        return self.check(query, candidate)


_DEFAULT = Verifier()


def verify(query: str, candidate: str, cosine: float, threshold: float) -> Verdict:
    """Checks a tier-2 candidate with :data:`DEFAULT_RULES`; see :meth:`Verifier.verify`."""
    return _DEFAULT.verify(query, candidate, cosine, threshold)
