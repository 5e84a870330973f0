"""Cache namespaces: per-use-case thresholds, TTLs, scopes and limits, from a YAML file.

The file looks like::

    defaults:              # optional; applied under every namespace
      ttl_s: 3600
    namespaces:
      default:
        preset: default    # settings from tollway.cache.presets, overridable below
        scope: tenant      # global | tenant | user
      faq:
        threshold: 0.88
        ttl_s: 86400
        scope: global
        eviction: oldest

Every key is checked: an unknown key, a wrong type or an out-of-range value fails with
the file, the dotted path and the value (``namespaces.faq.threshold: 1.5 is not in
(0, 1]``). :class:`NamespaceRegistry` reloads the file when asked (SIGHUP) or when its
modification time changes; a broken edit is logged and the previous namespaces stay.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollway.cache.scope import Scope
from tollway.mesh import schema
from tollway.mesh.errors import NotFound
from tollway.mesh.frozen import frozen
from tollway.mesh.schema import SchemaError

log = logging.getLogger("tollway.cache.namespaces")

DEFAULT_NAMESPACE = "default"
_YEAR_S = 365 * 86400
BUILTIN_PATH = Path(__file__).with_name("namespaces.yaml")


class NamespaceConfigError(SchemaError):
    """The namespaces file is unreadable, malformed, or has a bad value."""


class Eviction(enum.StrEnum):
    """Which entry goes first when a namespace is full."""

    LRU = "lru"
    OLDEST = "oldest"


def _eviction(text: str) -> Eviction:
    try:
        return Eviction(text.strip().lower())
    except ValueError:
        raise ValueError(f"{text!r} is not an eviction policy (use lru or oldest)") from None


@frozen(slots=True)
class Namespace:
    """One namespace's policy; the fields after ``name`` are the file's settings.

    Attributes:
        name: The namespace name, as requests give it.
        threshold: Tier-2 cosine similarity a candidate must reach, in (0, 1].
        ttl_s: Seconds an entry is served after it is stored.
        scope: Who may be served an entry (a request may only tighten it).
        semantic: Whether tier 2 is consulted at all.
        allow_nondeterministic: Whether requests with temperature > 0 are cached.
        max_entries: Entries kept before eviction; 0 means no limit.
        eviction: Which entry is evicted first when full.
        stale_grace_s: Seconds an expired entry is kept for the stale fallback.
        second_check: Whether tier-2 candidates must also pass the second check.
        quality_sample_rate: Fraction of semantic hits flagged for a fresh comparison, [0, 1].
        preset: The preset the settings started from ("" for none); it also picks the
            second check's rules (``tollway.cache.presets.verifier_for``).
        max_false_hit_rate: The share of semantic hits allowed to be wrong, in (0, 0.5], declared
            instead of a threshold; 0 (the default) declares none. The cache then holds it from the
            namespace's quality samples (``tollway.cache.false_hits``), starting from the preset's
            threshold as the floor. Setting both this and ``threshold`` in one place is refused.
    """

    name: str
    threshold: float = dataclasses.field(metadata=schema.rule(low=0.0, high=1.0, low_open=True))
    ttl_s: float = dataclasses.field(default=3600.0, metadata=schema.rule(low=0.0, high=10 * _YEAR_S, low_open=True))
    scope: Scope = dataclasses.field(default=Scope.TENANT, metadata=schema.rule(parse=Scope.parse))
    semantic: bool = True
    allow_nondeterministic: bool = False
    max_entries: int = dataclasses.field(default=100_000, metadata=schema.rule(low=0))
    eviction: Eviction = dataclasses.field(default=Eviction.LRU, metadata=schema.rule(parse=_eviction))
    stale_grace_s: float = dataclasses.field(default=3600.0, metadata=schema.rule(low=0.0, high=_YEAR_S))
    second_check: bool = True
    quality_sample_rate: float = dataclasses.field(default=0.0, metadata=schema.rule(low=0.0, high=1.0))
    preset: str = ""
    max_false_hit_rate: float = dataclasses.field(default=0.0, metadata=schema.rule(low=0.0, high=0.5, low_open=True))

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    @property
    def stale_grace_ms(self) -> int:
        return int(self.stale_grace_s * 1000)


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-.")


@frozen
class _File:
    defaults: Any = None  # read as settings below, after the presets are known
    namespaces: dict[str, Any] = dataclasses.field(default_factory=dict)


def _settings(r: schema.Reader, path: str, raw: Any, presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One layer of settings (``defaults`` or a namespace), its preset's settings first."""
    out = r.fields(Namespace, raw, path, exclude=("name",))
    if "threshold" in out and "max_false_hit_rate" in out:
        # A declared rate moves the threshold itself; a fixed one beside it would be silently overridden.
        raise r.fail(
            f"{path}.max_false_hit_rate",
            out["max_false_hit_rate"],
            "is declared together with threshold; give one or the other",
        )
    if "preset" in out:
        name = out["preset"]
        if name not in presets:
            known = ", ".join(sorted(presets)) or "none are installed"
            raise r.fail(f"{path}.preset", name, f"is not a preset ({known})")
        # The namespace's own settings win over its preset's.
        out = {**r.fields(Namespace, presets[name], f"{path}.preset({name})", exclude=("name", "preset")), **out}
    return out


