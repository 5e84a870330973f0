"""Turns one text into the features the tier-2 verifier compares.

Analysis is pure, deterministic and memoised per text (the cached side of a pair recurs), so the verifier
pays for each distinct text once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tollway.cache.verify_lexicon import (
    ABBREVIATIONS,
    CLOSED_CLASSES,
    DENOMINATORS,
    LANGUAGE_ALIASES,
    MONTH_ABBREVIATIONS,
    NEGATIONS,
    NOT_SUPERLATIVES,
    NUMBER_SUFFIXES,
    NUMBER_WORDS,
    ORDINAL_WORDS,
    SCALE_WORDS,
    STOPWORDS,
    SUPERLATIVE_WORDS,
    SYNONYMS,
    TIME_MODIFIERS,
    TIME_PERIODS,
    TIME_WORDS,
    UNIT_DIMENSIONS,
    UNITS,
)
from tollway.cache.verify_numbers import Quantity, extract_quantities

__all__ = ["Features", "Token", "analyze", "is_superlative", "normalise_request", "similar", "stem"]

# Words with letters, digits and the joiners that keep names whole ("c#", "c++", "node.js", "don't").
_TOKEN_RE = re.compile(r"[^\W_](?:[\w'\u2019.+#-]*[\w+#])?")
_SENTENCE_END = frozenset(".?!:;\n\"'(")
_CLAUSE_END = _SENTENCE_END | frozenset(",)")
_NUMERIC_RE = re.compile(r"^[\d.,/:-]+$")
# Where a word splits into parts: dots and hyphens ("node.js", "USB-C"), and a "+" between two letters or
# digits, which chains names ("Java+JSP+Tomcat+MySQL": a stack, each part a name of its own). A trailing
# "+" belongs to the name ("C++", "Notepad++") and stays.
_PART_SPLIT_RE = re.compile(r"[.-]|(?<=[^\W_])\+(?=[^\W_])")
_DIGIT_RE = re.compile(r"\d")
_LETTER_RE = re.compile(r"[^\W\d_]")
_UPPER_RE = re.compile(r"[A-Z]")
_NAME_MARK_RE = re.compile(r"[+#]")
_FIRST_PERSON = frozenset({"I", "I'm", "I've", "I'd", "I'll"})
_CLITIC_RE = re.compile(r"'(?:s|ve|re|ll|d|m)$|(?<=s)'$")
# A number glued to a unit, magnitude or ordinal suffix ("10GB", "5mg", "2nd"): a quantity, not a name.
_GLUED_QUANTITY_RE = re.compile(r"^\d+(?:\.\d+)?([a-z%°]+)$")
_ORDINAL_SUFFIXES = frozenset({"st", "nd", "rd", "th"})
# Request wrappers that do not change what is asked: "can you tell me", "please", "quick question:". Removed
# before analysis so that a wrapped and a bare question compare as one (general English phrasing, the kind
# an assistant's users put around a search query).
_WRAPPER_HEAD_RE = re.compile(
    r"^\s*(?:(?:hi|hello|hey)\b[\s,!]*)?(?:(?:please|kindly|quick question|question|q)\s*[:,-]?\s*)?"
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:tell|show|explain(?:\s+to)?|give|let)\s+me"
    r"(?:\s+know)?\s*[:,-]?\s*|i\s+(?:want|would\s+like|need)\s+to\s+know\s*[:,-]?\s*"
    r"|(?:please\s+)?(?:tell|show)\s+me\s*[:,-]\s*)?",
    re.IGNORECASE,
)
_WRAPPER_TAIL_RE = re.compile(r"[\s,]*(?:please|thanks|thank you|pls|thx)?[\s?.!]*$", re.IGNORECASE)
# Connectives that relate two arguments in one direction: swapping the arguments changes the question
# ("convert X to Y", "X better than Y", "what do X think of Y"). Symmetric ones (and, or, vs) are absent.
DIRECTIONAL = frozenset({"to", "into", "from", "than", "over", "of", "about", "for", "in", "on", "at", "by",
                         "against", "toward", "towards", "->", "→"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Token:
    """One content word of a text.

    Attributes:
        key: Canonical form compared across texts (lower case, synonym-folded, stemmed).
        entity: Whether the surface form looks like a name: capitalised mid-sentence, an acronym, letters
            mixed with digits, or carrying ``#``/``+``.
        position: Index of the word in the text's word sequence (stopwords included).
    """

    key: str
    entity: bool
    position: int


def normalise_request(text: str) -> str:
    """The question inside a request wrapper: "Can you tell me what X is, please?" -> "what X is".

    Only wrappers at the very start or end are removed, so a wrapper word inside the question stays.
    """
    head = _WRAPPER_HEAD_RE.match(text)
    body = text[head.end() :] if head else text
    tail = _WRAPPER_TAIL_RE.search(body)
    body = body[: tail.start()] if tail else body
    return body if body.strip() else text


def is_superlative(word: str) -> bool:
    """Whether a lower-case word is a superlative ("largest", "best", "most"): its qualifiers matter."""
    if word in SUPERLATIVE_WORDS:
        return True
    return len(word) >= 6 and word.endswith("est") and word.isalpha() and word not in NOT_SUPERLATIVES


@dataclass(frozen=True, slots=True)
class Features:
    """What the verifier compares about one text.

    Attributes:
        canonical: The text lower-cased, with runs of whitespace and a trailing ".", "?" or "!" collapsed:
            equal only for trivially different spellings of one text.
        words: Every lower-cased word, stopwords included (antonyms and connectives need them).
        tokens: Content words in order.
        negations: How many negation cues the text has.
        quantities: Numbers mentioned, with units, in order, repeats kept.
        classes: Closed-class members named, by class ("month" -> {"june"}, "time" -> {"today"}).
        clause_starts: Positions of words that open a clause (after . , ; : ? ! or a bracket).
        units: Canonical units of measure (see ``UNIT_DIMENSIONS``) named anywhere, with or without a number.
        ordinals: Ordinal positions named ("second" 2, "last" -1, "next-to-last" -2), each with whether it
            modifies a superlative ("second largest").
        superlatives: Each superlative said once, with the content keys of the words that qualify it
            ("oldest living president" -> {"oldest": {"liv", "president"}}).
    """

    canonical: str
    words: tuple[str, ...]
    tokens: tuple[Token, ...]
    negations: int
    quantities: tuple[Quantity, ...]
    classes: dict[str, frozenset[str]]
    clause_starts: frozenset[int]
    units: frozenset[str]
    ordinals: tuple[tuple[int, bool], ...] = ()
    superlatives: dict[str, frozenset[str]] | None = None

    @property
    def keys(self) -> frozenset[str]:
        """The set of content keys."""
        return frozenset(token.key for token in self.tokens)


def stem(word: str) -> str:
    """Strips common English inflections so that "sorting", "sorted" and "sorts" compare equal.

    Args:
        word: A lower-case word.

    Returns:
        A crude stem, not necessarily a word ("encod" for "encoding", "encoded" and "encode").
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, replacement in (("sses", "ss"), ("xes", "x"), ("ches", "ch"), ("shes", "sh")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + replacement
    # Porter's y -> i: "study", "studies", "studied" -> "studi"; "movie", "movies" -> "movi".
    if word.endswith(("ies", "ied")) and len(word) >= 5:
        return word[:-2]
    if word.endswith("y") and len(word) >= 4 and word[-2] not in "aeiou":
        return word[:-1] + "i"
    if word.endswith("oes") and len(word) >= 5:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if word[-1] == word[-2] and word[-1] not in "aeioulsz":
                word = word[:-1]  # "running" -> "run"
            break
    if word.endswith("e") and len(word) >= 4 and word[-2] != "e":
        word = word[:-1]
    return word


def similar(left: str, right: str) -> bool:
    """Whether two comparison keys are spelling or derivational variants of one word.

    True for a shared prefix of at least five letters covering three quarters of the shorter key
    ("negotiat"/"negotiation", "german"/"germany", "europ"/"european"), for a dropped or doubled letter in
    keys of five letters or more ("happen"/"happpen", "favorit"/"favourit") and for one wrong letter in
    keys of seven or more. "java"/"javascript" and "microsoft"/"microservic" are not.
    """
    if left == right:
        return True
    if _DIGIT_RE.search(left) or _DIGIT_RE.search(right):
        return False  # "1200d"/"12000d", "k8s"/"k3s": codes differ by the one character that matters
    if _NAME_MARK_RE.search(left) or _NAME_MARK_RE.search(right):
        return False  # "notepad++"/"notepad", "f#"/"f": the mark makes another product, not a spelling
    shorter = min(len(left), len(right))
    prefix = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        prefix += 1
    if prefix >= 5 and prefix >= 0.75 * shorter:
        return True
    if len(left) == len(right):
        return shorter >= 7 and _one_edit(left, right)
    return shorter >= 5 and abs(len(left) - len(right)) == 1 and _one_edit(left, right)


def _one_edit(left: str, right: str) -> bool:
    if len(left) > len(right):
        left, right = right, left
    i = 0
    while i < len(left) and left[i] == right[i]:
        i += 1
    if len(left) == len(right):
        return left[i + 1 :] == right[i + 1 :]
    return left[i:] == right[i + 1 :]


_QUANTITY_TAILS = frozenset(UNITS) | frozenset(DENOMINATORS) | {"times", "time", "fold"}


def _is_number_word(word: str) -> bool:
    return bool(_NUMERIC_RE.match(word)) or word in NUMBER_WORDS or word in SCALE_WORDS or word in {"a", "an"}


@lru_cache(maxsize=65536)
def _key(word: str) -> str:
    """Canonical comparison key of a content word: synonym group representative, then stem."""
    if word in SYNONYMS:
        return stem(SYNONYMS[word])
    stemmed = stem(word)
    return _STEMMED_SYNONYMS.get(stemmed, stemmed)


def _looks_like_name(surface: str, sentence_initial: bool, title_case_text: bool) -> bool:
    if surface.isalpha() and surface.islower():
        return False  # the common case, decided without scanning
    if "#" in surface or "+" in surface:
        return True
    if _DIGIT_RE.search(surface) and _LETTER_RE.search(surface):
        return True
    if len(_UPPER_RE.findall(surface)) >= 2:
        return True  # acronyms and camel case: "IIT", "iOS", "GitLab"
    if title_case_text or sentence_initial or surface in _FIRST_PERSON:
        return False
    return surface[:1].isupper()


@lru_cache(maxsize=4096)
def analyze(text: str) -> Features:
    """Extracts the comparable features of a text.

    Args:
        text: A query or a cached query, any length.

    Returns:
        Its features; the same object for the same text while it stays in the memo.
    """
    text = normalise_request(text)
    matches = list(_TOKEN_RE.finditer(text))
    # In Title Case Headlines even function words are capitalised, and capitals say nothing about names.
    function_words = [m.group() for m in matches[1:] if m.group().lower() in STOPWORDS]
    capitalised = sum(1 for w in function_words if w[:1].isupper())
    title_case_text = len(function_words) >= 2 and capitalised / len(function_words) > 0.5

    words: list[str] = []
    surfaces: list[tuple[str, bool]] = []
    clause_starts: set[int] = set()
    for match in matches:
        start = match.start()
        j = start - 1
        while j >= 0 and text[j].isspace():
            j -= 1
        previous = text[j] if j >= 0 else ""
        sentence_initial = not previous or previous in _SENTENCE_END
        if not previous or previous in _CLAUSE_END:
            clause_starts.add(len(words))
        surface = match.group().replace("\u2019", "'")  # typographic apostrophe
        # Split dotted and hyphenated names into parts, but keep numbers and "u.s."-style abbreviations.
        lower = surface.lower()
        if _PART_SPLIT_RE.search(surface) and not _NUMERIC_RE.match(surface) and lower not in ABBREVIATIONS:
            parts = [p for p in _PART_SPLIT_RE.split(surface) if p]
        else:
            parts = [surface]
        for index, part in enumerate(parts):
            words.append(part.lower())
            surfaces.append((part, sentence_initial and index == 0))

    negations = sum(
        1
        for i, w in enumerate(words)
        if (w in NEGATIONS or w.endswith("n't"))
        # "... or not", "why or why not", "not only": no claim is negated.
        and not (w == "not" and "or" in words[max(0, i - 2) : i])
        and not (w == "not" and i + 1 < len(words) and words[i + 1] == "only")
    )
    # Possessives and contractions: "Trump's" is "Trump", "you've" is "you".
    words = [_CLITIC_RE.sub("", w) if not w.endswith("n't") else w for w in words]

    classes: dict[str, set[str]] = {}
    tokens: list[Token] = []
    for position, ((surface, initial), word) in enumerate(zip(surfaces, words, strict=True)):
        cls = CLOSED_CLASSES.get(word)
        if word == "may" and surface == "May" and not initial:
            cls = "month"
        if cls is None and word in MONTH_ABBREVIATIONS and surface[:1].isupper():
            word, cls = MONTH_ABBREVIATIONS[word], "month"
        if cls is not None:
            classes.setdefault(cls, set()).add(LANGUAGE_ALIASES.get(word, word))
        time = TIME_WORDS.get(word)
        if word in TIME_PERIODS and position > 0 and words[position - 1] in TIME_MODIFIERS:
            modifier = words[position - 1]
            time = f"{'this' if modifier in {'this', 'coming'} else modifier}_{word}"
            time = time.replace("previous_", "last_").replace("past_", "last_")
        if time is not None:
            classes.setdefault("time", set()).add(time)

        shouted_abbreviation = surface.isupper() and len(surface) > 1 and word in ABBREVIATIONS  # "US", "IT"
        if (word in STOPWORDS and not shouted_abbreviation) or word in NEGATIONS or word.endswith("n't"):
            continue
        if _NUMERIC_RE.match(word) or word in NUMBER_WORDS or word in SCALE_WORDS:
            continue  # compared as quantities
        glued = _GLUED_QUANTITY_RE.match(word)
        if glued and (glued[1] in UNITS or glued[1] in NUMBER_SUFFIXES or glued[1] in _ORDINAL_SUFFIXES):
            continue  # "10GB" is "10 GB": a quantity (compared as such), not a name
        if position > 0 and _is_number_word(words[position - 1]) and word in _QUANTITY_TAILS:
            continue  # "3 dollars", "10 km", "2 times", "one fourth": part of the quantity
        entity = _looks_like_name(surface, initial, title_case_text)
        expansion = ABBREVIATIONS.get(word)
        for part in expansion or (word,):
            if part in STOPWORDS:
                continue
            tokens.append(Token(_key(part), entity, position))

    quantities = extract_quantities(text)
    ordinals = _ordinals(words)
    superlatives = _superlatives(words, tokens)
    units = frozenset(UNITS[w] for w in words if w in UNITS and UNITS[w] in UNIT_DIMENSIONS) | frozenset(
        q.unit for q in quantities if q.unit in UNIT_DIMENSIONS
    )
    return Features(
        canonical=" ".join(text.lower().split()).strip(" .?!"),
        words=tuple(words),
        tokens=tuple(tokens),
        negations=negations,
        quantities=quantities,
        classes={name: frozenset(members) for name, members in classes.items()},
        clause_starts=frozenset(clause_starts),
        units=units,
        ordinals=ordinals,
        superlatives=superlatives,
    )


def _ordinals(words: list[str]) -> tuple[tuple[int, bool], ...]:
    found: list[tuple[int, bool]] = []
    i = 0
    while i < len(words):
        word = words[i]
        position = ORDINAL_WORDS.get(word)
        # "next-to-last", "second-to-last", "third to last": counted from the end.
        if i + 2 < len(words) and words[i + 1] == "to" and words[i + 2] == "last" and (word == "next" or position):
            found.append((-(position or 1) - 1, True))
            i += 3
            continue
        following = words[i + 1] if i + 1 < len(words) else ""
        ranks = is_superlative(following)
        # "a second", "5 second delay" are time; "a second largest", "five second tallest" still rank.
        if position is None or (word == "second" and not ranks and _is_time_second(words, i)):
            i += 1
            continue
        found.append((position, ranks))
        i += 1
    return tuple(found)


def _is_time_second(words: list[str], i: int) -> bool:
    # "a second", "5 second delay", "per second", "a second or two": the unit, not the ordinal.
    previous = words[i - 1] if i else ""
    return previous in {"a", "per", "one", "every", "each", "milli", "split"} or _is_number_word(previous)


_QUALIFIER_WIDTH = 3


def _superlatives(words: list[str], tokens: list[Token]) -> dict[str, frozenset[str]]:
    by_position = {token.position: token.key for token in tokens}
    counts: dict[str, int] = {}
    out: dict[str, frozenset[str]] = {}
    for i, word in enumerate(words):
        if not is_superlative(word):
            continue
        counts[word] = counts.get(word, 0) + 1
        qualifiers = []
        for j in range(i + 1, min(len(words), i + 1 + _QUALIFIER_WIDTH)):
            if j not in by_position:
                break  # a stopword ends the noun phrase: "largest city in Texas" -> {city}
            qualifiers.append(by_position[j])
        out[word] = frozenset(qualifiers)
    # Only superlatives said once can be lined up between two texts.
    return {word: qualifiers for word, qualifiers in out.items() if counts[word] == 1}


_STEMMED_SYNONYMS: dict[str, str] = {stem(word): stem(rep) for word, rep in SYNONYMS.items()}
