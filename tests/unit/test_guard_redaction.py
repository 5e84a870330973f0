"""Redaction: placeholders, the vault's numbering, and the decision text of the call record."""

from __future__ import annotations

from tollway.gateway.guard.decisions import GuardDecision, record_text
from tollway.gateway.guard.pii import Finding, PiiType
from tollway.gateway.guard.redaction import PLACEHOLDER, Vault, label, redact


def test_plain_redaction_uses_the_type_label() -> None:
    text = "a@example.com and 4111111111111111"
    findings = [Finding(PiiType.EMAIL, "email", 0, 13), Finding(PiiType.CARD, "visa", 18, 34)]
    assert redact(text, findings, {PiiType.EMAIL: True, PiiType.CARD: True}) == "[EMAIL] and [CARD]"
    assert redact(text, findings, {PiiType.EMAIL: True}) == "[EMAIL] and 4111111111111111"
    assert redact(text, findings, {PiiType.CARD: True}, replacement="[removed]") == "a@example.com and [removed]"
    assert redact(text, [], {PiiType.EMAIL: True}) is text


def test_vault_numbers_per_type_and_reuses_a_value() -> None:
    vault = Vault()
    assert vault.placeholder(PiiType.EMAIL, "a@x.org") == "[EMAIL_1]"
    assert vault.placeholder(PiiType.PHONE, "+1 415 555 2671") == "[PHONE_1]"
    assert vault.placeholder(PiiType.EMAIL, "b@x.org") == "[EMAIL_2]"
    assert vault.placeholder(PiiType.EMAIL, "a@x.org") == "[EMAIL_1]"
    assert len(vault) == 3
    assert vault.restore("[EMAIL_2], [PHONE_1], [EMAIL_7], [EMAIL]") == (
        "b@x.org, +1 415 555 2671, [EMAIL_7], [EMAIL]",
        2,
    )
    assert Vault().restore("[EMAIL_1]") == ("[EMAIL_1]", 0)


def test_placeholder_shape_covers_every_label() -> None:
    for t in PiiType:
        assert PLACEHOLDER.fullmatch(label(t))
        assert PLACEHOLDER.fullmatch(f"[{t.value.upper()}_12]")


def test_record_text() -> None:
    decisions = [
        GuardDecision("input", "pii.email", "redact", 2),
        GuardDecision("input", "injection", "flag", detail="role_hijack"),
        GuardDecision("output", "pii.card", "block"),
    ]
    assert (
        record_text(decisions) == "input:pii.email=redactx2; input:injection=flag(role_hijack); output:pii.card=block"
    )
    assert record_text([]) == ""
