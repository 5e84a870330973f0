"""Extracts the quantities a text mentions, normalised so that two wordings of one value compare equal.

"5 km", "five kilometers" and "5km" all give ``Quantity("5", "km")``; "$3.00" and "3 dollars" give
``Quantity("3", "usd")``; "twice" gives 2, "one-fourth", "a quarter" and "1/4" give 0.25; "9.3.1" stays the
version string "9.3.1". The value 1 is dropped: "one" and "a" are interchangeable in English ("a week",
"one week", "the first week"), and a change to or from 1 still shows on the other side ("1 week" vs
"2 weeks" leaves {} vs {2}); only a 1 written with digits and a unit ("1TB") is kept, since "1TB" vs "1GB"
differs in nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tollway.cache.verify_lexicon import (
    CURRENCY_SYMBOLS,
    DENOMINATORS,
    NUMBER_SUFFIXES,
    NUMBER_WORDS,
    SCALE_WORDS,
    UNITS,
)

__all__ = ["Quantity", "extract_quantities"]


@dataclass(frozen=True, slots=True)
class Quantity:
    """One number a text mentions.

    Attributes:
        value: Canonical spelling: shortest decimal form ("3", "0.25", "22.04") or a dotted version string.
        unit: Canonical unit the number is written with ("km", "usd", "percent"), or None.
    """

    value: str
    unit: str | None = None


# A number with an optional currency symbol before it, and an optional magnitude suffix or unit glued or
# spaced after it. Thousands separators only in groups of three ("1,000"); "1,5" is two numbers.
_NUMBER_RE = re.compile(
    r"(?:(?P<cur>[$€£¥₹])\s?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)*)"
    r"(?:/(?P<den>\d+))?"
    r"(?P<suffix>(?:k|m|bn|b)(?![a-z]))?"
    r"(?P<glued>%|°\s?[cf]\b|[a-z]+(?:/h)?)?",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*|°[cf]|%|[$€£¥₹]")


def _canonical(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def _unit_after(words: list[str], index: int) -> str | None:
    """The canonical unit named by words[index] (or words[index:index+2] for "per cent"), if any."""
    if index >= len(words):
        return None
    if index + 1 < len(words) and f"{words[index]} {words[index + 1]}" in UNITS:
        return UNITS[f"{words[index]} {words[index + 1]}"]
    return UNITS.get(words[index])


def _digit_quantities(text: str) -> tuple[list[Quantity], str]:
    """Numbers written with digits; returns them and the text with each replaced by a placeholder."""
    found: list[Quantity] = []
    pieces: list[str] = []
    last = 0
    for match in _NUMBER_RE.finditer(text):
        start, end = match.span()
        # A digit glued to letters on its left ("mp3", "k8s", "x1") is part of a name, not a quantity.
        if start > 0 and (text[start - 1].isalpha() or text[start - 1] == "_") and not match["cur"]:
            continue
        raw = match["num"].replace(",", "")
        unit = CURRENCY_SYMBOLS.get(match["cur"] or "")
        glued = (match["glued"] or "").lower().replace(" ", "")
        if glued and glued not in UNITS and not (glued.startswith("°") or glued == "%"):
            # "5th", "3rd" are ordinals of the number; "2x" etc. keep the number; other glued letters are
            # part of a name ("4k" handled as a suffix above, "3d" stays a name).
            if glued in {"st", "nd", "rd", "th", "x", "s", "am", "pm"}:
                glued = ""
            elif len(glued) <= 3 and not match["cur"]:
                # A model or rating code ("700D", "5G", "0.7A", "2000mAh"): the number is what differs
                # between two such codes, so it is kept, with the letters as its unit.
                found.append(Quantity(_canonical(float(raw)) if raw.count(".") <= 1 else raw, glued))
                pieces.append(text[last:start])
                pieces.append(" \x00 ")
                last = end
                continue
            else:
                pieces.append(text[last:start])
                pieces.append(" ")
                last = end
                continue
        second = None
        if raw.count(".") > 1:
            value = raw  # a version or an address, compared as written
        else:
            number = float(raw)
            if match["den"]:
                denominator = float(match["den"])
                if number < denominator:
                    number = number / denominator
                else:  # "24/7", "9/11": two numbers, not a fraction
                    second = Quantity(_canonical(denominator))
            if match["suffix"]:
                number *= NUMBER_SUFFIXES[match["suffix"].lower()]
            value = _canonical(number)
        if glued:
            unit = UNITS.get(glued, "celsius" if glued.endswith("c") else "fahrenheit" if glued.endswith("f")
                             else "percent")  # fmt: skip
        found.append(Quantity(value, unit))
        pieces.append(text[last:start])
        pieces.append(" \x00 ")  # placeholder so a following unit word can attach to this number
        if second is not None:
            found.append(second)
            pieces.append(" \x00 ")
        last = end
    pieces.append(text[last:])
    return found, "".join(pieces)


def extract_quantities(text: str) -> tuple[Quantity, ...]:
    """Returns the quantities a text mentions (digits and number words), units attached where written.

    Args:
        text: Any text; case does not matter.

    Returns:
        The quantities in order of appearance, repeats kept (a question that drops one of two "4"s asks
        something else), without the value 1 (see the module docstring).
    """
    lowered = text.lower()
    digit_found, rest = _digit_quantities(lowered)
    keep_ones = {q for q in digit_found if q.value == "1" and q.unit}
    quantities: list[Quantity] = []
    words: list[str] = []
    for token in re.findall(r"\x00|" + _WORD_RE.pattern, rest):
        words.extend(token.split("-") if "-" in token else [token])
    digit_iter = iter(digit_found)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "\x00":
            quantity = next(digit_iter)
            if quantity.unit is None:
                unit = _unit_after(words, i + 1)
                quantity = Quantity(quantity.value, unit)
            quantities.append(quantity)
            i += 1
            continue
        if word in CURRENCY_SYMBOLS:
            i += 1
            continue
        value, consumed = _parse_number_words(words, i)
        if consumed:
            quantities.append(Quantity(_canonical(value), _unit_after(words, i + consumed)))
            i += consumed
            continue
        i += 1
    # "1TB" vs "1MB" still differ: a 1 written with digits and a unit is kept.
    return tuple(q for q in quantities if q.value != "1" or q in keep_ones)


def _parse_number_words(words: list[str], start: int) -> tuple[float, int]:
    """Parses a run of number words at words[start]; returns (value, words consumed), consumed 0 if none."""
    word = words[start]
    # "a half", "a quarter", "a third", "a dozen"
    if word == "a" and start + 1 < len(words):
        following = words[start + 1]
        if following in {"half", "quarter", "dozen", "third", "fourth", "fifth"}:
            value = NUMBER_WORDS.get(following) or 1 / DENOMINATORS[following]
            return (12.0 if following == "dozen" else float(value)), 2
        return 0.0, 0
    if word not in NUMBER_WORDS and word not in SCALE_WORDS:
        return 0.0, 0
    total = 0.0
    current = 0.0
    i = start
    while i < len(words):
        w = words[i]
        if w in SCALE_WORDS:
            current = (current or 1.0) * SCALE_WORDS[w]
            if SCALE_WORDS[w] >= 1000:
                total += current
                current = 0.0
        elif w in NUMBER_WORDS and (i == start or NUMBER_WORDS[w] >= 1):
            if i > start and NUMBER_WORDS[w] >= 1 and current and current % 10 == 0 and NUMBER_WORDS[w] < 10:
                current += NUMBER_WORDS[w]  # "twenty five"
            elif i > start and current:
                break  # "two three" is two numbers
            else:
                current = float(NUMBER_WORDS[w])
        elif w == "and" and i > start and i + 1 < len(words) and words[i + 1] in NUMBER_WORDS:
            pass  # "one hundred and five"
        else:
            break
        i += 1
    value = total + current
    # "one third", "two fifths", "three quarters": a fraction.
    if i < len(words) and words[i] in DENOMINATORS and 0 < value < 10 and i > start:
        value = value / DENOMINATORS[words[i]]
        i += 1
    return value, i - start
