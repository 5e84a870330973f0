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
``opposite_terms``        one text says a word and the other its antonym or converse (before/after, lender/
                          borrower), listed or made by a polarity prefix or suffix (encrypt/decrypt,
                          inbound/outbound, employer/employee)
``ordinal_mismatch``      the ordinals differ ("second" vs "third"), or one text puts an ordinal before a
                          superlative the other has bare ("second largest" vs "largest", "next-to-last")
``superlative_qualifier`` one superlative, but one text qualifies it further ("oldest living president" vs
                          "oldest president", "best free laptops" vs "best laptops")
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
from typing import TYPE_CHECKING

from tollway.cache.verify_lexicon import (
    ANTONYMS,
    NEGATING_PREFIXES,
    SWAPPED_PREFIXES,
    SWAPPED_SUFFIXES,
    UNIT_DIMENSIONS,
)
from tollway.cache.verify_text import DIRECTIONAL, Features, analyze, similar, stem

if TYPE_CHECKING:
    from tollway.cache.learned_check import LearnedCheck

__all__ = ["ALL_RULES", "CONTRADICTION_RULES", "DEFAULT_RULES", "LEARNED_REASON", "Verdict", "Verifier", "verify"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's decision on one candidate.

    Attributes:
        accept: Whether the cached answer may be served for the query.
        reason: Stable snake_case code: ``below_threshold``, ``identical``, ``no_conflict``, or the name of
            the rule that rejected (see the module docstring). Suitable as a metric label.
        detail: Human-readable evidence, e.g. ``"5 vs 10"``; empty when accepted.
        score: The learned check's probability that the cached answer is right, when it ran; else None.
    """

    accept: bool
    reason: str
    detail: str = ""
    score: float | None = None


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
    # Numbers that carry a unit on both sides must carry the same ones, as a multiset: "2GB or 2GB" vs
    # "2GB or 2MB" shares the value 2 and the unit GB, and still asks about another product.
    q_pairs = Counter((q.value, q.unit) for q in query.quantities if q.unit)
    c_pairs = Counter((q.value, q.unit) for q in cached.quantities if q.unit)
    shared_values = {v for v, _ in q_pairs} & {v for v, _ in c_pairs}
    q_shared = Counter({k: n for k, n in q_pairs.items() if k[0] in shared_values})
    c_shared = Counter({k: n for k, n in c_pairs.items() if k[0] in shared_values})
    if q_shared != c_shared:
        only_q = [f"{v} {u}" for v, u in (q_shared - c_shared).elements()]
        only_c = [f"{v} {u}" for v, u in (c_shared - q_shared).elements()]
        return f"{_fmt(only_q)} vs {_fmt(only_c)}"
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
    # Counted, not set-compared: "North Koreans ... South Korea" vs "South Koreans ... South Korea" has
    # both words on one side and still swaps one of them.
    q_count, c_count = Counter(query.words), Counter(cached.words)
    more_q = {w for w in q_count if q_count[w] > c_count.get(w, 0)}
    more_c = {w for w in c_count if c_count[w] > q_count.get(w, 0)}
    for word in sorted(more_q):
        for opposite in ANTONYMS.get(word, ()):
            if opposite in more_c:
                return f"{word} vs {opposite}"
    # Inflected forms of listed pairs ("lenders" vs "borrowers"), then pairs made by polarity morphology.
    only_q, only_c, *_ = _differences(query, cached)
    for q_key in sorted(only_q):
        for c_key in sorted(only_c):
            if _STEM_ANTONYMS.get(q_key, frozenset()) & {c_key} or morphological_opposites(q_key, c_key):
                return f"{q_key} vs {c_key}"
    return None


def morphological_opposites(left: str, right: str) -> bool:
    """Whether two words are made opposite by a polarity prefix or suffix.

    "encrypt"/"decrypt", "inbound"/"outbound", "upload"/"download" swap one prefix on one stem; "lock"/
    "unlock", "legal"/"illegal" add a negating prefix; "employer"/"employee" swap a party suffix. The stem
    must keep four letters, so "in"/"out" alone or "do"/"undo" do not count.

    Args:
        left: A lower-case word or comparison key.
        right: Another.
    """
    if left == right:
        return False
    for a, b in SWAPPED_PREFIXES:
        for x, y in ((left, right), (right, left)):
            if x.startswith(a) and y.startswith(b) and x[len(a) :] == y[len(b) :] and len(x) - len(a) >= 4:
                return True
    for prefix in NEGATING_PREFIXES:
        for x, y in ((left, right), (right, left)):
            if y == prefix + x and len(x) >= 4:
                return True
    for a, b in SWAPPED_SUFFIXES:
        for x, y in ((left, right), (right, left)):
            if x.endswith(a) and y.endswith(b) and x[: -len(a)] == y[: -len(b)] and len(x) - len(a) >= 4:
                return True
    return False


def _ordinals(query: Features, cached: Features) -> str | None:
    q_ord, c_ord = Counter(query.ordinals), Counter(cached.ordinals)
    if q_ord == c_ord:
        return None
    q_pos = Counter(position for position, _ in query.ordinals)
    c_pos = Counter(position for position, _ in cached.ordinals)
    if q_pos and c_pos and q_pos != c_pos:
        return f"{_fmt(map(str, q_pos))} vs {_fmt(map(str, c_pos))}"
    # One side alone names an ordinal: it matters when it ranks (before a superlative, or counted from the
    # end); "my first car" vs "my car" asks the same.
    extra = (q_ord - c_ord) + (c_ord - q_ord)
    if any(ranks or position < -1 for position, ranks in extra):
        return "+" + _fmt(str(position) for position, _ in extra.elements())
    return None


def _superlative_qualifier(query: Features, cached: Features) -> str | None:
    q_sup, c_sup = query.superlatives or {}, cached.superlatives or {}
    for word in sorted(q_sup.keys() & c_sup.keys()):
        q_quals, c_quals = q_sup[word], c_sup[word]
        if q_quals != c_quals and (q_quals < c_quals or c_quals < q_quals):
            return f"{word} +{_fmt(q_quals ^ c_quals)}"
    return None


def _classes(query: Features, cached: Features) -> str | None:
    for name in sorted(query.classes.keys() & cached.classes.keys()):
        if query.classes[name] != cached.classes[name]:
            return f"{name}: {_fmt(query.classes[name])} vs {_fmt(cached.classes[name])}"
    return None


@dataclass(frozen=True, slots=True)
class _Relation:
    """One directional connective and its arguments (content keys) on each side.

    ``left``/``right`` are the up to three content words nearest to the connective on that side, inside the
    same clause and not past another connective. ``near_left``/``near_right`` are the ones among them that
    touch the connective with no other word between ("a USB-C to VGA adapter": {usb, c} and {vga,
    adapter}): the argument itself, not a word of the clause around it.
    """

    connective: str
    left: frozenset[str]
    right: frozenset[str]
    near_left: frozenset[str]
    near_right: frozenset[str]


def _relations(features: Features) -> list[_Relation]:
    """The relations of each directional connective in the text (see :class:`_Relation`)."""
    by_position = {token.position: token.key for token in features.tokens}
    relations = []
    for index, word in enumerate(features.words):
        if word not in DIRECTIONAL:
            continue
        left: list[str] = []
        near_left: list[str] = []
        touching = True
        j = index - 1
        while j >= 0 and len(left) < _ARGUMENT_WIDTH and features.words[j] not in DIRECTIONAL:
            if j in by_position:
                left.append(by_position[j])
                if touching:
                    near_left.append(by_position[j])
            else:
                touching = False
            if j in features.clause_starts:
                break
            j -= 1
        right: list[str] = []
        near_right: list[str] = []
        touching = True
        j = index + 1
        while (
            j < len(features.words)
            and len(right) < _ARGUMENT_WIDTH
            and j not in features.clause_starts
            and features.words[j] not in DIRECTIONAL
        ):
            if j in by_position:
                right.append(by_position[j])
                if touching:
                    near_right.append(by_position[j])
            else:
                touching = False
            j += 1
        if left and right:
            relations.append(
                _Relation(word, frozenset(left), frozenset(right), frozenset(near_left), frozenset(near_right))
            )
    return relations


_ARGUMENT_WIDTH = 3


def _once(features: Features) -> set[str]:
    counts = Counter(token.key for token in features.tokens)
    return {key for key, count in counts.items() if count == 1}


def _role_swap(query: Features, cached: Features) -> str | None:
    # A word said once in each text can be placed anywhere in the argument window; in long texts that
    # repeat words across clauses any looser order test would fire on paraphrases. A repeated word is
    # placed only where it touches the connective in both texts ("my USB type C phone ... a USB-C to VGA
    # adapter" vs "... a VGA to USB-C adapter"): there it is the argument, whatever else the text says.
    unique = _once(query) & _once(cached)
    cached_relations = _relations(cached)
    for q in _relations(query):
        for c in cached_relations:
            if q.connective != c.connective:
                continue
            moved_right = {
                key
                for key in (q.left & c.right) - c.left - q.right
                if key in unique or (key in q.near_left and key in c.near_right)
            }
            moved_left = {
                key
                for key in (q.right & c.left) - c.right - q.left
                if key in unique or (key in q.near_right and key in c.near_left)
            }
            if moved_right and moved_left:
                return f"{_fmt(moved_right)} {q.connective} {_fmt(moved_left)} reversed"
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
    return _term_swap_of(_minimal_edit(query, cached))


def _term_swap_of(edit: tuple[str, list[str], list[str], int] | None) -> str | None:
    # A minimal pair: the texts say the same content words in the same order except one short slot. The
    # swapped slot is then what the question is about. Wider rewrites are paraphrase territory.
    if edit is None:
        return None
    kind, q_part, c_part, shared = edit
    if kind == "replace" and len(q_part) <= 3 and len(c_part) <= 3 and shared >= 1:
        return f"{_fmt(q_part)} vs {_fmt(c_part)}"
    return None


def _qualifier_added(query: Features, cached: Features) -> str | None:
    return _qualifier_added_of(_minimal_edit(query, cached))


def _qualifier_added_of(edit: tuple[str, list[str], list[str], int] | None) -> str | None:
    # The same minimal pair where one side only adds words: "New York" vs "New York City", "stock markets"
    # vs "U.S. stock markets". The added qualifier narrows the question.
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
    "ordinal_mismatch": _ordinals,
    "superlative_qualifier": _superlative_qualifier,
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
    "ordinal_mismatch",
    "superlative_qualifier",
    "class_mismatch",
    "role_swap",
)
# What :func:`verify` runs. The slot rules (``term_swap``, ``qualifier_added``) win on short keyword prompts
# but lose on wordy questions, whose paraphrases often swap one content word for a synonym the lexicon does
# not know; strict namespaces opt into them (see tollway.cache.presets).
DEFAULT_RULES: tuple[str, ...] = (*CONTRADICTION_RULES, "entity_swap")


def _stem_antonyms() -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = {}
    for word, opposites in ANTONYMS.items():
        if " " in word:
            continue
        index.setdefault(stem(word), set()).update(stem(o) for o in opposites if " " not in o)
    return {key: frozenset(values - {key}) for key, values in index.items()}


_STEM_ANTONYMS = _stem_antonyms()


LEARNED_REASON = "learned_check"


class Verifier:
    """Applies a chosen set of rules to tier-2 candidates, then optionally the learned check.

    Stateless apart from the shared text memo.

    Args:
        rules: Names from :data:`ALL_RULES` to apply, in any order (they always run in the module's order).
            Defaults to :data:`DEFAULT_RULES`.
        learned: The learned check (``tollway.cache.learned_check``) to run after the rules, or None.
        learned_threshold: The probability a candidate needs from the learned check, in (0, 1).

    Raises:
        ValueError: A rule name is unknown, or the learned threshold is outside (0, 1).
    """

    def __init__(
        self,
        rules: Iterable[str] | None = None,
        *,
        learned: LearnedCheck | None = None,
        learned_threshold: float = 0.5,
    ) -> None:
        chosen = set(DEFAULT_RULES if rules is None else rules)
        unknown = chosen - ALL_RULES.keys()
        if unknown:
            raise ValueError(f"unknown verifier rules {sorted(unknown)}; known: {', '.join(ALL_RULES)}")
        if not 0.0 < learned_threshold < 1.0:
            raise ValueError(f"learned_threshold {learned_threshold!r} is not in (0, 1)")
        self._rules = [(name, rule) for name, rule in ALL_RULES.items() if name in chosen]
        self._names = frozenset(chosen)
        self.learned = learned
        self.learned_threshold = learned_threshold

    @property
    def rules(self) -> tuple[str, ...]:
        """Names of the rules this verifier applies, in application order."""
        return tuple(name for name, _ in self._rules)

    def check(
        self, query: str, candidate: str, cosine: float | None = None, *, threshold: float | None = None
    ) -> Verdict:
        """Compares two texts with the rules, then the learned check (no similarity gate).

        Args:
            query: The incoming request's text.
            candidate: The cached entry's request text.
            cosine: Cosine similarity of the two embeddings; required when the learned check is on.
            threshold: The learned check's probability threshold for this call (the false-hit controller
                raises it); defaults to the verifier's own.

        Returns:
            ``accept=False`` with the first objecting rule's name (or ``learned_check``), or ``accept=True``.

        Raises:
            ValueError: The learned check is on and no cosine was given (it is never skipped silently).
        """
        q, c = analyze(query), analyze(candidate)
        if q.canonical == c.canonical:
            return Verdict(True, "identical", score=1.0 if self.learned else None)
        for name, rule in self._rules:
            detail = rule(q, c)
            if detail is not None:
                return Verdict(False, name, detail)
        if self.learned is None:
            return Verdict(True, "no_conflict")
        if cosine is None:
            raise ValueError("the learned check needs the candidate's cosine")
        score = self.learned.probability(query, candidate, cosine, passed=self._names)
        needed = self.learned_threshold if threshold is None else threshold
        if score < needed:
            return Verdict(False, LEARNED_REASON, f"p={score:.3f} < {needed:.2f}", score)
        return Verdict(True, "no_conflict", score=score)

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
        return self.check(query, candidate, cosine)


_DEFAULT = Verifier()


def verify(query: str, candidate: str, cosine: float, threshold: float) -> Verdict:
    """Checks a tier-2 candidate with :data:`DEFAULT_RULES`; see :meth:`Verifier.verify`."""
    return _DEFAULT.verify(query, candidate, cosine, threshold)
