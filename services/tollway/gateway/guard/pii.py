"""PII and secret detection: where personal data and credentials sit in a text.

Each detector is a cheap candidate pattern (compiled once) followed by a real check from a
maintained library wherever one exists, so a number that merely looks right is not taken:

==============  =====================================================  ======================
type            candidates                                             confirmed by
==============  =====================================================  ======================
email           ``local@domain.tld``                                   the pattern alone
phone           digit runs with ``+``, spaces, dots, dashes, brackets  ``phonenumbers``
                                                                       (libphonenumber's
                                                                       numbering plans)
card            13-19 digits, in one piece or grouped as cards are    ``stdnum.luhn`` and
                written (fours; 4-6-4, 4-6-5), not glued to letters    the issuer prefixes
iban            two letters, two digits, 11-30 more, optional spaces    ``stdnum.iban``
                                                                       (format per country,
                                                                       mod 97)
national_id     the written forms of US SSN, Spanish DNI/NIE, Italian  ``stdnum`` per kind;
                codice fiscale, French NIR, Brazilian CPF, Indian      the UK NINO by its
                Aadhaar (grouped), UK NINO                             format rules
secret          known key formats (OpenAI, Anthropic, AWS, GitHub,     the pattern alone
                Slack, Google, GitLab, Stripe, Tollway, JWT, PEM)
                and ``api_key=...``-style assignments
==============  =====================================================  ======================

Why not ``phonenumbers.PhoneNumberMatcher``: it is exact but costs about 9 ms per kilobyte
of text; the candidate pattern plus ``phonenumbers.parse``/``is_valid_number`` on the few
candidates finds the same numbers in a fraction of that. Why not presidio-analyzer: it
requires spaCy and an NLP model at import, and its pattern recognizers are regexes with the
same checksums ``python-stdnum`` provides. Postal addresses are not detected: the offline
libraries parse an address you already have (usaddress, US only) or need a 2 GB model
(libpostal); none finds one in free text reliably.

Plain digit runs with weak checksums (Dutch BSN, German tax id, PESEL) are not taken as
national ids: about one random 9-11 digit number in ten passes their checks, so they would
flag order numbers. Their written forms with separators are too rare to be worth the noise.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Callable, Iterable, Sequence

import ahocorasick
import phonenumbers
from stdnum import ean, luhn
from stdnum import iban as stdnum_iban
from stdnum.br import cpf
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.us import ssn

from tollway.mesh.frozen import frozen

__all__ = ["Finding", "PiiType", "Scanner", "card_issuer", "iban_valid", "luhn_valid"]


class PiiType(enum.Enum):
    """The kinds of personal data and secrets the guards know, as the policy file names them."""

    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    IBAN = "iban"
    NATIONAL_ID = "national_id"
    SECRET = "secret"


# When two candidates overlap, the more specific wins: a card number is also a digit run a
# phone parser may accept, an IBAN holds digit groups, a secret may hold an '@'.
_PRIORITY = {
    PiiType.SECRET: 0,
    PiiType.EMAIL: 1,
    PiiType.IBAN: 2,
    PiiType.CARD: 3,
    PiiType.NATIONAL_ID: 4,
    PiiType.PHONE: 5,
}


@frozen(slots=True)
class Finding:
    """One detected item: ``text[start:end]`` is a ``type`` (``kind`` refines it: "us_ssn", "aws")."""

    type: PiiType
    kind: str
    start: int
    end: int


# --- checks --------------------------------------------------------------------------------

_NOT_DIGIT = re.compile(r"\D")


def luhn_valid(number: str) -> bool:
    """Whether the digits of ``number`` (separators ignored) pass the Luhn check."""
    digits = _NOT_DIGIT.sub("", number)
    return bool(digits) and luhn.is_valid(digits)


def card_issuer(digits: str) -> str:
    """The card network a 13-19 digit number's prefix and length belong to ("" when none).

    Ranges from the networks' published IIN tables; only the major ones, since a number
    outside them that passes Luhn is more likely an id of some other kind.
    """
    n = len(digits)
    p2, p4, p6 = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or p2 == 65 or 644 <= int(digits[:3]) <= 649 or 622126 <= p6 <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= int(digits[:3]) <= 305 or p2 in (36, 38, 39) or p4 == 3095) and 14 <= n <= 19:
        return "diners"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if (p2 in (50, 56, 57, 58) or 60 <= p2 <= 69) and 12 <= n <= 19:
        return "maestro"
    return ""


def iban_valid(text: str) -> bool:
    """Whether ``text`` (spaces allowed) is an IBAN: a known country, its length and format, mod 97.

    The countries' own BBAN rules are not applied (``check_country=False``): python-stdnum's
    Belgian check, for one, also wants the bank code in its bank list and refuses the
    registry's own example. For spotting personal data, structure plus mod 97 (a 1 in 97
    chance for a random string of the right shape) is the right strength.
    """
    return stdnum_iban.is_valid(text, check_country=False)


# --- candidate patterns, compiled once --------------------------------------------------------
# Speed rules (CPython's re): a pattern that starts with a literal is found with a fast
# substring search; one that starts with a lookbehind or \b is tried at every position
# (about 70 ns a character). So every pattern here starts with a literal or a character
# class, and left boundaries are checked by hand (`_starts_word`). Digit-bearing items are
# found in one pass over digit runs; the item patterns then run inside each run only.

_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9][\w.%+-]{0,63}$")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}\b")

# (kind, literal prefix, rest): one pattern per prefix keeps the fast literal search.
_SECRET_SPECS: tuple[tuple[str, str, str], ...] = (
    (
        "private_key",
        "-----BEGIN ",
        r"(?:[A-Z]+ )*PRIVATE KEY-----(?:[\s\S]{0,8192}?-----END (?:[A-Z]+ )*PRIVATE KEY-----)?",
    ),
    ("anthropic", "sk-ant-", r"[A-Za-z0-9_-]{20,}"),
    ("openai", "sk-", r"(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    ("stripe", "sk_", r"(?:live|test)_[A-Za-z0-9]{16,}"),
    ("stripe", "rk_", r"(?:live|test)_[A-Za-z0-9]{16,}"),
    ("aws", "AKIA", r"[0-9A-Z]{16}\b"),
    ("aws", "ASIA", r"[0-9A-Z]{16}\b"),
    *(("github", f"gh{c}_", r"[A-Za-z0-9]{36,}") for c in "pousr"),
    ("github", "github_pat_", r"[A-Za-z0-9_]{40,}"),
    ("gitlab", "glpat-", r"[A-Za-z0-9_-]{20,}"),
    *(("slack", f"xox{c}-", r"[A-Za-z0-9-]{10,}") for c in "abposr"),
    ("google", "AIza", r"[0-9A-Za-z_-]{35}"),
    ("tollway", "tw-", r"[A-Za-z0-9_-]{40,}"),
    ("jwt", "eyJ", r"[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
)
# `password = <value>`: the value only (group 1), when it looks generated. Names are matched
# in the three cases people write them (password, PASSWORD, Password).
_ASSIGNMENT_NAMES = (
    "api_key",
    "api-key",
    "apikey",
    "secret",
    "access_token",
    "auth_token",
    "password",
    "passwd",
    "client_secret",
)
_ASSIGNMENT_VALUE = r"[\"']?\s{0,3}[:=]\s{0,3}[\"']?([A-Za-z0-9_\-/+=.]{16,})"


def _secret_automaton() -> ahocorasick.Automaton:
    """Every secret prefix and assignment name in one automaton: one pass over the text finds
    them all (pyahocorasick, C), and only there does a pattern run, anchored after the prefix."""
    entries: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
    for kind, prefix, rest in _SECRET_SPECS:
        entries.setdefault(prefix, []).append((kind, re.compile(rest)))
    value = re.compile(_ASSIGNMENT_VALUE)
    for name in _ASSIGNMENT_NAMES:
        for spelled in {name, name.upper(), name.capitalize()}:
            entries.setdefault(spelled, []).append(("assignment", value))
    automaton = ahocorasick.Automaton()
    for prefix, kinds in entries.items():
        automaton.add_word(prefix, (len(prefix), tuple(kinds)))
    automaton.make_automaton()
    return automaton


_SECRET_TRIGGERS = _secret_automaton()
_HAS_LETTER_AND_DIGIT = re.compile(r"(?=.*[A-Za-z])(?=.*\d)")

# A run of digits and the separators numbers are written with; the digit-started items
# below are looked for inside runs only.
# Maximal runs of 7 or more characters: no digit-started item is shorter.
_LONG_DIGIT_RUN = re.compile(r"\d[\d \u00a0\-./()]{6,}")
# A capital right before a digit (or one separator and a digit): where items that start with
# capitals reach their first digits.
_CAPITAL_THEN_DIGIT = re.compile(r"[A-Z](?=[ -]?\d)")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?!\d)")
_PHONE = re.compile(r"(?:\+|00)?\(?\d[\d \u00a0().\-]{5,22}\d(?!\w)")
_DIGIT_IDS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool]], ...] = (
    ("us_ssn", re.compile(r"\d{3}-\d{2}-\d{4}(?![\w-])"), ssn.is_valid),
    ("es_dni", re.compile(r"\d{8}-?[A-Za-z](?!\w)"), dni.is_valid),
    ("fr_nir", re.compile(r"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?!\w)"), nir.is_valid),
    ("br_cpf", re.compile(r"\d{3}\.\d{3}\.\d{3}-\d{2}(?!\w)"), cpf.is_valid),
    ("in_aadhaar", re.compile(r"[2-9]\d{3}[ -]\d{4}[ -]\d{4}(?!\w)"), aadhaar.is_valid),
)
# Items that start with capitals, tried where a digit run follows capitals (see _digit_runs).
_CAPS = re.compile(
    r"(?P<iban>[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9]))"
    r"|(?P<it_codice_fiscale>[A-Z]{6}\d{2}[A-EHLMPRST]\d{2}[A-Z]\d{3}[A-Z](?!\w))"
    r"|(?P<es_nie>[XYZ]-?\d{7}-?[A-Z](?!\w))"
    r"|(?P<gb_nino>[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w))"
)
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
_CAPS_CHECKS: dict[str, Callable[[str], bool]] = {
    "it_codice_fiscale": codicefiscale.is_valid,
    "es_nie": nie.is_valid,
    "gb_nino": lambda v: v[:2] not in _NINO_BAD_PREFIXES,
}

_DIGIT = re.compile(r"\d")
_PHONE_SEPARATORS = str.maketrans("", "", " \u00a0().-")


def _starts_word(text: str, start: int) -> bool:
    """Whether ``start`` begins a token: the character before it is not a letter, digit or '_'."""
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_")


class Scanner:
    """Finds PII in text; one instance per policy (it is immutable and thread-safe).

    Args:
        types: The types to look for (the policy's types whose action is not "allow").
        phone_regions: ISO 3166 region codes tried, in order, for phone numbers written
            without a country code ("+44 ..." numbers need none).
    """

    def __init__(self, types: Iterable[PiiType] = tuple(PiiType), phone_regions: Sequence[str] = ("US", "GB")) -> None:
        self.types = frozenset(types)
        self.phone_regions = tuple(phone_regions)

    def scan(self, text: str) -> list[Finding]:
        """The findings in ``text``, ordered by position, never overlapping.

        Where two candidates overlap, the more specific type wins (secret, email, iban,
        card, national id, phone), then the longer one.
        """
        found: list[Finding] = []
        types = self.types
        if PiiType.SECRET in types:
            self._secrets(text, found)
        if PiiType.EMAIL in types and "@" in text:
            self._emails(text, found)
        # Everything below needs digits: most prose has few, so one search skips the rest.
        if types & _DIGIT_TYPES and _DIGIT.search(text) is not None:
            self._digit_runs(text, found)
        return _resolve(found) if len(found) > 1 else found

    def _secrets(self, text: str, out: list[Finding]) -> None:
        for end, (length, kinds) in _SECRET_TRIGGERS.iter(text):
            start = end - length + 1
            if not _starts_word(text, start) and kinds[0][0] != "private_key":
                continue
            for kind, rest in kinds:
                m = rest.match(text, end + 1)
                if m is None:
                    continue
                if kind != "assignment":
                    out.append(Finding(PiiType.SECRET, kind, start, m.end()))
                elif _HAS_LETTER_AND_DIGIT.match(text, *m.span(1)) is not None:
                    out.append(Finding(PiiType.SECRET, kind, *m.span(1)))
                break  # the first kind that matches at a prefix is the most specific

    def _emails(self, text: str, out: list[Finding]) -> None:
        at = text.find("@")
        while at != -1:
            left = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
            right = _EMAIL_DOMAIN.match(text, at + 1)
            if left is not None and right is not None:
                start = left.start()
                # The local part may not begin in the middle of a token it left out.
                while start < at and not _starts_word(text, start) and text[start - 1] not in " \t\n<(\"',;:":
                    start += 1
                if start < at and not _git_remote(text, start, right.end()):
                    out.append(Finding(PiiType.EMAIL, "email", start, right.end()))
                at = text.find("@", right.end())
            else:
                at = text.find("@", at + 1)

    def _capitals(self, text: str, at: int, tried: set[int], out: list[Finding]) -> None:
        """Items that start with capitals, around a capital followed by a digit at ``at``: an
        IBAN ("DE89"), a codice fiscale ("RCCMNL83", six letters first), a NIE ("X-123"), a
        NINO ("AB 12")."""
        for start in range(max(0, at - 5), at + 1):
            if start in tried or not text[start].isupper() or not _starts_word(text, start):
                continue
            tried.add(start)
            m = _CAPS.match(text, start)
            if m is None:
                continue
            kind = m.lastgroup or ""
            if kind == "iban":
                if PiiType.IBAN in self.types:
                    self._iban(m.group(), start, out)
            elif PiiType.NATIONAL_ID in self.types and _CAPS_CHECKS[kind](m.group()):
                out.append(Finding(PiiType.NATIONAL_ID, kind, start, m.end()))

    @staticmethod
    def _iban(candidate: str, start: int, out: list[Finding]) -> None:
        # The pattern may swallow a following group ("... 00 AND"); give back a trailing
        # space-separated group at a time until the checksum holds.
        while True:
            if iban_valid(candidate):
                out.append(Finding(PiiType.IBAN, candidate[:2].lower(), start, start + len(candidate)))
                return
            cut = candidate.rfind(" ")
            if cut < 15:
                return
            candidate = candidate[:cut]

    def _digit_runs(self, text: str, out: list[Finding]) -> None:
        types = self.types
        if PiiType.IBAN in types or PiiType.NATIONAL_ID in types:
            tried: set[int] = set()
            for hit in _CAPITAL_THEN_DIGIT.finditer(text):
                self._capitals(text, hit.start(), tried, out)
        if not types & _RUN_TYPES:
            return
        for run in _LONG_DIGIT_RUN.finditer(text):
            s, e = run.span()
            # Items may begin just before the run ("+44", "(020") and end just after ("...15K").
            lo = s - 1 if s and text[s - 1] in "+(" else s
            if lo and text[lo - 1] == "+":
                lo -= 1
            hi = min(len(text), e + 2)
            if PiiType.CARD in types:
                self._cards(text, lo, hi, out)
            if PiiType.NATIONAL_ID in types:
                self._digit_ids(text, lo, hi, out)
            if PiiType.PHONE in types:
                self._phones(text, lo, hi, out)

    @staticmethod
    def _cards(text: str, lo: int, hi: int, out: list[Finding]) -> None:
        for m in _CARD.finditer(text, lo, hi):
            if not _starts_number(text, m.start()) or not _card_written(text, m.group(), m.end()):
                continue
            digits = _NOT_DIGIT.sub("", m.group())
            if luhn.is_valid(digits):
                issuer = card_issuer(digits)
                if issuer:
                    out.append(Finding(PiiType.CARD, issuer, m.start(), m.end()))

    @staticmethod
    def _digit_ids(text: str, lo: int, hi: int, out: list[Finding]) -> None:
        for kind, pattern, valid in _DIGIT_IDS:
            for m in pattern.finditer(text, lo, hi):
                if _starts_number(text, m.start()) and _alone(text, m.start(), m.end()) and valid(m.group()):
                    out.append(Finding(PiiType.NATIONAL_ID, kind, m.start(), m.end()))

    def _phones(self, text: str, lo: int, hi: int, out: list[Finding]) -> None:
        for m in _PHONE.finditer(text, lo, hi):
            start = m.start()
            # After "/" a number is a path segment ("/orders/3314689212/items"), after "#" an id
            # ("order #9344297738"), not a phone.
            if start and (text[start - 1].isalnum() or text[start - 1] in "_+./#" or _continues_token(text, start)):
                continue
            raw = m.group()
            digits = raw.translate(_PHONE_SEPARATORS).lstrip("+")
            if not 7 <= len(digits) <= 15 or not digits.isdigit():
                continue
            if _looks_like_date_or_version(raw):
                continue
            region = self._phone_region(raw)
            if region:
                out.append(Finding(PiiType.PHONE, region.lower(), start, m.end()))

    def _phone_region(self, raw: str) -> str:
        international = raw.startswith(("+", "00"))
        candidate = "+" + raw[2:] if raw.startswith("00") else raw
        regions: Sequence[str | None] = (None,) if international else self.phone_regions
        for region in regions:
            try:
                number = phonenumbers.parse(candidate, region, keep_raw_input=True)
            except phonenumbers.NumberParseException:
                continue
            if (
                phonenumbers.is_valid_number(number)
                and _grouping_fits(candidate, number)
                and (international or not _written_unlike_a_phone(candidate, number))
            ):
                return phonenumbers.region_code_for_number(number) or region or "intl"
        return ""


_DIGIT_GROUP = re.compile(r"\d+")
_CODE_WITHOUT_PLUS = phonenumbers.CountryCodeSource.FROM_NUMBER_WITHOUT_PLUS_SIGN
_FORMATS = (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.NATIONAL)


def _written_unlike_a_phone(candidate: str, number: phonenumbers.PhoneNumber) -> bool:
    """Whether a number written without ``+`` or ``00`` is written as its country never writes a
    phone number:

    - without the trunk prefix its country writes it with: "1636862593" parses as the UK's
      01636 862593, but written so it is a Unix time (a US number needs none: "415 555 2671");
    - with the country code but no ``+``, in one piece: "4401511335524" is a product barcode,
      not +44 1511 335524 ("44 20 7946 0958", grouped as the number is, still counts; so does
      North America's 1, which is also its trunk prefix: "14155552671").
    """
    if number.country_code_source == _CODE_WITHOUT_PLUS and number.country_code != 1 and candidate.isdigit():
        return True
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    return len(_NOT_DIGIT.sub("", national)) > len(_NOT_DIGIT.sub("", candidate))


def _grouping_fits(candidate: str, number: phonenumbers.PhoneNumber) -> bool:
    """Whether the candidate's digit groups follow the number's own grouping (libphonenumber's
    "strict grouping" idea): each separator must fall where the formatted number has one.

    "(415) 555-2671" and "(415) 5552671" fit; "2024-000123", a valid DC number by its
    digits, is an invoice number by its grouping.
    """
    groups = _DIGIT_GROUP.findall(candidate)
    if len(groups) <= 1:
        return True
    digits = "".join(groups)
    cuts = set(itertools.accumulate(len(g) for g in groups[:-1]))
    for fmt in _FORMATS:
        formatted = _DIGIT_GROUP.findall(phonenumbers.format_number(number, fmt))
        whole = "".join(formatted)
        if not whole.endswith(digits):  # a candidate may leave out the country code
            continue
        offset = len(whole) - len(digits)
        if cuts <= {c - offset for c in itertools.accumulate(len(g) for g in formatted[:-1])}:
            return True
    return False


_DIGIT_TYPES = frozenset({PiiType.CARD, PiiType.NATIONAL_ID, PiiType.PHONE, PiiType.IBAN})
_RUN_TYPES = frozenset({PiiType.CARD, PiiType.NATIONAL_ID, PiiType.PHONE})


# How card numbers are written: in one piece, or in groups of four (the last may be shorter:
# 13 and 19 digits), or 4-6-4/4-6-5 (Diners, Amex), with one kind of separator.
_CARD_GROUPS = re.compile(r"\d+|\d{4}(?P<sep>[ -])(?:\d{4}(?P=sep))*\d{1,4}|\d{4}(?P<sep2>[ -])\d{6}(?P=sep2)\d{4,5}")


def _card_written(text: str, candidate: str, end: int) -> bool:
    """Whether a card candidate is written as card numbers are, not as part of an identifier:
    a UUID's all-digit groups (8-4-4-...), digits glued to letters ("...1111abc"), 17-19 digits
    in one piece (a snowflake id such as a Discord or X id, of which one in thirty would pass; the
    few cards that long are written in groups) and 13 digits in one piece with an EAN-13 check
    digit (a product barcode: one in ten of Germany's 400-440 passes as a 13-digit Visa, a length
    Visa no longer issues) are not cards."""
    if end < len(text) and text[end].isalpha():
        return False
    if candidate.isdigit() and (len(candidate) > 16 or (len(candidate) == 13 and ean.is_valid(candidate))):
        return False
    return _CARD_GROUPS.fullmatch(candidate) is not None


def _alone(text: str, start: int, end: int) -> bool:
    """Whether an id's digits are not the tail of a longer grouped number ("1788 4878 0377 2955"
    holds an Aadhaar-shaped 4878 0377 2955) nor the head of a longer token ("9897-3738-4312-476C").
    A hyphen on the left is :func:`_starts_number`'s to refuse."""
    if start >= 2 and text[start - 1] == " " and text[start - 2].isdigit():
        return False
    return not (end + 1 < len(text) and text[end] == "-" and text[end + 1].isalnum())


def _git_remote(text: str, start: int, end: int) -> bool:
    """Whether ``user@host`` is a login, not an address: an scp-style remote ("git@github.com:org/
    repo.git") or a URL's user ("ssh://git@gitlab.com/group/repo.git")."""
    return (end + 1 < len(text) and text[end] == ":" and not text[end + 1].isspace()) or text.endswith("://", 0, start)


def _continues_token(text: str, start: int) -> bool:
    # "...-8099-002618852920" (a UUID's last group): after a hyphen that joins it to a word, a
    # number is a part of an identifier, not a phone number.
    return start >= 2 and text[start - 1] == "-" and text[start - 2].isalnum()


def _starts_number(text: str, start: int) -> bool:
    # A number that continues one to its left ("12.4111...", "x-536-90-4399") is not an item.
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_.-")


_DATE_LIKE = re.compile(
    r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$|^\d{1,3}(?:\.\d{1,3}){2,}$|^\d+\.\d+$"
)


def _looks_like_date_or_version(raw: str) -> bool:
    # 2024-01-15, 15.01.2024, 1.2.3.4, 192.168.10.20, 447510.888285: digit runs a numbering plan
    # may accept that are dates, versions, addresses or decimals (a dotted phone number has two
    # dots at least and ends in a 4-digit group).
    return _DATE_LIKE.match(raw) is not None


def _resolve(found: list[Finding]) -> list[Finding]:
    """Drops findings that overlap a better one (priority, then length), ordered by start."""
    found.sort(key=lambda f: (_PRIORITY[f.type], f.start - f.end))
    kept: list[Finding] = []
    for f in found:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept
