"""The guard policy file (``deploy/guard.yaml``): what the guards do, per tenant and per key.

Read strictly with :mod:`tollway.mesh.schema`: an unknown key, an unknown PII type, a
wrong type or a value out of range fails naming the file, the dotted key and the value.
A policy is layered: ``defaults``, then the tenant's entry, then the key's entry inside
the tenant; each layer states only what it changes (``pii`` and ``topics`` merge per
entry, ``injection``, ``limits`` and ``output`` per field).

Shape::

    version: 1
    defaults:
      pii: {email: redact, phone: redact, card: reject, iban: redact,
            national_id: redact, secret: reject}      # redact | reject | allow
      reversible: false       # redact as [EMAIL_1] and map back in the answer
      phone_regions: [US, GB] # for numbers written without +country
      injection: {enabled: true, threshold: 0.6, action: reject}   # or action: flag
      limits: {max_input_chars: 400000, max_message_chars: 200000, max_messages: 500}
      topics: {}              # name: [phrases]; a message naming one is refused
      output: {enabled: true, lookbehind_chars: 96, replacement: "[removed]",
               pii: {card: reject}}   # the output's own rules (default: the input's)
    tenants:
      acme:
        pii: {email: allow}
        reversible: true
        keys:
          tw-AbCdEf: {injection: {threshold: 0.9}}   # a key id (see tollway keys)
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import phonenumbers

from tollway.gateway.guard.pii import PiiType, Scanner
from tollway.mesh.frozen import frozen
from tollway.mesh.schema import Reader, SchemaError, load_yaml, rule

log = logging.getLogger("tollway.gateway.guard")

__all__ = [
    "GuardPolicies",
    "GuardPolicy",
    "GuardPolicyError",
    "GuardPolicySource",
    "InjectionAction",
    "InjectionPolicy",
    "OutputPolicy",
    "PiiAction",
    "SizeLimits",
    "load_policies",
    "parse_policies",
]


class GuardPolicyError(SchemaError):
    """The guard policy file is unreadable or malformed; the message names the key and the value."""


class PiiAction(enum.Enum):
    """What happens to a PII type: replaced by a placeholder, refused, or let through."""

    REDACT = "redact"
    REJECT = "reject"
    ALLOW = "allow"


class InjectionAction(enum.Enum):
    """What a prompt-injection signal above the threshold does: refuse, or only record it."""

    REJECT = "reject"
    FLAG = "flag"


@frozen
class InjectionPolicy:
    """Prompt-injection checking.

    Attributes:
        enabled: Whether user and tool turns are scored at all.
        threshold: The score in (0, 1] at and above which ``action`` applies.
        action: Refuse the request (PERMISSION_DENIED) or only record the signal.
    """

    enabled: bool = True
    threshold: float = dataclasses.field(default=0.6, metadata=rule(low=0, high=1, low_open=True))
    action: InjectionAction = dataclasses.field(
        default=InjectionAction.REJECT, metadata=rule(noun="an injection action")
    )


@frozen
class SizeLimits:
    """Input size limits in characters (0: no limit)."""

    max_input_chars: int = dataclasses.field(default=400_000, metadata=rule(low=0))
    max_message_chars: int = dataclasses.field(default=200_000, metadata=rule(low=0))
    max_messages: int = dataclasses.field(default=500, metadata=rule(low=0))


@frozen
class OutputPolicy:
    """The guard on the streamed answer.

    Attributes:
        enabled: Whether the answer is scanned at all.
        pii: The rules for the answer; None means the input's. "reject" cannot refuse an
            answer already streaming: the item is replaced by ``replacement`` instead.
        lookbehind_chars: Characters held back at the end of the stream so an item split
            across deltas is still seen whole; at least the longest item to catch (an IBAN
            with spaces is 42). It is what the guard adds to the time to each delta.
        replacement: The text that replaces a blocked item.
    """

    enabled: bool = True
    pii: Mapping[PiiType, PiiAction] | None = None
    lookbehind_chars: int = dataclasses.field(default=96, metadata=rule(low=48, high=4096))
    replacement: str = "[removed]"


_DEFAULT_PII: Mapping[PiiType, PiiAction] = {
    PiiType.EMAIL: PiiAction.REDACT,
    PiiType.PHONE: PiiAction.REDACT,
    PiiType.CARD: PiiAction.REJECT,
    PiiType.IBAN: PiiAction.REDACT,
    PiiType.NATIONAL_ID: PiiAction.REDACT,
    PiiType.SECRET: PiiAction.REJECT,
}


@frozen
class GuardPolicy:
    """The guards in force for one tenant and key.

    Attributes:
        name: Where it came from ("defaults", "tenant acme", "tenant acme key tw-AbCdEf").
        version: The policy file's version (a digest of its text).
        pii: The action per PII type; a type not listed is allowed.
        reversible: Redact with numbered placeholders the answer maps back for the caller.
        phone_regions: Regions tried for phone numbers without a country code.
        injection: Prompt-injection checking.
        limits: Input sizes.
        topics: Denied topics: name -> phrases (matched whole-word, ignoring case).
        output: The guard on the answer.
        scanner: Finds the input's PII types that are not allowed (built from the above).
        output_scanner: The same for the answer (None when the output guard is off).
        topic_pattern: One pattern over every denied phrase (None when there are none).
    """

    name: str = "defaults"
    version: str = ""
    pii: Mapping[PiiType, PiiAction] = dataclasses.field(default_factory=lambda: dict(_DEFAULT_PII))
    reversible: bool = False
    phone_regions: tuple[str, ...] = ("US", "GB")
    injection: InjectionPolicy = InjectionPolicy()
    limits: SizeLimits = SizeLimits()
    topics: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    output: OutputPolicy = OutputPolicy()
    scanner: Scanner = dataclasses.field(init=False, repr=False, compare=False)
    output_scanner: Scanner | None = dataclasses.field(init=False, repr=False, compare=False)
    topic_pattern: re.Pattern[str] | None = dataclasses.field(init=False, repr=False, compare=False)
    _topic_of: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once per policy, not per request: scanners and the topic pattern are immutable.
        active = [t for t, a in self.pii.items() if a is not PiiAction.ALLOW]
        object.__setattr__(self, "scanner", Scanner(active, self.phone_regions))
        out = None
        if self.output.enabled:
            out_rules = self.output_pii
            out = Scanner([t for t, a in out_rules.items() if a is not PiiAction.ALLOW], self.phone_regions)
        object.__setattr__(self, "output_scanner", out)
        phrases = sorted({p.lower() for ps in self.topics.values() for p in ps if p.strip()}, key=len, reverse=True)
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in phrases) + r")(?!\w)") if phrases else None
        object.__setattr__(self, "topic_pattern", pattern)
        object.__setattr__(self, "_topic_of", {p.lower(): name for name, ps in self.topics.items() for p in ps})

    @property
    def output_pii(self) -> Mapping[PiiType, PiiAction]:
        """The PII rules of the answer (the output's own, else the input's)."""
        return self.pii if self.output.pii is None else self.output.pii

    def action(self, pii_type: PiiType) -> PiiAction:
        """The input action for ``pii_type`` (allow when the policy does not name it)."""
        return self.pii.get(pii_type, PiiAction.ALLOW)

    def topic_of(self, phrase: str) -> str:
        """The denied topic a matched phrase belongs to."""
        return self._topic_of.get(phrase.lower(), "")


# --- the file --------------------------------------------------------------------------------


@frozen
class _Layer:
    # Every field optional: a layer states only what it changes. Nested sections are read
    # field by field (Reader.fields) so a tenant changing one field keeps the others.
    pii: Mapping[str, PiiAction] | None = dataclasses.field(default=None, metadata=rule(noun="a PII action"))
    reversible: bool | None = None
    phone_regions: tuple[str, ...] | None = None
    injection: Any = None
    limits: Any = None
    topics: Mapping[str, tuple[str, ...]] | None = None
    output: Any = None


@frozen
class _TenantLayer(_Layer):
    keys: Mapping[str, Any] | None = None


@frozen
class _File:
    version: int = dataclasses.field(default=1, metadata=rule(low=1, high=1))
    defaults: Any = None
    tenants: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@frozen
class _OutputFields:
    enabled: bool = True
    pii: Mapping[str, PiiAction] | None = dataclasses.field(default=None, metadata=rule(noun="a PII action"))
    lookbehind_chars: int = dataclasses.field(default=96, metadata=rule(low=48, high=4096))
    replacement: str = "[removed]"


_PII_TYPES = {t.value: t for t in PiiType}


class _Builder:
    """Accumulates layers into the keyword arguments of a GuardPolicy."""

    def __init__(self, r: Reader) -> None:
        self.r = r
        self.top: dict[str, Any] = {}
        self.pii: dict[PiiType, PiiAction] = dict(_DEFAULT_PII)
        self.topics: dict[str, tuple[str, ...]] = {}
        self.injection: dict[str, Any] = {}
        self.limits: dict[str, Any] = {}
        self.output: dict[str, Any] = {}
        self.output_pii: dict[PiiType, PiiAction] | None = None

    def copy(self) -> _Builder:
        b = _Builder(self.r)
        b.top, b.pii, b.topics = dict(self.top), dict(self.pii), dict(self.topics)
        b.injection, b.limits, b.output = dict(self.injection), dict(self.limits), dict(self.output)
        b.output_pii = None if self.output_pii is None else dict(self.output_pii)
        return b

    def _pii(self, raw: Mapping[str, PiiAction], path: str) -> dict[PiiType, PiiAction]:
        out = {}
        for name, action in raw.items():
            if name not in _PII_TYPES:
                raise self.r.fail_key(f"{path}.{name}", f"unknown PII type (known: {', '.join(_PII_TYPES)})")
            out[_PII_TYPES[name]] = action
        return out

    def add(self, raw: Any, path: str, cls: type[_Layer]) -> dict[str, Any]:
        r = self.r
        values = r.fields(cls, raw, path)
        if "pii" in values:
            self.pii.update(self._pii(values["pii"], f"{path}.pii"))
        if "reversible" in values:
            self.top["reversible"] = values["reversible"]
        if "phone_regions" in values:
            regions = tuple(x.upper() for x in values["phone_regions"])
            for i, region in enumerate(regions):
                if region not in phonenumbers.SUPPORTED_REGIONS:
                    raise r.fail(f"{path}.phone_regions[{i}]", region, "is not an ISO 3166 region phonenumbers knows")
            self.top["phone_regions"] = regions
        if "topics" in values:
            for name, phrases in values["topics"].items():
                if phrases:
                    self.topics[name] = phrases
                else:  # an empty list lifts a topic a wider layer denied
                    self.topics.pop(name, None)
        if "injection" in values:
            self.injection.update(r.fields(InjectionPolicy, values["injection"], f"{path}.injection"))
        if "limits" in values:
            self.limits.update(r.fields(SizeLimits, values["limits"], f"{path}.limits"))
        if "output" in values:
            out = r.fields(_OutputFields, values["output"], f"{path}.output")
            if "pii" in out:
                base = self.output_pii if self.output_pii is not None else {}
                self.output_pii = {**base, **self._pii(out.pop("pii"), f"{path}.output.pii")}
            self.output.update(out)
        return values

    def build(self, name: str, version: str) -> GuardPolicy:
        output = OutputPolicy(**self.output, pii=self.output_pii)
        return GuardPolicy(
            name=name,
            version=version,
            pii=dict(self.pii),
            injection=InjectionPolicy(**self.injection),
            limits=SizeLimits(**self.limits),
            topics=dict(self.topics),
            output=output,
            **self.top,
        )


class GuardPolicies:
    """Every policy of one file, resolved per tenant and per key at load time.

    Attributes:
        version: A digest of the file's text ("" for a policy built in code).
        default: The policy of a tenant the file does not list.
    """

    def __init__(
        self,
        default: GuardPolicy,
        tenants: Mapping[str, GuardPolicy] | None = None,
        keys: Mapping[tuple[str, str], GuardPolicy] | None = None,
        version: str = "",
    ) -> None:
        self.default = default
        self.version = version
        self._tenants = dict(tenants or {})
        self._keys = dict(keys or {})

    def resolve(self, tenant: str, key_id: str = "") -> GuardPolicy:
        """The policy for a request of ``tenant`` made with the key ``key_id``.

        A key the file does not list gets its tenant's policy; a tenant it does not list
        gets the defaults. Constant time: every combination was built when the file was read.
        """
        if key_id:
            policy = self._keys.get((tenant, key_id))
            if policy is not None:
                return policy
        return self._tenants.get(tenant, self.default)


def parse_policies(doc: Any, source: str = "guard.yaml", version: str = "") -> GuardPolicies:
    """Builds the policies from a parsed YAML document.

    Raises:
        GuardPolicyError: An unknown key or PII type, a wrong type or a value out of range,
            naming ``source``, the dotted key and the value.
    """
    r = Reader(source, GuardPolicyError)
    spec = r.read(_File, doc)
    base = _Builder(r)
    base.add(spec.defaults, "defaults", _Layer)
    default = base.build("defaults", version)
    tenants: dict[str, GuardPolicy] = {}
    keys: dict[tuple[str, str], GuardPolicy] = {}
    for tenant, raw in spec.tenants.items():
        tb = base.copy()
        values = tb.add(raw, f"tenants.{tenant}", _TenantLayer)
        tenants[tenant] = tb.build(f"tenant {tenant}", version)
        for key_id, key_raw in r.mapping(values.get("keys"), f"tenants.{tenant}.keys").items():
            kb = tb.copy()
            kb.add(key_raw, f"tenants.{tenant}.keys.{key_id}", _Layer)
            keys[(tenant, key_id)] = kb.build(f"tenant {tenant} key {key_id}", version)
    return GuardPolicies(default, tenants, keys, version)


def load_policies(path: str | Path) -> GuardPolicies:
    """Reads and parses a guard policy file.

    Raises:
        GuardPolicyError: The file is unreadable, not YAML, or malformed (see :func:`parse_policies`).
    """
    doc = load_yaml(path, what="the guard policy file", error=GuardPolicyError)
    return parse_policies(doc.data, str(path), hashlib.sha256(doc.text.encode()).hexdigest()[:12])


class GuardPolicySource:
    """The current policies, re-read when the file changes; a bad edit keeps the old ones."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self.current = load_policies(self.path)
        self.last_error = ""

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def reload_if_changed(self) -> bool:
        """Re-reads the file if its mtime or size changed.

        Returns:
            True when new policies were swapped in; False when nothing changed or the new
            file is bad (the error is logged and kept in ``last_error``).
        """
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policies = load_policies(self.path)
        except GuardPolicyError as exc:
            self.last_error = str(exc)
            log.error("guard policy reload failed; keeping version %s: %s", self.current.version, exc)
            return False
        self.current, self.last_error = policies, ""
        log.info("guard policy reloaded", extra={"version": policies.version})
        return True
