"""PII detectors: each type found in prose, look-alikes left alone, the checksums, overlaps."""

from __future__ import annotations

import itertools
import random
import uuid

import pytest

from tollway.gateway.guard.pii import Finding, PiiType, Scanner, card_issuer, iban_valid, luhn_valid

SCANNER = Scanner()


def found(text: str, scanner: Scanner = SCANNER) -> list[tuple[str, str, str]]:
    return [(f.type.value, f.kind, text[f.start : f.end]) for f in scanner.scan(text)]


# --- checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["4111111111111111", "4242 4242 4242 4242", "5555-5555-5555-4444", "378282246310005", "6011111111111117"]
)
def test_luhn_accepts_published_test_card_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "4242 4242 4242 4241", "1234567812345678", ""])
def test_luhn_refuses_a_wrong_check_digit(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("digits", "issuer"),
    [
        ("4111111111111111", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3530111333300000", "jcb"),
        ("30569309025904", "diners"),
        ("6200000000000005", "unionpay"),
        ("9111111111111111", ""),
    ],
)
def test_card_issuer_by_prefix_and_length(digits: str, issuer: str) -> None:
    assert card_issuer(digits) == issuer


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "GB29 NWBK 6016 1331 9268 19",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "BE68539007547034",  # python-stdnum's Belgian bank list does not know the bank: mod 97 decides
    ],
)
def test_iban_valid_for_registry_examples(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize("iban", ["DE89370400440532013001", "GB29NWBK6016133192681", "XX89370400440532013000"])
def test_iban_invalid_checksum_length_or_country(iban: str) -> None:
    assert not iban_valid(iban)


# --- detectors in text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@example.co.uk today", "jane.doe+news@example.co.uk"),
        ("<bob@example.org>", "bob@example.org"),
        ("mail:alice_1@sub.example.com.", "alice_1@sub.example.com"),
    ],
)
def test_email(text: str, expected: str) -> None:
    assert found(text) == [("email", "email", expected)]


@pytest.mark.parametrize("text", ["user@localhost", "@mention in chat", "a @ b", "price@ 5"])
def test_not_an_email(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "number", "region"),
    [
        ("call +1 415-555-2671 now", "+1 415-555-2671", "us"),
        ("call (415) 555-2671", "(415) 555-2671", "us"),
        ("ring 020 7946 0958 please", "020 7946 0958", "gb"),
        ("dial +44 20 7946 0958", "+44 20 7946 0958", "gb"),
        ("dial 0049 30 901820", "0049 30 901820", "de"),
        ("fax 415.555.2671", "415.555.2671", "us"),
        ("desk (415) 5552671", "(415) 5552671", "us"),
        ("+33 1 42 68 53 00 is Paris", "+33 1 42 68 53 00", "fr"),
    ],
)
def test_phone(text: str, number: str, region: str) -> None:
    assert found(text) == [("phone", region, number)]


@pytest.mark.parametrize(
    "text",
    [
        "released on 2024-01-15 at noon",
        "version 1.2.3.4 of the library",
        "server 192.168.100.200 is down",
        "order 12345 shipped",
        "it costs 1234.56 dollars",
        "a ratio of 3/4",
        "invoice 2024-000123",  # a valid DC number by its digits, not by its grouping
    ],
)
def test_not_a_phone(text: str) -> None:
    assert found(text) == []


def test_phone_regions_decide_numbers_without_a_country_code() -> None:
    text = "Ruf an: 030 901820"
    assert found(text, Scanner(phone_regions=("US",))) == []
    assert found(text, Scanner(phone_regions=("DE",))) == [("phone", "de", "030 901820")]


@pytest.mark.parametrize(
    ("text", "issuer"),
    [
        ("card 4111 1111 1111 1111 exp 12/27", "visa"),
        ("pay with 5555-5555-5555-4444.", "mastercard"),
        ("amex 378282246310005", "amex"),
    ],
)
def test_card(text: str, issuer: str) -> None:
    (hit,) = found(text)
    assert hit[:2] == ("card", issuer)


