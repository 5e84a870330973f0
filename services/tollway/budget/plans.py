"""The plans file (``deploy/budget.yaml``): plans, the tenants on them, their overrides.

Read strictly with :mod:`tollway.mesh.schema`: an unknown key, a wrong type or a value out
of range fails naming the file, the dotted key and the value. Checks the schema cannot
express (a tenant on a plan that does not exist, a quota with two units) fail the same way.
:class:`PlansSource` re-reads the file when it changes and keeps the old plans when the new
file is bad, so a bad edit never takes the budget service down.

Shape::

    version: 1
    default_plan: free          # tenants not listed get it; "" refuses unknown tenants
    thresholds: {normal: 0.9, batch: 0.8}
    plans:
      free:
        max_tokens_per_request: 1024
        default_priority: normal
        thresholds: {normal: 0.9, batch: 0.8}   # optional, per plan
        when_unavailable: refuse   # admit | refuse while the budget service is down;
                                   # default: refuse with a usd quota, else admit
        quotas:
          - {scope: tenant, window: day, tokens: 200000}
          - {scope: tenant, window: month, usd: 5.0}
          - {scope: key, window: minute, requests: 60}
          - {scope: feature, subject: summarise, window: hour, tokens: 50000}
          - {scope: conversation, window: conversation, tokens: 40000}
    tenants:
      acme:
        plan: pro
        max_tokens_per_request: 4096
        when_unavailable: admit   # overrides the plan's
        quotas: [{scope: tenant, window: day, tokens: 5000000}]   # replace the plan's
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollway.budget.types import (
    SUBJECT_ID,
    TENANT_ID,
    Override,
    Policy,
    Priority,
    Quota,
    Scope,
    UnavailablePolicy,
    Unit,
    Window,
)
from tollway.mesh.frozen import frozen
from tollway.mesh.schema import Reader, SchemaError, load_yaml, rule

log = logging.getLogger("tollway.budget.plans")

NANOS_PER_USD = 1_000_000_000


class PlansError(SchemaError):
    """The plans file is unreadable or malformed; the message names the key and the value."""


@frozen
class _QuotaSpec:
    scope: Scope = dataclasses.field(metadata=rule(noun="a quota scope"))
    window: Window = dataclasses.field(metadata=rule(noun="a window"))
    subject: str = ""
    tokens: int | None = dataclasses.field(default=None, metadata=rule(low=0))
    usd: float | None = dataclasses.field(default=None, metadata=rule(low=0))
    requests: int | None = dataclasses.field(default=None, metadata=rule(low=0))


@frozen
class _Thresholds:
    normal: float = dataclasses.field(default=0.9, metadata=rule(low=0, high=1, low_open=True))
    batch: float = dataclasses.field(default=0.8, metadata=rule(low=0, high=1, low_open=True))


@frozen
class _PlanSpec:
    quotas: tuple[_QuotaSpec, ...] = ()
    max_tokens_per_request: int = dataclasses.field(default=0, metadata=rule(low=0))
    default_priority: Priority = dataclasses.field(default=Priority.NORMAL, metadata=rule(noun="a priority"))
    thresholds: _Thresholds | None = None
    when_unavailable: UnavailablePolicy | None = dataclasses.field(
        default=None, metadata=rule(noun="a budget-outage policy")
    )


@frozen
class _TenantSpec:
    plan: str
    quotas: tuple[_QuotaSpec, ...] = ()
    max_tokens_per_request: int | None = dataclasses.field(default=None, metadata=rule(low=0))
    when_unavailable: UnavailablePolicy | None = dataclasses.field(
        default=None, metadata=rule(noun="a budget-outage policy")
    )


@frozen
class _FileSpec:
    plans: Mapping[str, _PlanSpec]
    version: int = dataclasses.field(default=1, metadata=rule(low=1, high=1))
    default_plan: str = ""
    thresholds: _Thresholds = _Thresholds()
    tenants: Mapping[str, _TenantSpec] = dataclasses.field(default_factory=dict)


@frozen
class Plan:
    """A plan: its quotas, per-request cap, thresholds, default priority and outage policy
    (None: derived from its quotas, see :attr:`Policy.when_unavailable`)."""

    name: str
    quotas: tuple[Quota, ...]
    max_tokens_per_request: int
    default_priority: Priority
    normal_threshold: float
    batch_threshold: float
    when_unavailable: UnavailablePolicy | None = None


def check_quota(quota: Quota) -> str:
    """What is wrong with ``quota`` ("" when nothing): the rules that tie scope, subject and
    window together, shared by the file and SetBudget."""
    if quota.limit < 0:
        return f"limit {quota.limit} is below 0"
    if (quota.scope is Scope.CONVERSATION) != (quota.window is Window.CONVERSATION):
        return "window conversation goes with scope conversation, and only with it"
    if quota.subject and quota.scope not in (Scope.KEY, Scope.FEATURE):
        return f"subject {quota.subject!r} is only allowed on key and feature quotas"
    if quota.subject and not SUBJECT_ID.match(quota.subject):
        return f"subject {quota.subject!r} may not contain '|', ',', '/', braces or spaces"
    return ""


def merge_quotas(base: tuple[Quota, ...], changes: tuple[Quota, ...]) -> tuple[Quota, ...]:
    """``base`` with each quota of ``changes`` replacing the one of the same identity, or added."""
    merged = {q.identity: q for q in base}
    for q in changes:
        merged[q.identity] = q
    return tuple(merged.values())


class Plans:
    """One parsed plans file.

    Attributes:
        plans: Every plan by name.
        tenants: The tenants the file lists: (plan name, quota overrides, cap override).
        default_plan: The plan of tenants the file does not list; "" refuses them.
        version: The first 12 hex digits of the file's SHA-256.
    """

    def __init__(
        self,
        plans: Mapping[str, Plan],
        tenants: Mapping[str, Override],
        default_plan: str = "",
        version: str = "",
    ) -> None:
        self.plans = dict(plans)
        self.tenants = dict(tenants)
        self.default_plan = default_plan
        self.version = version

    def knows(self, tenant: str) -> bool:
        """Whether ``tenant`` has a budget without any override."""
        return tenant in self.tenants or bool(self.default_plan)

    def policy(self, tenant: str, override: Override | None = None) -> Policy | None:
        """The budget in force for ``tenant``: the file's, then ``override`` on top.

        Returns:
            None when neither the file nor the override puts the tenant on a plan, or the
            plan named does not exist (SetBudget checks plans when it stores an override).
        """
        listed = self.tenants.get(tenant)
        plan_name = (override.plan if override and override.plan else "") or (
            listed.plan if listed else self.default_plan
        )
        plan = self.plans.get(plan_name)
        if plan is None:
            return None
        quotas = plan.quotas
        cap = plan.max_tokens_per_request
        unavailable = plan.when_unavailable
        if listed is not None:
            quotas = merge_quotas(quotas, listed.quotas)
            cap = listed.max_tokens_per_request if listed.max_tokens_per_request is not None else cap
            unavailable = listed.unavailable or unavailable
        if override is not None:
            quotas = merge_quotas(quotas, override.quotas)
            cap = override.max_tokens_per_request if override.max_tokens_per_request is not None else cap
        return Policy(
            tenant=tenant,
            plan=plan.name,
            quotas=quotas,
            max_tokens_per_request=cap,
            normal_threshold=plan.normal_threshold,
            batch_threshold=plan.batch_threshold,
            default_priority=plan.default_priority,
            overridden=override is not None and override != Override(),
            unavailable=unavailable,
        )


def _quota(r: Reader, spec: _QuotaSpec, path: str) -> Quota:
    given = [
        (unit, v)
        for unit, v in ((Unit.TOKENS, spec.tokens), (Unit.USD_NANOS, spec.usd), (Unit.REQUESTS, spec.requests))
        if v is not None
    ]
    if len(given) != 1:
        raise r.fail_key(path, "needs exactly one of tokens, usd or requests")
    unit, value = given[0]
    limit = round(value * NANOS_PER_USD) if unit is Unit.USD_NANOS else int(value)
    quota = Quota(scope=spec.scope, window=spec.window, unit=unit, limit=limit, subject=spec.subject)
    problem = check_quota(quota)
    if problem:
        raise r.fail_key(path, problem)
    return quota


def _quotas(r: Reader, specs: tuple[_QuotaSpec, ...], path: str) -> tuple[Quota, ...]:
    out: list[Quota] = []
    seen: dict[tuple[Scope, str, Window, Unit], int] = {}
    for i, spec in enumerate(specs):
        q = _quota(r, spec, f"{path}[{i}]")
        if q.identity in seen:
            raise r.fail_key(
                f"{path}[{i}]", f"repeats {path}[{seen[q.identity]}] (same scope, subject, window and unit)"
            )
        seen[q.identity] = i
        out.append(q)
    return tuple(out)


def parse_plans(doc: Any, source: str = "budget.yaml", version: str = "") -> Plans:
    """Builds :class:`Plans` from the parsed YAML.

    Raises:
        PlansError: An unknown key, a wrong type, a value out of range, a quota with no or
            two units, a dangling plan name or a malformed tenant id; the message names it.
    """
    r = Reader(source, PlansError)
    spec = r.read(_FileSpec, doc)
    if not spec.plans:
        raise r.fail_key("plans", "at least one plan is required")
    plans: dict[str, Plan] = {}
    for name, p in spec.plans.items():
        th = p.thresholds or spec.thresholds
        if th.batch > th.normal:
            where = f"plans.{name}.thresholds" if p.thresholds else "thresholds"
            raise r.fail(f"{where}.batch", th.batch, f"is above normal ({th.normal}): batch must be refused first")
        plans[name] = Plan(
            name=name,
            quotas=_quotas(r, p.quotas, f"plans.{name}.quotas"),
            max_tokens_per_request=p.max_tokens_per_request,
            default_priority=p.default_priority,
            normal_threshold=th.normal,
            batch_threshold=th.batch,
            when_unavailable=p.when_unavailable,
        )
    if spec.default_plan and spec.default_plan not in plans:
        raise r.fail("default_plan", spec.default_plan, f"is not a plan; known: {', '.join(sorted(plans))}")
    tenants: dict[str, Override] = {}
    for tenant, t in spec.tenants.items():
        if not TENANT_ID.match(tenant):
            raise r.fail(f"tenants.{tenant}", tenant, "is not a tenant id (letters, digits, '.', '_', '-'; at most 64)")
        if t.plan not in plans:
            raise r.fail(f"tenants.{tenant}.plan", t.plan, f"is not a plan; known: {', '.join(sorted(plans))}")
        tenants[tenant] = Override(
            plan=t.plan,
            quotas=_quotas(r, t.quotas, f"tenants.{tenant}.quotas"),
            max_tokens_per_request=t.max_tokens_per_request,
            unavailable=t.when_unavailable,
        )
    return Plans(plans, tenants, spec.default_plan, version)


def load_plans(path: str | Path) -> Plans:
    """Reads and parses the plans file.

    Raises:
        PlansError: The file is missing, not YAML, or malformed; the message names it.
    """
    doc = load_yaml(path, what="the plans file", error=PlansError)
    return parse_plans(doc.data, str(path), hashlib.sha256(doc.text.encode()).hexdigest()[:12])


class PlansSource:
    """The current plans, re-read when the file changes (a bad file keeps the old plans)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self.current = load_plans(self.path)
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
            True when new plans were swapped in; False when nothing changed or the new file
            is bad (the error is logged and kept in ``last_error``).
        """
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return self.reload()

    def reload(self) -> bool:
        """Re-reads the file now (SIGHUP); keeps the old plans when the new file is bad."""
        try:
            plans = load_plans(self.path)
        except PlansError as exc:
            self.last_error = str(exc)
            log.error("plans reload failed; keeping version %s: %s", self.current.version, exc)
            return False
        self.current, self.last_error = plans, ""
        log.info("plans reloaded", extra={"version": plans.version, "plans": len(plans.plans)})
        return True