def parse_namespaces(
    data: Any, source: str = "namespaces", presets: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Namespace]:
    """Builds namespaces from the parsed YAML document.

    Args:
        data: The document (``{"defaults": {...}, "namespaces": {name: {...}}}``).
        source: Names the file in error messages.
        presets: Named groups of settings a namespace may start from with ``preset: NAME``.

    Raises:
        NamespaceConfigError: Anything is missing, unknown, of the wrong type or out of
            range; the message names the file, the dotted path and the value.
    """
    presets = presets or {}
    r = schema.Reader(source, NamespaceConfigError)
    doc = r.read(_File, data)
    defaults = _settings(r, "defaults", doc.defaults, presets)
    if not doc.namespaces:
        raise r.fail("namespaces", doc.namespaces, "must map at least one name to its settings")
    out: dict[str, Namespace] = {}
    for name, raw in doc.namespaces.items():
        path = f"namespaces.{name}"
        if not name or not set(name) <= _NAME_CHARS or len(name) > 64:
            raise r.fail(path, name, "is not a namespace name: names are 1-64 characters of a-z, 0-9, '_', '-' and '.'")
        settings = {**defaults, **_settings(r, path, raw, presets)}
        if "threshold" not in settings:
            raise r.fail_key(f"{path}.threshold", "required (in defaults, a preset or the namespace)")
        out[name] = Namespace(name=name, **settings)
    return out


def load_namespaces(
    path: str | os.PathLike[str], presets: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Namespace]:
    """Reads and parses a namespaces YAML file.

    Raises:
        NamespaceConfigError: The file cannot be read or parsed, or a value is bad.
    """
    doc = schema.load_yaml(path, what="the namespaces file", error=NamespaceConfigError)
    return parse_namespaces(doc.data, str(path), presets)


def installed_presets() -> dict[str, Mapping[str, Any]]:
    """The presets shipped in ``tollway.cache.presets``: name -> namespace settings."""
    from tollway.cache.presets import PRESETS

    return {name: dict(settings) for name, settings in PRESETS.items()}


class NamespaceRegistry:
    """The current namespaces, reloadable from their file.

    Reads happen on every request, so :meth:`get` is a dict lookup; reloading swaps the
    whole mapping at once, so a request never sees half an edit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = BUILTIN_PATH,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Loads ``path`` now.

        Raises:
            NamespaceConfigError: The file is bad; a service must not start with it.
        """
        self.path = Path(path)
        self._presets = installed_presets() if presets is None else dict(presets)
        self._mtime = self._stat()
        self._spaces = load_namespaces(self.path, self._presets)

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return -1.0

    @property
    def names(self) -> list[str]:
        """The configured namespace names, sorted."""
        return sorted(self._spaces)

    def get(self, name: str) -> Namespace:
        """The namespace called ``name`` ("" means ``default``).

        Raises:
            NotFound: No such namespace is configured; the message lists the known ones.
        """
        name = name or DEFAULT_NAMESPACE
        try:
            return self._spaces[name]
        except KeyError:
            raise NotFound(
                f"cache namespace {name!r} is not configured (known: {', '.join(self.names)}); "
                f"add it to {self.path.name} or use an existing one",
                reason="NAMESPACE_NOT_FOUND",
                metadata={"namespace": name},
            ) from None

    def reload(self) -> bool:
        """Re-reads the file. Returns whether the namespaces changed.

        A bad file is logged and ignored: the namespaces in force stay in force.
        """
        self._mtime = self._stat()
        try:
            spaces = load_namespaces(self.path, self._presets)
        except NamespaceConfigError as exc:
            log.error("namespaces reload failed; keeping the previous ones", extra={"error": str(exc)})
            return False
        changed = spaces != self._spaces
        self._spaces = spaces
        if changed:
            log.info("namespaces reloaded", extra={"namespaces": sorted(spaces)})
        return changed

    def reload_if_modified(self) -> bool:
        """Reloads when the file's modification time changed. Returns whether it reloaded."""
        if self._stat() == self._mtime:
            return False
        self.reload()
        return True