@pytest.mark.parametrize("text", ["card 4111 1111 1111 1112", "id 1234567812345678", "tracking 9111111111111111"])
def test_not_a_card_without_luhn_or_issuer(text: str) -> None:
    assert [h for h in found(text) if h[0] == "card"] == []


@pytest.mark.parametrize(
    "text",
    [
        # A UUID whose first groups are all digits passes Luhn with a Maestro prefix: it was refused
        # as a card (one random UUID in ~11,000; a test that sent "hello <uuid4>" failed on it).
        "hello 61773097-1066-43d1-bbe5-bb98f3938c34",
        # A UUID's last group read as "00" + Madagascar's code: it was redacted as a phone number.
        "hello aa0ff8b2-0145-4551-8099-002618852920",
        "id 4111111111111111abc",
        "mixed 4111 1111-1111 1111",
        # A Unix time read as the UK's 01636 862593: a number written without its trunk prefix.
        "logged at 1636862593",
        # A valid US number by its digits, but a path segment.
        "GET /orders/3314689212/items",
        "order #9344297738 shipped",
        # An Aadhaar-shaped tail of a longer grouped number, and the head of a longer token.
        "ref DM81 1788 4878 0377 2955",
        "key 9897-3738-4312-476C",
        # Logins, not addresses: an scp-style git remote and a URL's user.
        "git clone git@github.com:org/repo.git",
        "git clone ssh://git@gitlab.com/group/repo.git",
        # A decimal read as +44 7510 888285.
        "delta -447510.888285",
        # A snowflake id (Discord, X): 19 digits in one piece; one in thirty passes Luhn and a prefix.
        "user 6630474428840415077",
        # EAN-13 product barcodes: a 13-digit Visa by Luhn, and +44 1511 335524 by its digits.
        "item 4237368193037 in stock",
        "item 4401511335524 in stock",
    ],
)
def test_identifiers_that_pass_the_checks_are_not_pii(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 1-415-555-2671", ("phone", "us", "1-415-555-2671")),
        ("ring 44 20 7946 0958", ("phone", "gb", "44 20 7946 0958")),
        ("visa 4222222222222", ("card", "visa", "4222222222222")),
        ("write to ann@example.com: thanks", ("email", "email", "ann@example.com")),
        # The groupings cards are written in.
        ("visa: 4222 2222 2222 2", ("card", "visa", "4222 2222 2222 2")),
        ("amex: 3782-822463-10005", ("card", "amex", "3782-822463-10005")),
        ("diners 3056 930902 5904", ("card", "diners", "3056 930902 5904")),
        ("card 4111-1111-1111-1111, thanks", ("card", "visa", "4111-1111-1111-1111")),
        ("phone: 3314689212", ("phone", "us", "3314689212")),
        ("ring 01636 862593", ("phone", "gb", "01636 862593")),
        ("visa 4000 0000 0000 0000 006", ("card", "visa", "4000 0000 0000 0000 006")),
    ],
)
def test_numbers_written_as_people_write_them_are_still_found(text: str, expected: tuple[str, str, str]) -> None:
    assert found(text) == [expected]


def test_random_uuids_are_never_pii() -> None:
    rng = random.Random(7)
    uuids = (str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(50_000))
    assert [u for u in uuids if SCANNER.scan(f"id {u}")] == []


def test_iban_with_spaces_stops_before_a_following_word() -> None:
    assert found("IBAN DE89 3704 0044 0532 0130 00 AND more") == [("iban", "de", "DE89 3704 0044 0532 0130 00")]


def test_iban_compact_and_bad_checksum() -> None:
    assert found("to GB29NWBK60161331926819 now") == [("iban", "gb", "GB29NWBK60161331926819")]
    assert found("to GB28NWBK60161331926819 now") == []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("SSN 536-90-4399 on file", "us_ssn"),
        ("DNI 54362315K", "es_dni"),
        ("NIE X2482300W", "es_nie"),
        ("CF RCCMNL83S18D969H", "it_codice_fiscale"),
        ("NIR 2 95 10 99 126 111 93", "fr_nir"),
        ("CPF 390.533.447-05", "br_cpf"),
        ("Aadhaar 2341 2341 2346", "in_aadhaar"),
        ("NINO AB 12 34 56 C", "gb_nino"),
    ],
)
def test_national_id(text: str, kind: str) -> None:
    (hit,) = found(text)
    assert hit[:2] == ("national_id", kind)


