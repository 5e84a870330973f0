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
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tollway.cache.scope import Scope
from tollway.mesh.errors import NotFound

log = logging.getLogger("tollway.cache.namespaces")

DEFAULT_NAMESPACE = "default"
BUILTIN_PATH = Path(__file__).with_name("namespaces.yaml")


class NamespaceConfigError(ValueError):
    """The namespaces file is unreadable, malformed, or has a bad value."""


class Eviction(enum.StrEnum):
    """Which entry goes first when a namespace is full."""

    LRU = "lru"
    OLDEST = "oldest"


@dataclasses.dataclass(frozen=True, slots=True)
class Namespace:
    """One namespace's policy.

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
    """

    name: str
    threshold: float
    ttl_s: float = 3600.0
    scope: Scope = Scope.TENANT
    semantic: bool = True
    allow_nondeterministic: bool = False
    max_entries: int = 100_000
    eviction: Eviction = Eviction.LRU
    stale_grace_s: float = 3600.0
    second_check: bool = True
    quality_sample_rate: float = 0.0
    preset: str = ""

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    @property
    def stale_grace_ms(self) -> int:
        return int(self.stale_grace_s * 1000)


def _number(path: str, value: Any, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise NamespaceConfigError(f"{path}: {value!r} is not a number")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise NamespaceConfigError(f"{path}: {value!r} is not in {bracket}{low:g}, {high:g}]")
    return float(value)


def _integer(path: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NamespaceConfigError(f"{path}: {value!r} is not an integer")
    if value < low:
        raise NamespaceConfigError(f"{path}: {value!r} is less than {low}")
    return value


def _boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise NamespaceConfigError(f"{path}: {value!r} is not true or false")
    return value


def _choice(path: str, value: Any, parse: Callable[[str], Any]) -> Any:
    if not isinstance(value, str):
        raise NamespaceConfigError(f"{path}: {value!r} is not a string")
    try:
        return parse(value)
    except ValueError as exc:
        raise NamespaceConfigError(f"{path}: {exc}") from None


def _eviction(text: str) -> Eviction:
    try:
        return Eviction(text.strip().lower())
    except ValueError:
        raise ValueError(f"{text!r} is not an eviction policy (use lru or oldest)") from None


_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "threshold": lambda p, v: _number(p, v, low=0.0, high=1.0, low_open=True),
    "ttl_s": lambda p, v: _number(p, v, low=0.0, high=10 * 365 * 86400, low_open=True),
    "scope": lambda p, v: _choice(p, v, Scope.parse),
    "semantic": _boolean,
    "allow_nondeterministic": _boolean,
    "max_entries": lambda p, v: _integer(p, v, low=0),
    "eviction": lambda p, v: _choice(p, v, _eviction),
    "stale_grace_s": lambda p, v: _number(p, v, low=0.0, high=365 * 86400),
    "second_check": _boolean,
    "quality_sample_rate": lambda p, v: _number(p, v, low=0.0, high=1.0),
}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def _section(path: str, raw: Any, presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise NamespaceConfigError(f"{path}: expected a mapping of settings, got {raw!r}")
    out: dict[str, Any] = {}
    if "preset" in raw:
        name = raw["preset"]
        if name not in presets:
            known = ", ".join(sorted(presets)) or "none are installed"
            raise NamespaceConfigError(f"{path}.preset: {name!r} is not a preset ({known})")
        out.update(_section(f"{path}.preset({name})", dict(presets[name]), {}))
        out["preset"] = name
    for key, value in raw.items():
        if key == "preset":
            continue
        if key not in _FIELDS:
            raise NamespaceConfigError(f"{path}.{key}: unknown setting (known: preset, {', '.join(_FIELDS)})")
        out[key] = _FIELDS[key](f"{path}.{key}", value)
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
    if not isinstance(data, Mapping):
        raise NamespaceConfigError(f"{source}: expected a mapping with a 'namespaces' key, got {data!r}")
    unknown = set(data) - {"defaults", "namespaces"}
    if unknown:
        raise NamespaceConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)} (known: defaults, namespaces)"
        )
    defaults = _section(f"{source}: defaults", data.get("defaults"), presets)
    spaces = data.get("namespaces")
    if not isinstance(spaces, Mapping) or not spaces:
        raise NamespaceConfigError(f"{source}: 'namespaces' must map at least one name to its settings")
    out: dict[str, Namespace] = {}
    for name, raw in spaces.items():
        path = f"{source}: namespaces.{name}"
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or len(name) > 64:
            raise NamespaceConfigError(f"{path}: names are 1-64 characters of a-z, 0-9, '_', '-' and '.'")
        settings = {**defaults, **_section(path, raw, presets)}
        if "threshold" not in settings:
            raise NamespaceConfigError(f"{path}.threshold: required (in defaults, a preset or the namespace)")
        out[name] = Namespace(name=name, **settings)
    return out


def load_namespaces(
    path: str | os.PathLike[str], presets: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Namespace]:
    """Reads and parses a namespaces YAML file.

    Raises:
        NamespaceConfigError: The file cannot be read or parsed, or a value is bad.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise NamespaceConfigError(f"{path}: cannot read the namespaces file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NamespaceConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_namespaces(data, str(path), presets)


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
