"""The guard policy file: layers per tenant and key, and every bad entry refused by name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tollway.gateway.guard.pii import PiiType
from tollway.gateway.guard.policy import (
    GuardPolicyError,
    GuardPolicySource,
    InjectionAction,
    PiiAction,
    load_policies,
    parse_policies,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_file_parses() -> None:
    policies = load_policies(REPO / "deploy" / "guard.yaml")
    assert policies.version
    assert policies.default.action(PiiType.CARD) is PiiAction.REJECT
    assert policies.resolve("demo").reversible
    assert policies.resolve("demo", "tw-demo01").injection.action is InjectionAction.FLAG


def test_layers_merge_per_entry_and_per_field() -> None:
    policies = parse_policies(
        {
            "defaults": {
                "pii": {"email": "reject"},
                "injection": {"threshold": 0.6},
                "topics": {"weapons": ["build a bomb"], "medical": ["diagnose"]},
            },
            "tenants": {
                "acme": {
                    "pii": {"phone": "allow"},
                    "topics": {"medical": []},
                    "keys": {"tw-key1": {"injection": {"action": "flag"}, "pii": {"email": "redact"}}},
                }
            },
        }
    )
    acme, key = policies.resolve("acme"), policies.resolve("acme", "tw-key1")
    assert acme.action(PiiType.EMAIL) is PiiAction.REJECT  # from defaults
    assert acme.action(PiiType.PHONE) is PiiAction.ALLOW
    assert acme.action(PiiType.CARD) is PiiAction.REJECT  # built-in default
    assert set(acme.topics) == {"weapons"}
    assert key.action(PiiType.EMAIL) is PiiAction.REDACT
    assert key.injection.threshold == 0.6 and key.injection.action is InjectionAction.FLAG
    assert key.action(PiiType.PHONE) is PiiAction.ALLOW  # the tenant's, under the key
    assert policies.resolve("acme", "tw-other") is acme
    assert policies.resolve("unknown") is policies.default
    assert PiiType.PHONE not in acme.scanner.types


def test_output_rules_default_to_the_input_rules() -> None:
    policies = parse_policies(
        {"defaults": {"pii": {"email": "allow"}}, "tenants": {"t": {"output": {"pii": {"email": "reject"}}}}}
    )
    assert policies.default.output_pii[PiiType.EMAIL] is PiiAction.ALLOW
    assert policies.resolve("t").output_pii == {PiiType.EMAIL: PiiAction.REJECT}
    assert policies.resolve("t").output_scanner is not None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"defaults": {"pii": {"ssn": "redact"}}}, "defaults.pii.ssn: unknown PII type (known: email, phone"),
        ({"defaults": {"pii": {"email": "hide"}}}, "defaults.pii.email: 'hide' is not a PII action; use one of"),
        ({"defaults": {"pii_rules": {}}}, "defaults.pii_rules: unknown key (known here:"),
        ({"rules": {}}, "rules: unknown key"),
        ({"defaults": {"injection": {"threshold": 0}}}, "defaults.injection.threshold: 0 is not in (0, 1]"),
        ({"defaults": {"injection": {"action": "block"}}}, "'block' is not an injection action"),
        ({"defaults": {"injection": {"level": 3}}}, "defaults.injection.level: unknown key"),
        ({"defaults": {"limits": {"max_input_chars": -1}}}, "defaults.limits.max_input_chars: -1 is less than 0"),
        ({"defaults": {"output": {"lookbehind_chars": 8}}}, "defaults.output.lookbehind_chars: 8 is not in [48, 4096]"),
        ({"defaults": {"output": {"pii": {"iban2": "allow"}}}}, "defaults.output.pii.iban2: unknown PII type"),
        ({"defaults": {"phone_regions": ["ZZ"]}}, "defaults.phone_regions[0]: 'ZZ' is not an ISO 3166 region"),
        ({"defaults": {"reversible": "yes"}}, "defaults.reversible: 'yes' is not true or false"),
        ({"tenants": {"a": {"keys": {"k": {"keys": {}}}}}}, "tenants.a.keys.k.keys: unknown key"),
        ({"tenants": {"a": {"keys": {"k": {"pii": {"cc": "reject"}}}}}}, "tenants.a.keys.k.pii.cc: unknown PII type"),
        ({"version": 2}, "version: 2 is not in [1, 1]"),
    ],
)
def test_bad_entries_are_refused_naming_them(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(GuardPolicyError) as err:
        parse_policies(doc, "guard.yaml")
    assert str(err.value).startswith("guard.yaml: ")
    assert message in str(err.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(GuardPolicyError, match="cannot read the guard policy file"):
        load_policies(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [\n")
    with pytest.raises(GuardPolicyError, match="not valid YAML"):
        load_policies(bad)


def test_source_reloads_and_keeps_the_old_policy_on_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text("defaults: {pii: {email: allow}}\n")
    source = GuardPolicySource(path)
    assert source.current.default.action(PiiType.EMAIL) is PiiAction.ALLOW
    assert not source.reload_if_changed()
    path.write_text("defaults: {pii: {email: reject}}\n")
    os.utime(path, ns=(1, 1))
    assert source.reload_if_changed()
    assert source.current.default.action(PiiType.EMAIL) is PiiAction.REJECT
    path.write_text("defaults: {pii: {emial: reject}}\n")
    os.utime(path, ns=(2, 2))
    assert not source.reload_if_changed()
    assert "emial" in source.last_error
    assert source.current.default.action(PiiType.EMAIL) is PiiAction.REJECT