@pytest.mark.parametrize(
    "text",
    [
        "SSN 078-05-1120",  # the Woolworth wallet number, invalidated
        "SSN 000-12-3456",
        "DNI 54362315Z",
        "CPF 390.533.447-06",
        "NINO GB 12 34 56 C",
        "Aadhaar 2341 2341 2347",
    ],
)
def test_national_id_checks_refuse_look_alikes(text: str) -> None:
    assert [h for h in found(text) if h[0] == "national_id"] == []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", "openai"),
        ("key sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "anthropic"),
        ("AWS AKIAIOSFODNN7EXAMPLE", "aws"),
        ("token ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ12", "github"),
        ("slack xoxb-123456789012-abcdefghij", "slack"),
        ("google AIzaSyA-abcdefghijklmnopqrstuvwxyz01234", "google"),
        ("stripe sk_live_abcdefghijklmnop1234", "stripe"),
        ("gitlab glpat-abcdefghijklmnopqrst", "gitlab"),
        ("bearer tw-" + "a1B2" * 11, "tollway"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
        ("password = 'Sup3rS3cretValue123'", "assignment"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "private_key"),
    ],
)
def test_secret(text: str, kind: str) -> None:
    hits = [h for h in found(text) if h[0] == "secret"]
    assert [h[1] for h in hits] == [kind]


@pytest.mark.parametrize(
    "text",
    ["ask-me-anything-about-this-topic-today", "password = 'correct horse battery staple'", "the task-runner finished"],
)
def test_not_a_secret(text: str) -> None:
    assert [h for h in found(text) if h[0] == "secret"] == []


def test_assignment_reports_the_value_only() -> None:
    text = "api_key: Zx81kLmnOpq2345RstUv"
    assert found(text) == [("secret", "assignment", "Zx81kLmnOpq2345RstUv")]


def test_findings_are_ordered_and_never_overlap() -> None:
    text = "Card 4111111111111111, mail a.b@example.com, call +1 415-555-2671, IBAN DE89370400440532013000."
    findings = SCANNER.scan(text)
    assert [f.type for f in findings] == [PiiType.CARD, PiiType.EMAIL, PiiType.PHONE, PiiType.IBAN]
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_the_more_specific_type_wins_an_overlap() -> None:
    # A 16-digit Visa number is also a digit run a phone parser might take.
    assert [f.type for f in SCANNER.scan("4111 1111 1111 1111")] == [PiiType.CARD]


def test_scanner_looks_only_for_its_types() -> None:
    text = "mail a@example.com or call +1 415-555-2671"
    only_phone = Scanner([PiiType.PHONE])
    assert [f.type for f in only_phone.scan(text)] == [PiiType.PHONE]
    assert Scanner([]).scan(text) == []


def test_finding_is_a_plain_value() -> None:
    assert Finding(PiiType.EMAIL, "email", 0, 3) == Finding(PiiType.EMAIL, "email", 0, 3)


def test_non_ascii_text_keeps_offsets() -> None:
    text = "İstanbul ofisi: ayşe@example.com, tel +90 212 555 12 34"
    kinds = {f.type for f in SCANNER.scan(text)}
    for f in SCANNER.scan(text):
        assert text[f.start : f.end].strip() == text[f.start : f.end]
    assert PiiType.PHONE in kinds


def test_a_secret_name_inside_a_longer_word_is_not_an_assignment() -> None:
    # "client_secret" is a name of its own; "mysecret=" is not "secret=".
    assert found("client_secret=Zx81kLmnOpq2345RstUv") == [("secret", "assignment", "Zx81kLmnOpq2345RstUv")]
    assert found("mysecret=Zx81kLmnOpq2345RstUv") == []


def test_capitalised_assignment_names_are_seen() -> None:
    assert [h[1] for h in found("PASSWORD: Zx81kLmnOpq2345RstUv")] == ["assignment"]
