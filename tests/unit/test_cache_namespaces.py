"""Namespace configuration: parsing, errors that name the key and value, and reloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tollway.cache.namespaces import (
    BUILTIN_PATH,
    Eviction,
    Namespace,
    NamespaceConfigError,
    NamespaceRegistry,
    installed_presets,
    load_namespaces,
    parse_namespaces,
)
from tollway.cache.presets import PRESETS
from tollway.cache.scope import Scope
from tollway.mesh.errors import NotFound


def test_builtin_file_parses_with_the_installed_presets() -> None:
    spaces = load_namespaces(BUILTIN_PATH, presets=installed_presets())
    assert spaces["default"].preset == "default"
    assert spaces["default"].threshold == PRESETS["default"]["threshold"]
    assert spaces["faq"].scope is Scope.GLOBAL and spaces["faq"].preset == "loose"
    assert spaces["personal"].semantic is False
    assert NamespaceRegistry().names == sorted(spaces)


def test_defaults_then_namespace_settings() -> None:
    spaces = parse_namespaces(
        {
            "defaults": {"ttl_s": 60, "scope": "user", "threshold": 0.9},
            "namespaces": {
                "a": None,
                "b": {"threshold": 0.8, "eviction": "oldest", "max_entries": 10, "allow_nondeterministic": True},
            },
        }
    )
    assert spaces["a"] == Namespace(name="a", threshold=0.9, ttl_s=60.0, scope=Scope.USER)
    b = spaces["b"]
    assert (b.threshold, b.eviction, b.max_entries, b.allow_nondeterministic) == (0.8, Eviction.OLDEST, 10, True)
    assert b.ttl_ms == 60_000 and b.stale_grace_ms == 3_600_000


def test_presets_fill_in_and_namespace_wins() -> None:
    presets = {"strict": {"threshold": 0.97, "second_check": True, "ttl_s": 30}}
    spaces = parse_namespaces({"namespaces": {"a": {"preset": "strict", "ttl_s": 90}}}, presets=presets)
    assert (spaces["a"].threshold, spaces["a"].ttl_s, spaces["a"].preset) == (0.97, 90.0, "strict")
    with pytest.raises(NamespaceConfigError, match=r"namespaces\.a\.preset: 'loose' is not a preset \(strict\)"):
        parse_namespaces({"namespaces": {"a": {"preset": "loose"}}}, presets=presets)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": 1.5}, r"namespaces\.a\.threshold: 1\.5 is not in \(0, 1\]"),
        ({"threshold": 0}, r"namespaces\.a\.threshold: 0 is not in \(0, 1\]"),
        ({"threshold": "high"}, r"namespaces\.a\.threshold: 'high' is not a number"),
        ({"threshold": True}, r"namespaces\.a\.threshold: True is not a number"),
        ({"threshold": 0.9, "ttl_s": -1}, r"namespaces\.a\.ttl_s: -1 is not in"),
        ({"threshold": 0.9, "scope": "planet"}, r"namespaces\.a\.scope: 'planet' is not a scope"),
        ({"threshold": 0.9, "eviction": "random"}, r"namespaces\.a\.eviction: 'random' is not an eviction policy"),
        ({"threshold": 0.9, "max_entries": 1.5}, r"namespaces\.a\.max_entries: 1\.5 is not an integer"),
        ({"threshold": 0.9, "semantic": "yes"}, r"namespaces\.a\.semantic: 'yes' is not true or false"),
        ({"threshold": 0.9, "quality_sample_rate": 2}, r"namespaces\.a\.quality_sample_rate: 2 is not in \[0, 1\]"),
        ({"threshold": 0.9, "treshold": 0.9}, r"namespaces\.a\.treshold: unknown key \(known here: .*threshold"),
        ({"ttl_s": 5}, r"namespaces\.a\.threshold: required"),
    ],
)
def test_bad_values_name_the_path_and_value(settings: dict[str, object], message: str) -> None:
    with pytest.raises(NamespaceConfigError, match=message):
        parse_namespaces({"namespaces": {"a": settings}}, "ns.yaml")


def test_bad_structure() -> None:
    with pytest.raises(NamespaceConfigError, match="at least one"):
        parse_namespaces({"namespaces": {}})
    with pytest.raises(NamespaceConfigError, match=r"namespace: unknown key \(known here: defaults, namespaces\)"):
        parse_namespaces({"namespace": {"a": {"threshold": 0.9}}})
    with pytest.raises(NamespaceConfigError, match="names are"):
        parse_namespaces({"namespaces": {"Bad Name": {"threshold": 0.9}}})


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(NamespaceConfigError, match="cannot read"):
        load_namespaces(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespaces: [\n")
    with pytest.raises(NamespaceConfigError, match="not valid YAML"):
        load_namespaces(bad)


def test_registry_get_and_default(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text("namespaces:\n  default: {threshold: 0.9}\n  faq: {threshold: 0.8}\n")
    registry = NamespaceRegistry(path, presets={})
    assert registry.get("").name == "default"
    assert registry.names == ["default", "faq"]
    with pytest.raises(NotFound, match="'nope' is not configured") as err:
        registry.get("nope")
    assert err.value.reason == "NAMESPACE_NOT_FOUND"


def test_registry_reloads_on_mtime_and_keeps_old_on_error(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text("namespaces:\n  default: {threshold: 0.9}\n")
    registry = NamespaceRegistry(path, presets={})
    assert not registry.reload_if_modified()

    path.write_text("namespaces:\n  default: {threshold: 0.8}\n  new: {threshold: 0.7}\n")
    os.utime(path, (1, 1))  # a distinct mtime even on coarse-grained filesystems
    assert registry.reload_if_modified()
    assert registry.get("default").threshold == 0.8
    assert registry.get("new").threshold == 0.7

    path.write_text("namespaces:\n  default: {threshold: 9}\n")
    os.utime(path, (2, 2))
    assert registry.reload_if_modified()
    assert registry.get("default").threshold == 0.8  # the broken edit was ignored
    assert registry.reload() is False


def test_registry_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text("namespaces:\n  default: {threshold: 9}\n")
    with pytest.raises(NamespaceConfigError):
        NamespaceRegistry(path, presets={})


# ------------------------------------------------------------------------- declared false-hit rate


def test_max_false_hit_rate_with_a_preset() -> None:
    spaces = parse_namespaces(
        {"namespaces": {"a": {"preset": "default", "max_false_hit_rate": 0.01}}}, "ns.yaml", installed_presets()
    )
    assert spaces["a"].max_false_hit_rate == 0.01
    assert spaces["a"].threshold == PRESETS["default"]["threshold"]  # the preset's threshold is the floor


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": 0.9, "max_false_hit_rate": 0.01}, r"namespaces\.a\.max_false_hit_rate: 0\.01 .*threshold"),
        ({"preset": "default", "max_false_hit_rate": 0}, r"namespaces\.a\.max_false_hit_rate: 0 is not in \(0, 0\.5\]"),
        ({"preset": "default", "max_false_hit_rate": 0.75}, r"namespaces\.a\.max_false_hit_rate: 0\.75 is not in"),
        ({"preset": "default", "max_false_hit_rate": -0.1}, r"namespaces\.a\.max_false_hit_rate"),
        ({"preset": "default", "max_false_hit_rate": "1%"}, r"namespaces\.a\.max_false_hit_rate"),
        ({"preset": "careful"}, r"namespaces\.a\.preset: 'careful' is not a preset"),
    ],
    ids=["both", "zero", "above-half", "negative", "text", "unknown-preset"],
)
def test_false_hit_rate_config_errors_name_the_key(settings: dict[str, object], message: str) -> None:
    with pytest.raises(NamespaceConfigError, match=message):
        parse_namespaces({"namespaces": {"a": settings}}, "ns.yaml", installed_presets())
