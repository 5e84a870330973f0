"""The budget: reserve, commit, release, usage, budgets and reconciliation, over the store.

Domain code only: it raises the typed errors of :mod:`tollway.mesh.errors` and never
touches gRPC. Every change to counters happens inside one store script; this module
decides what to ask (which counters, how much, for which priority) and explains refusals.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from tollway.budget import metrics, quota, windows
from tollway.budget.config import BudgetConfig
from tollway.budget.leases import AMOUNT_UNITS, Block
from tollway.budget.leasing import Leasing
from tollway.budget.plans import Plans, PlansSource, check_quota, merge_quotas
from tollway.budget.pricing import Priced, PriceTable
from tollway.budget.store import BudgetStore, ScriptOutcome, join_meta, pack_counters, pack_meta, pack_model
from tollway.budget.types import (
    RESERVATION_NAME,
    SUBJECT_ID,
    TENANT_ID,
    CommitCommand,
    Committed,
    CounterDifference,
    Granted,
    Override,
    Policy,
    Priority,
    Quota,
    QuotaState,
    Reconciliation,
    Reservation,
    ReserveCommand,
    Saved,
    SavedCommand,
    Scope,
    State,
    Unit,
    UsageRow,
    Window,
)
from tollway.common.catalog import CatalogError, CatalogSource
from tollway.mesh.background import Background
from tollway.mesh.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.budget")

MAX_USAGE_DAYS = 366
USAGE_GROUPS = {"": "", "key": "k:", "feature": "f:", "model": "m:"}
_METRICS = {
    "req": "request_count",
    "in": "input_tokens",
    "out": "output_tokens",
    "cached": "cached_input_tokens",
    "usd": "cost_usd_nanos",
    "exp": "expired_count",
    "hits": "cache_hit_count",
    "saved": "saved_cost_usd_nanos",
}
# A quota limit no counter reaches: a call admitted while the service was down is charged
# whatever its quotas say (it happened). Below 2^53, where Lua's doubles stop being exact.
_NO_LIMIT = 2**52
_COMMITTED = metrics.FINISHED.labels("committed")
_COMMITTED_LATE = metrics.FINISHED.labels("committed_late")
# Counter sets kept for reuse (see Budget._counters); more are made again, not piled up.
_SHAPES_KEPT = 10_000


def wall_clock_ms() -> int:
    """Now, in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject_path(tenant: str, scope: Scope, subject: str) -> str:
    # QuotaFailure.subject: which counter refused, as a resource path.
    if scope is Scope.TENANT:
        return f"tenants/{tenant}"
    kind = {Scope.KEY: "keys", Scope.FEATURE: "features", Scope.CONVERSATION: "conversations"}[scope]
    return f"tenants/{tenant}/{kind}/{subject}"


def _amount_text(unit: Unit, value: int) -> str:
    if unit is Unit.USD_NANOS:
        return f"${value / 1e9:.9f}".rstrip("0").rstrip(".")
    return f"{value} {'tokens' if unit is Unit.TOKENS else 'requests'}"


def override_to_json(o: Override) -> str:
    """The stored form of an override."""
    return json.dumps(
        {
            "plan": o.plan,
            "max_tokens_per_request": o.max_tokens_per_request,
            "quotas": [
                {
                    "scope": q.scope.value,
                    "window": q.window.value,
                    "unit": q.unit.value,
                    "limit": q.limit,
                    "subject": q.subject,
                }
                for q in o.quotas
            ],
        },
        sort_keys=True,
    )


def override_from_json(text: str) -> Override:
    """Reads an override written by :func:`override_to_json`.

    Raises:
        ValueError: The text is not one.
    """
    raw = json.loads(text)
    return Override(
        plan=str(raw.get("plan") or ""),
        max_tokens_per_request=raw.get("max_tokens_per_request"),
        quotas=tuple(
            Quota(Scope(q["scope"]), Window(q["window"]), Unit(q["unit"]), int(q["limit"]), str(q.get("subject", "")))
            for q in raw.get("quotas", [])
        ),
    )


def reservation_from_record(tenant: str, reservation_id: str, r: dict[str, str]) -> Reservation:
    """The domain reservation from its stored record (committed values win once committed)."""
    state = State(r["st"])
    committed = state is State.COMMITTED
    return Reservation(
        tenant=tenant,
        id=reservation_id,
        state=state,
        model=r.get("cmodel", "") if committed else r.get("model", ""),
        api_key_id=r.get("key", ""),
        feature=r.get("feat", ""),
        conversation_id=r.get("conv", ""),
        priority=Priority(r.get("prio") or "normal"),
        request_id=r.get("rid", ""),
        input_tokens=int(r.get("cin" if committed else "in") or 0),
        granted_output_tokens=int(r.get("gout") or 0),
        tokens=int(r.get("ctok" if committed else "tok") or 0),
        cost_usd_nanos=int(r.get("cusd" if committed else "usd") or 0),
        pricing_version=r.get("cpv", "") if committed else r.get("pv", ""),
        created_ms=int(r.get("c_ms") or 0),
        expires_ms=int(r.get("e_ms") or 0),
        attempt=int(r.get("att") or 1),
    )


def parse_name(name: str) -> tuple[str, str]:
    """``(tenant, id)`` of a reservation name.

    Raises:
        InvalidArgument: ``name`` is not ``tenants/{tenant}/reservations/{32 hex}``.
    """
    m = RESERVATION_NAME.match(name)
    if not m:
        raise InvalidArgument(
            f"reservation name {name!r} is not of the form tenants/{{tenant}}/reservations/{{id}}",
            [("name", "malformed reservation name")],
            reason="BAD_RESERVATION_NAME",
        )
    return m.group(1), m.group(2)


def check_tenant(tenant: str, field: str = "tenant_id") -> None:
    """Raises InvalidArgument naming ``field`` unless ``tenant`` is a valid tenant id."""
    if not TENANT_ID.match(tenant):
        raise InvalidArgument(
            f"{field} {tenant!r} is not a tenant id "
            "(letters, digits, '.', '_', '-'; 1 to 64, starting with a letter or digit)",
            [(field, "missing or malformed")],
        )


@frozen
class _PageToken:
    offset: int
    query: str


class Budget:
    """The budget service's domain object (one per process; safe across coroutines).

    Args:
        store: The Redis layout.
        plans: The plans file (a :class:`PlansSource`) or fixed plans.
        catalog: Where prices come from.
        cfg: Service settings (TTLs, intervals).
        clock: Now, in Unix ms (tests move it by hand).
    """

    def __init__(
        self,
        store: BudgetStore,
        plans: PlansSource | Plans,
        catalog: CatalogSource,
        cfg: BudgetConfig,
        *,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self._plans_source = plans if isinstance(plans, PlansSource) else None
        self._fixed_plans = plans if isinstance(plans, Plans) else None
        self.catalog = catalog
        self.prices = PriceTable(catalog.current)
        self.cfg = cfg
        self.clock = clock
        self._overrides: dict[str, Override] = {}
        self._known_tenants: set[str] = set()
        # Per-request work done once and reused (the request path is the hot one):
        self._policies: dict[str, tuple[Plans, Override | None, Policy]] = {}
        self._shapes: dict[tuple[object, ...], tuple[Policy, list[quota.Counter], str]] = {}
        self._model_metas: dict[tuple[str, str], str] = {}
        self._commit_models: dict[tuple[str, str], str] = {}
        self._granted_children: dict[tuple[bool, Priority], object] = {}
        self._day: tuple[int, str] = (-1, "")
        self._background = Background(log, jitter=0.1)
        self.leasing = (
            Leasing(
                store,
                requests=cfg.lease_requests,
                spread=cfg.lease_spread,
                idle_ms=int(cfg.lease_idle_s * 1000),
                max_age_ms=int(cfg.lease_max_age_s * 1000),
                record_delay_s=cfg.lease_record_delay_s,
                # A lease outlives the holds it covers (they expire after the reservation TTL) by
                # two seconds for the replicas' clocks: then a sweeper gives a dead holder's block back.
                lease_ttl_ms=cfg.reservation_ttl_s * 1000 + 2_000,
                clock=clock,
            )
            if cfg.lease_requests > 0
            else None
        )

    # --- life -----------------------------------------------------------------------------

    @property
    def plans(self) -> Plans:
        """The plans in force."""
        if self._plans_source is not None:
            return self._plans_source.current
        assert self._fixed_plans is not None
        return self._fixed_plans

    async def start(self) -> None:
        """Loads overrides and starts the sweeper, pruner and reloaders."""
        await self.refresh_overrides()
        self._background.every(self.cfg.sweep_interval_s, self.sweep, name="reservation sweeper")
        self._background.every(self.cfg.prune_interval_s, self.prune, name="counter pruner")
        self._background.every(self.cfg.overrides_poll_s, self.refresh_overrides, name="overrides poll")
        self._background.every(self.cfg.reload_s, self.reload_if_changed, name="plans and catalog reload")
        if self.leasing is not None:
            self._background.every(min(0.25, self.cfg.lease_idle_s / 2), self.leasing.tick, name="leases")
        self._background.start()

    async def stop(self) -> None:
        """Stops the background loops and gives leases back. Safe to call more than once, or
        before start."""
        await self._background.stop()
        if self.leasing is not None:
            await self.leasing.stop()

    def reload_if_changed(self) -> None:
        """Re-reads the plans file and the catalog when they changed (bad files are kept out)."""
        if self._plans_source is not None:
            before = self._plans_source.current
            self._plans_source.reload_if_changed()
            if self._plans_source.current is before and self._plans_source.last_error:
                metrics.RELOAD_ERRORS.labels("plans").inc()
        try:
            if self.catalog.reload_if_changed():
                self.prices = PriceTable(self.catalog.current)
        except CatalogError:
            metrics.RELOAD_ERRORS.labels("catalog").inc()

    def reload_plans(self) -> None:
        """Re-reads the plans file now (SIGHUP)."""
        if self._plans_source is not None:
            self._plans_source.reload()

    async def refresh_overrides(self) -> None:
        """Reads every SetBudget override (made by any replica) from Redis."""
        fresh: dict[str, Override] = {}
        for tenant, text in (await self.store.overrides()).items():
            try:
                fresh[tenant] = override_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring a malformed budget override", extra={"tenant": tenant, "error": str(exc)})
        self._overrides = fresh

    def policy(self, tenant: str) -> Policy:
        """The budget in force for ``tenant``.

        Raises:
            NotFound: Neither the plans file nor an override puts the tenant on a plan.
        """
        plans, override = self.plans, self._overrides.get(tenant)
        cached = self._policies.get(tenant)
        if cached is not None and cached[0] is plans and cached[1] is override:
            return cached[2]
        policy = plans.policy(tenant, override)
        if policy is not None:
            if len(self._policies) > 100_000:
                self._policies.clear()
            self._policies[tenant] = (plans, override, policy)
        if policy is None:
            raise NotFound(
                f"tenant {tenant!r} has no budget: it is not in the plans file, the file has no default_plan, "
                "and no SetBudget put it on a plan",
                reason="UNKNOWN_TENANT",
                metadata={"tenant_id": tenant},
            )
        return policy

    def _priced(self, model: str, field: str = "model") -> Priced:
        if not model:
            raise InvalidArgument(f"{field} is required", [(field, "required")])
        priced = self.prices.resolve(model)
        if priced is None:
            catalog = self.catalog.current
            known = sorted({*catalog.names(), *(["auto"] if catalog.routing.tiers else [])})
            raise NotFound(
                f"{field} {model!r} is not in the model catalog; known models: {', '.join(known)}",
                reason="UNKNOWN_MODEL",
                metadata={"model": model},
            )
        return priced

    # --- reserve --------------------------------------------------------------------------

    def _check_reserve(self, cmd: ReserveCommand) -> None:
        check_tenant(cmd.tenant)
        bad: list[tuple[str, str]] = []
        if cmd.input_tokens < 1:
            bad.append(("input_tokens", f"{cmd.input_tokens} is not at least 1"))
        if cmd.max_output_tokens < 1:
            bad.append(("max_output_tokens", f"{cmd.max_output_tokens} is not at least 1"))
        if not 0 <= cmd.min_output_tokens <= max(cmd.max_output_tokens, 0):
            bad.append(("min_output_tokens", f"{cmd.min_output_tokens} is not in [0, max_output_tokens]"))
        for field, value in (
            ("api_key_id", cmd.api_key_id),
            ("feature", cmd.feature),
            ("conversation_id", cmd.conversation_id),
        ):
            if value and not SUBJECT_ID.match(value):
                bad.append((field, f"{value!r} is longer than 128 or holds '|', ',', '/', braces or spaces"))
        if len(cmd.request_id) > 64:
            bad.append(("request_id", "longer than 64 characters"))
        if not 0 <= cmd.ttl_s <= self.cfg.max_reservation_ttl_s:
            bad.append(("ttl_seconds", f"{cmd.ttl_s} is not in [0, {self.cfg.max_reservation_ttl_s}]"))
        if cmd.admitted_while_unavailable and not cmd.request_id:
            # Without it a retried charge would charge twice.
            bad.append(("request_id", "required with admitted_while_unavailable"))
        if bad:
            raise InvalidArgument("; ".join(f"{f}: {why}" for f, why in bad), bad)

    async def reserve(self, cmd: ReserveCommand) -> Granted:
        """Holds the estimate of one call against every quota that applies, all or nothing.

        Raises:
            InvalidArgument: A field is missing or out of range, or max_output_tokens is above
                the plan's per-request cap.
            NotFound: The tenant has no budget or the model is not in the catalog.
            ResourceExhausted: A quota (named in ``quota_violations``) has no room for the
                estimate at this priority; ``retry_after_s`` is when its window resets.
                Never for ``admitted_while_unavailable``: that call happened, so it is held
                past every limit.
        """
        self._check_reserve(cmd)
        priced = self._priced(cmd.model)
        policy = self.policy(cmd.tenant)
        forced = cmd.admitted_while_unavailable
        if not forced and policy.max_tokens_per_request and cmd.max_output_tokens > policy.max_tokens_per_request:
            raise InvalidArgument(
                f"max_output_tokens {cmd.max_output_tokens} is above the per-request cap of plan "
                f"{policy.plan!r} ({policy.max_tokens_per_request})",
                [("max_output_tokens", f"at most {policy.max_tokens_per_request}")],
                reason="MAX_TOKENS_ABOVE_CAP",
                metadata={"cap": str(policy.max_tokens_per_request), "plan": policy.plan},
            )
        priority = cmd.priority or policy.default_priority
        now = self.clock()
        counters, packed_counters = self._counters(policy, priority, now, cmd, forced)
        rates = priced.rates
        if cmd.request_id:
            # The same request id maps to the same reservation: a retried reserve finds it.
            rid = hashlib.sha256(f"{cmd.tenant}\0{cmd.request_id}".encode()).hexdigest()[:32]
        else:
            rid = uuid.uuid4().hex
        expires = now + (cmd.ttl_s or self.cfg.reservation_ttl_s) * 1000
        asked = {
            "tenant": cmd.tenant,
            "key": cmd.api_key_id,
            "feat": cmd.feature,
            "prov": cmd.provider,
            "conv": cmd.conversation_id,
            "prio": priority.value,
            "rid": cmd.request_id,
            "in": str(cmd.input_tokens),
            "maxout": str(cmd.max_output_tokens),
        }
        if forced:
            asked["unav"] = "1"  # the ledger says which charges bypassed the quotas, and why
        if cmd.tenant not in self._known_tenants:
            await self.store.remember_tenant(cmd.tenant)
            self._known_tenants.add(cmd.tenant)
        model_meta = self._model_meta(priced)
        terms = quota.demand_terms(rates, cmd.input_tokens)
        if (
            self.leasing is not None
            and counters
            and not forced
            and not cmd.min_output_tokens
            and not cmd.conversation_id
            and cmd.ttl_s <= self.cfg.reservation_ttl_s
        ):
            if self.leasing.book.child(cmd.tenant, rid) is not None:
                # The same request id again while this replica holds it: recorded now, so that
                # Redis answers it as for any reservation.
                await self.leasing.flush()
            else:
                leased = await self._reserve_leased(
                    cmd, policy, priority, priced, counters, rid, now, expires, (asked, model_meta), terms
                )
                if leased is not None:
                    return leased
        reserve = functools.partial(
            self.store.reserve,
            cmd.tenant,
            rid,
            now_ms=now,
            expires_ms=expires,
            max_out=cmd.max_output_tokens,
            min_out=cmd.min_output_tokens,
            meta=join_meta(pack_meta(asked), model_meta),
            demands=terms,
            counters=packed_counters,
        )
        outcome = await reserve()
        if outcome.status == "refused" and self.leasing is not None and await self.leasing.give_back_tenant(cmd.tenant):
            outcome = await reserve()  # what this replica's own leases held may be the room
        if outcome.status in ("dup", "committed"):
            # An open reservation under this request id is returned as is (a retried reserve).
            # A committed one too, in state COMMITTED and holding nothing: the request id was
            # charged once and is not charged again; the caller's commit of a rerun answers
            # ALREADY_COMMITTED (or the first result), so a retried job item still gets its
            # answer. A released or expired one never reaches here: the store reserved anew.
            record = await self.store.get(cmd.tenant, rid)
            if record is None:  # finished and forgotten between the two calls
                raise FailedPrecondition(f"request_id {cmd.request_id!r} was reserved before and is finished")
            return Granted(reservation_from_record(cmd.tenant, rid, record), {}, policy.when_unavailable)
        if outcome.status == "refused":
            metrics.RESERVATIONS.labels("refused", priority.value).inc()
            raise self._refusal(
                cmd, policy, priority, counters, outcome.used, quota.demands(rates, cmd.input_tokens), now
            )
        granted = outcome.granted_out
        self._reserved_metric(granted == cmd.max_output_tokens, priority).inc()
        amounts = outcome.amounts
        # The tightest counter of each unit, for rate-limit headers: one QuotaState per unit.
        least: dict[Unit, tuple[int, quota.Counter, int]] = {}
        for c, used in zip(counters, outcome.used, strict=True):
            after = used + amounts[c.quota.unit]
            left = c.allowed - after
            best = least.get(c.quota.unit)
            if best is None or left < best[0]:
                least[c.quota.unit] = (left, c, after)
        tightest = {
            unit: QuotaState(c.quota, c.subject, after, max(0, left), c.reset_ms)
            for unit, (left, c, after) in least.items()
        }
        reservation = self._held(
            cmd, rid, priced, priority, granted, (amounts[Unit.TOKENS], amounts[Unit.USD_NANOS]), now, expires
        )
        return Granted(dataclasses.replace(reservation, attempt=outcome.attempt), tightest, policy.when_unavailable)

    def _held(
        self,
        cmd: ReserveCommand,
        rid: str,
        priced: Priced,
        priority: Priority,
        granted_out: int,
        amounts: tuple[int, int],
        now: int,
        expires: int,
    ) -> Reservation:
        """A hold just granted, as its caller learns it (``amounts``: tokens and nano-dollars);
        attempt 1 (a reserve in Redis sets the one its script gave)."""
        return Reservation(
            tenant=cmd.tenant,
            id=rid,
            state=State.RESERVED,
            model=priced.name,
            api_key_id=cmd.api_key_id,
            feature=cmd.feature,
            conversation_id=cmd.conversation_id,
            priority=priority,
            request_id=cmd.request_id,
            input_tokens=cmd.input_tokens,
            granted_output_tokens=granted_out,
            tokens=amounts[0],
            cost_usd_nanos=amounts[1],
            pricing_version=self.prices.version,
            created_ms=now,
            expires_ms=expires,
        )

    async def _reserve_leased(
        self,
        cmd: ReserveCommand,
        policy: Policy,
        priority: Priority,
        priced: Priced,
        counters: list[quota.Counter],
        rid: str,
        now: int,
        expires: int,
        meta: tuple[dict[str, str], str],
        terms: tuple[int, ...],
    ) -> Granted | None:
        """Admits the call from this replica's lease of its shape (no Redis on the way when the
        lease has room); None when no lease can be had: the caller reserves in Redis."""
        assert self.leasing is not None
        out = cmd.max_output_tokens
        amounts = quota.demand_amounts(terms, out)

        def lowest_counters() -> str:  # these two only when a block is taken
            lowest = min(Priority, key=policy.threshold)
            return pack_counters(
                [
                    (c.field, c.allowed)
                    for c in quota.counters(policy, lowest, now, api_key_id=cmd.api_key_id, feature=cmd.feature)
                ]
            )

        block = await self.leasing.admit(
            (cmd.tenant, cmd.api_key_id, cmd.feature, now // 60_000, id(policy)),
            rid,
            amounts,
            now_ms=now,
            expires_ms=expires,
            granted_out=out,
            asked=meta[0],
            model_meta=meta[1],
            lowest_counters=lowest_counters,
            lease_meta=lambda: pack_meta({"tenant": cmd.tenant, "key": cmd.api_key_id, "feat": cmd.feature}),
        )
        if block is None:
            return None
        self._reserved_metric(True, priority).inc()
        # Attempt 1 as the caller knows it; settled as the attempt the hold is recorded as.
        reservation = self._held(cmd, rid, priced, priority, out, amounts[:2], now, expires)
        return Granted(reservation, _tightest_in_block(block, counters), policy.when_unavailable)

    def _counters(
        self, policy: Policy, priority: Priority, now: int, cmd: ReserveCommand, forced: bool
    ) -> tuple[list[quota.Counter], str]:
        """The counters a reserve checks and their packed form, made once per minute for each
        tenant, priority and subject set: every window starts on a minute, so the counters of
        one minute are the same for every request of that shape."""
        key = (cmd.tenant, priority, cmd.api_key_id, cmd.feature, cmd.conversation_id, forced, now // 60_000)
        hit = self._shapes.get(key)
        if hit is not None and hit[0] is policy:
            return hit[1], hit[2]
        counters = quota.counters(
            policy,
            priority,
            now,
            api_key_id=cmd.api_key_id,
            feature=cmd.feature,
            conversation_id=cmd.conversation_id,
        )
        packed = pack_counters([(c.field, _NO_LIMIT if forced else c.allowed) for c in counters])
        if len(self._shapes) >= _SHAPES_KEPT:
            self._shapes.clear()  # a new minute, or many conversations: start over
        self._shapes[key] = (policy, counters, packed)
        return counters, packed

    def _model_meta(self, priced: Priced) -> str:
        """The reservation metadata of ``priced`` under the current prices, made once per model."""
        key = (priced.name, self.prices.version)
        packed = self._model_metas.get(key)
        if packed is None:
            r = priced.rates
            packed = self._model_metas[key] = pack_meta(
                {
                    "model": priced.name,
                    "pv": self.prices.version,
                    "r_in": str(r.input_picos),
                    "r_out": str(r.output_picos),
                    "r_cached": str(r.cached_input_picos),
                    "ctx": str(priced.context_window),
                    "mout": str(priced.max_output_tokens),
                }
            )
        return packed

    def _reserved_metric(self, whole: bool, priority: Priority):  # type: ignore[no-untyped-def]
        # prometheus_client's labels() looks the child up by a tuple of strings on every call.
        key = (whole, priority)
        child = self._granted_children.get(key)
        if child is None:
            outcome = "granted" if whole else "granted_fewer_tokens"
            child = self._granted_children[key] = metrics.RESERVATIONS.labels(outcome, priority.value)
        return child

    def _refusal(
        self,
        cmd: ReserveCommand,
        policy: Policy,
        priority: Priority,
        counters: Sequence[quota.Counter],
        used: Sequence[int],
        demands: dict[Unit, quota.Demand],
        now: int,
    ) -> ResourceExhausted:
        wanted = cmd.min_output_tokens or cmd.max_output_tokens
        short = [(c, u) for c, u in zip(counters, used, strict=True) if u + demands[c.unit].amount(wanted) > c.allowed]
        violations = []
        resets: list[float | None] = []
        for c, u in short:
            metrics.REFUSALS.labels(c.quota.scope.value, c.quota.window.value, c.unit.name.lower()).inc()
            asked = demands[c.unit].amount(wanted)
            share = (
                ""
                if priority is Priority.INTERACTIVE
                else f"; {priority.value} priority may fill {_amount_text(c.unit, c.allowed)}"
            )
            reset = f"; resets at {_iso(c.reset_ms)}" if c.reset_ms else "; it does not reset"
            violations.append(
                (
                    _subject_path(cmd.tenant, c.quota.scope, c.subject),
                    f"{c.quota.describe()} of {_amount_text(c.unit, c.quota.limit)}: "
                    f"{_amount_text(c.unit, u)} used, {_amount_text(c.unit, asked)} asked{share}{reset}",
                )
            )
            resets.append(quota.retry_after_s(c.reset_ms, now))
        retry = None if not resets or any(r is None for r in resets) else max(r for r in resets if r is not None)
        first_c, first_used = short[0] if short else (counters[0], used[0])
        metadata = {
            "tenant_id": cmd.tenant,
            "plan": policy.plan,
            "priority": priority.value,
            "scope": first_c.quota.scope.value,
            "window": first_c.quota.window.value,
            "unit": first_c.unit.name.lower(),
            "limit": str(first_c.quota.limit),
            "used": str(first_used),
            "remaining": str(quota.remaining(first_c, first_used)),
            "requested": str(demands[first_c.unit].amount(wanted)),
        }
        if first_c.reset_ms:
            metadata["reset_time"] = _iso(first_c.reset_ms)
        return ResourceExhausted(
            f"budget exhausted for tenant {cmd.tenant!r}: " + "; ".join(d for _, d in violations),
            retry_after_s=retry,
            quota_violations=violations,
            reason="BUDGET_EXHAUSTED",
            metadata=metadata,
        )

    # --- commit and release ---------------------------------------------------------------

    async def commit(self, cmd: CommitCommand) -> Committed:
        """Charges the real usage of a reserved call in place of its estimate.

        Raises:
            InvalidArgument: Malformed name, negative tokens, cached above input, or usage the
                model cannot have produced (beyond its context window or output limit).
            NotFound: No such reservation (or the model named is not in the catalog).
            FailedPrecondition: It was released, or committed with other usage, or
                ``cmd.attempt`` is over and a later attempt holds the request id (STALE_ATTEMPT;
                nothing changed).
        """
        tenant, rid = parse_name(cmd.name)
        bad = [
            (f, f"{v} is below 0")
            for f, v in (
                ("input_tokens", cmd.input_tokens),
                ("output_tokens", cmd.output_tokens),
                ("cached_input_tokens", cmd.cached_input_tokens),
            )
            if v < 0
        ]
        if cmd.cached_input_tokens > cmd.input_tokens:
            bad.append(("cached_input_tokens", f"{cmd.cached_input_tokens} is above input_tokens ({cmd.input_tokens})"))
        if cmd.attempt < 0:
            bad.append(("attempt", f"{cmd.attempt} is below 0"))
        if bad:
            raise InvalidArgument("; ".join(f"{f}: {why}" for f, why in bad), bad)
        model = self._commit_model(cmd.model) if cmd.model else ""
        now = self.clock()
        usage = {
            "now_ms": now,
            "day": self._day_of(now),
            "attempt": cmd.attempt,
            "input_tokens": cmd.input_tokens,
            "output_tokens": cmd.output_tokens,
            "cached_input_tokens": cmd.cached_input_tokens,
            "provider": cmd.provider,
            "partial": cmd.partial,
            "model": model,
        }
        out = await self.leasing.commit(tenant, rid, **usage) if self.leasing is not None else None
        if out is None:
            out = await self.store.commit(tenant, rid, **usage)  # type: ignore[arg-type]
        if out.status == "too_large":
            field, limit, model_name = out.detail
            what = "context window" if field == "input_tokens" else "output limit"
            raise InvalidArgument(
                f"usage of {cmd.input_tokens} input and {cmd.output_tokens} output tokens is beyond the {what} "
                f"of model {model_name!r} ({limit} tokens); nothing was charged",
                [(field, f"beyond the model's {what} ({limit})")],
                reason="USAGE_BEYOND_MODEL",
                metadata={"model": model_name, "limit": limit},
            )
        self._finished_or_raise(cmd.name, out, committing=True, attempt=cmd.attempt)
        reservation = reservation_from_record(tenant, rid, out.record)
        if out.status == "ok":
            (_COMMITTED_LATE if out.record.get("late") == "1" else _COMMITTED).inc()
            metrics.CHARGED_TOKENS.inc(reservation.tokens)
            metrics.CHARGED_USD_NANOS.inc(reservation.cost_usd_nanos)
        return Committed(reservation, int(out.record.get("dtok") or 0), int(out.record.get("dusd") or 0))

    def _commit_model(self, name: str) -> str:
        """The answering model of a commit in the store's form, made once per model and prices."""
        key = (name, self.prices.version)
        packed = self._commit_models.get(key)
        if packed is None:
            priced = self._priced(name)
            r = priced.rates
            packed = self._commit_models[key] = pack_model(
                priced.name,
                (r.input_picos, r.output_picos, r.cached_input_picos),
                self.prices.version,
                priced.context_window,
                priced.max_output_tokens,
            )
        return packed

    def _day_of(self, now_ms: int) -> str:
        """windows.day_of, formatted once a day."""
        day = now_ms // 86_400_000
        if self._day[0] != day:
            self._day = (day, windows.day_of(now_ms))
        return self._day[1]

    def _finished_or_raise(self, name: str, out: ScriptOutcome, *, committing: bool, attempt: int) -> None:
        if out.status == "stale":
            # A settlement of an earlier attempt of the request id (replayed from an outbox,
            # say) after a later attempt reserved anew: it must not touch the later hold.
            held, state = out.detail
            raise FailedPrecondition(
                f"attempt {attempt} of reservation {name!r} is over: its request id reserved again and "
                f"attempt {held} holds it now ({state}); nothing was changed. A request id is charged "
                "once, by the attempt that holds it",
                reason="STALE_ATTEMPT",
                metadata={"name": name, "attempt": str(attempt), "current_attempt": held},
            )
        if out.status == "missing":
            raise NotFound(
                f"no reservation {name!r}: it never existed, or it finished more than "
                f"{self.cfg.record_ttl_s} s ago and is forgotten",
                reason="UNKNOWN_RESERVATION",
                metadata={"name": name},
            )
        if out.status == "conflict":
            raise FailedPrecondition(
                f"reservation {name!r} is already committed with other usage "
                f"({out.record.get('cin')} input, {out.record.get('cout')} output, "
                f"{out.record.get('ccached')} cached tokens, model {out.record.get('cmodel')!r}); nothing was changed",
                reason="ALREADY_COMMITTED",
                metadata={"name": name},
            )
        if out.status == "released":
            raise FailedPrecondition(
                f"reservation {name!r} was released; a released reservation cannot be committed",
                reason="ALREADY_RELEASED",
                metadata={"name": name},
            )
        if out.status == "committed" and not committing:
            raise FailedPrecondition(
                f"reservation {name!r} is committed; its usage cannot be released",
                reason="ALREADY_COMMITTED",
                metadata={"name": name},
            )

    async def release(self, name: str, reason: str = "", attempt: int = 0) -> Reservation:
        """Returns a reservation's whole estimate (the call failed before using anything).

        Args:
            name: The reservation.
            reason: Why, for the ledger.
            attempt: The attempt of the request id the hold was made for (``Reservation.attempt``);
                0 releases whichever attempt holds it.

        Raises:
            InvalidArgument: Malformed name, reason or attempt.
            NotFound: No such reservation.
            FailedPrecondition: It is committed (ALREADY_COMMITTED), or ``attempt`` is over and a
                later attempt holds the request id (STALE_ATTEMPT; nothing changed).
        """
        tenant, rid = parse_name(name)
        bad = []
        if len(reason) > 64:
            bad.append(("reason", "longer than 64 characters"))
        if attempt < 0:
            bad.append(("attempt", f"{attempt} is below 0"))
        if bad:
            raise InvalidArgument("; ".join(f"{f}: {why}" for f, why in bad), bad)
        args = {"now_ms": self.clock(), "attempt": attempt, "reason": reason}
        out = await self.leasing.release(tenant, rid, **args) if self.leasing is not None else None
        if out is None:
            out = await self.store.release(tenant, rid, **args)  # type: ignore[arg-type]
        self._finished_or_raise(name, out, committing=False, attempt=attempt)
        if out.status == "ok":
            metrics.FINISHED.labels("released").inc()
        return reservation_from_record(tenant, rid, out.record)

    # --- cache hits -----------------------------------------------------------------------

    async def record_saved(self, cmd: SavedCommand) -> Saved:
        """Ledgers what a cache hit saved (no counter changes) and adds it to the day's usage.

        Raises:
            InvalidArgument: Bad tenant, missing or long request id, negative tokens, or a
                malformed key id, feature or tier.
            NotFound: The model is not in the catalog.
        """
        check_tenant(cmd.tenant)
        bad: list[tuple[str, str]] = []
        if not cmd.request_id or len(cmd.request_id) > 64:
            bad.append(("request_id", "required, at most 64 characters"))
        for field, value in (("input_tokens", cmd.input_tokens), ("output_tokens", cmd.output_tokens)):
            if value < 0:
                bad.append((field, f"{value} is below 0"))
        for field, value in (("api_key_id", cmd.api_key_id), ("feature", cmd.feature)):
            if value and not SUBJECT_ID.match(value):
                bad.append((field, f"{value!r} is longer than 128 or holds '|', ',', '/', braces or spaces"))
        if len(cmd.cache_tier) > 32:
            bad.append(("cache_tier", "longer than 32 characters"))
        if bad:
            raise InvalidArgument("; ".join(f"{f}: {why}" for f, why in bad), bad)
        priced = self._priced(cmd.model)
        cost = priced.rates.cost_nanos(cmd.input_tokens, cmd.output_tokens)
        now = self.clock()
        rid = hashlib.sha256(f"{cmd.tenant}\0{cmd.request_id}".encode()).hexdigest()[:32]
        recorded = await self.store.record_saved(
            cmd.tenant,
            rid,
            now_ms=now,
            day=windows.day_of(now),
            cost_usd_nanos=cost,
            groups=[""]
            + ([f"k:{cmd.api_key_id}"] if cmd.api_key_id else [])
            + ([f"f:{cmd.feature}"] if cmd.feature else [])
            + [f"m:{priced.name}"],
            meta={
                "tenant": cmd.tenant,
                "key": cmd.api_key_id,
                "feat": cmd.feature,
                "model": priced.name,
                "rid": cmd.request_id,
                "in": str(cmd.input_tokens),
                "out": str(cmd.output_tokens),
                "cost": str(cost),
                "pv": self.prices.version,
                "tier": cmd.cache_tier,
            },
        )
        if cmd.tenant not in self._known_tenants:
            await self.store.remember_tenant(cmd.tenant)
            self._known_tenants.add(cmd.tenant)
        return Saved(cost, self.prices.version, recorded)

    # --- the sweeper ----------------------------------------------------------------------

    async def sweep(self) -> int:
        """Expires every reservation past its TTL, of every tenant; returns how many."""
        total = 0
        now = self.clock()
        day = windows.day_of(now)
        for tenant in await self.store.tenants():
            while True:
                n = await self.store.expire_due(tenant, now_ms=now, day=day)
                total += n
                if n < 200:
                    break
        if total:
            metrics.FINISHED.labels("expired").inc(total)
            log.info("expired abandoned reservations", extra={"count": total})
        return total

    async def prune(self) -> int:
        """Deletes counters of windows that ended long enough ago; returns how many."""
        now = self.clock()
        total = 0
        for tenant in await self.store.tenants():
            total += await self.store.prune(
                tenant,
                now_ms=now,
                grace_s=self.cfg.counter_grace_s,
                conversations_idle_since_ms=now - self.cfg.conversation_idle_s * 1000,
            )
        return total

    # --- reading --------------------------------------------------------------------------

    async def usage(
        self, tenant: str, group: str, start_date: str, end_date: str, page_size: int, page_token: str
    ) -> tuple[list[UsageRow], str]:
        """Committed usage per day (and per key, feature or model), one page of it.

        Raises:
            InvalidArgument: Bad tenant, dates, range, page size or page token.
        """
        check_tenant(tenant)
        if group not in USAGE_GROUPS:
            raise InvalidArgument(f"group_by {group!r} is not one of key, feature, model", [("group_by", "unknown")])
        today = dt.date.fromisoformat(windows.day_of(self.clock()))
        try:
            end = windows.parse_date(end_date) if end_date else today
        except ValueError as exc:
            raise InvalidArgument(f"end_date: {exc}", [("end_date", str(exc))]) from None
        try:
            start = windows.parse_date(start_date) if start_date else end - dt.timedelta(days=30)
        except ValueError as exc:
            raise InvalidArgument(f"start_date: {exc}", [("start_date", str(exc))]) from None
        if start > end:
            raise InvalidArgument(f"start_date {start} is after end_date {end}", [("start_date", "after end_date")])
        if (end - start).days + 1 > MAX_USAGE_DAYS:
            raise InvalidArgument(
                f"the range {start}..{end} is longer than {MAX_USAGE_DAYS} days", [("start_date", "range too long")]
            )
        if not 0 <= page_size <= 1000:
            raise InvalidArgument(f"page_size {page_size} is not in [0, 1000]", [("page_size", "out of range")])
        size = page_size or 100
        query = hashlib.sha256(f"{tenant}|{group}|{start}|{end}".encode()).hexdigest()[:16]
        offset = 0
        if page_token:
            token = _decode_token(page_token)
            if token is None or token.query != query:
                raise InvalidArgument(
                    "page_token is not one this query returned (the other fields must not change between pages)",
                    [("page_token", "invalid")],
                )
            offset = token.offset
        days = windows.days(start, end)
        raw = await self.store.usage(tenant, days)
        prefix = USAGE_GROUPS[group]
        rows: list[UsageRow] = []
        for day in days:
            per: dict[str, dict[str, int]] = {}
            for field, value in raw.get(day, {}).items():
                g, _, metric = field.rpartition("|")
                if metric not in _METRICS:
                    continue
                if prefix:
                    if not g.startswith(prefix):
                        continue
                    g = g[len(prefix) :]
                elif g:
                    continue
                per.setdefault(g, {})[_METRICS[metric]] = value
            rows += [UsageRow(date=day, group=g, **vals) for g, vals in sorted(per.items())]
        page = rows[offset : offset + size]
        following = offset + size
        next_token = _encode_token(_PageToken(following, query)) if following < len(rows) else ""
        return page, next_token

    async def get_budget(self, tenant: str) -> tuple[Policy, list[QuotaState]]:
        """The budget in force and the use of each tenant-wide quota's current window.

        Raises:
            InvalidArgument: Malformed tenant id.
            NotFound: The tenant has no budget.
        """
        check_tenant(tenant)
        policy = self.policy(tenant)
        interactive = dataclasses.replace(policy, normal_threshold=1.0, batch_threshold=1.0)
        counters = quota.counters(interactive, Priority.INTERACTIVE, self.clock())
        values = await self.store.counter_values(tenant, [c.field for c in counters])
        states = [
            QuotaState(c.quota, c.subject, v, quota.remaining(c, v), c.reset_ms)
            for c, v in zip(counters, values, strict=True)
        ]
        return policy, states

    async def set_budget(
        self,
        tenant: str,
        *,
        plan: str = "",
        quotas: Sequence[Quota] = (),
        max_tokens_per_request: int | None = None,
        clear: bool = False,
    ) -> Policy:
        """Puts ``tenant`` on ``plan`` and/or overrides quotas and the per-request cap.

        Raises:
            InvalidArgument: A malformed tenant, quota or cap.
            NotFound: The plan does not exist, or the tenant is unknown and no plan is given.
        """
        check_tenant(tenant)
        bad = [(f"quotas[{i}]", p) for i, q in enumerate(quotas) if (p := check_quota(q))]
        if max_tokens_per_request is not None and max_tokens_per_request < 0:
            bad.append(("max_tokens_per_request", f"{max_tokens_per_request} is below 0"))
        if bad:
            raise InvalidArgument("; ".join(f"{f}: {why}" for f, why in bad), bad)
        plans = self.plans
        if plan and plan not in plans.plans:
            raise NotFound(
                f"plan {plan!r} is not in the plans file; known: {', '.join(sorted(plans.plans))}",
                reason="UNKNOWN_PLAN",
                metadata={"plan": plan},
            )
        await self.refresh_overrides()
        previous = Override() if clear else self._overrides.get(tenant, Override())
        updated = Override(
            plan=plan or previous.plan,
            quotas=merge_quotas(previous.quotas, tuple(quotas)),
            max_tokens_per_request=max_tokens_per_request
            if max_tokens_per_request is not None
            else previous.max_tokens_per_request,
        )
        if not updated.plan and not plans.knows(tenant):
            raise NotFound(
                f"tenant {tenant!r} is not in the plans file and has no plan; give one",
                reason="UNKNOWN_TENANT",
                metadata={"tenant_id": tenant},
            )
        await self.store.set_override(tenant, None if updated == Override() else override_to_json(updated))
        if updated == Override():
            self._overrides.pop(tenant, None)
        else:
            self._overrides[tenant] = updated
        return self.policy(tenant)

    async def reconcile(self, tenant: str = "") -> Reconciliation:
        """Compares every counter with the sum of the ledger entries that changed it.

        Counters and the ledger position are read at one instant, and only entries up to that
        position are summed, so traffic during the check cannot make a false difference.

        Raises:
            InvalidArgument: Malformed tenant id.
        """
        if tenant:
            check_tenant(tenant)
        tenants = [tenant] if tenant else await self.store.tenants()
        differences: list[CounterDifference] = []
        counter_count = entries = open_count = 0
        for t in tenants:
            snap = await self.store.snapshot(t)
            sums: dict[str, int] = {}
            if snap.last_ledger_id:
                async for _, e in self.store.ledger(t, upto=snap.last_ledger_id):
                    entries += 1
                    delta = {u: int(e.get(u) or 0) for u in ("tok", "usd", "req")}
                    for f in filter(None, e.get("f", "").split(",")):
                        sums[f] = sums.get(f, 0) + delta[quota.parse_field(f)[1].value]
            open_count += snap.open_count
            counter_count += len(snap.counters)
            for f in sorted(set(sums) | set(snap.counters)):
                have, want = snap.counters.get(f, 0), sums.get(f, 0)
                if have != want:
                    differences.append(CounterDifference(t, f, have, want))
        return Reconciliation(len(tenants), counter_count, entries, open_count, tuple(differences))


def _tightest_in_block(block: Block, counters: Sequence[quota.Counter]) -> dict[Unit, QuotaState]:
    """The tightest counter of each unit as this replica sees it: its value when the block was
    taken plus what the block admitted since (for rate-limit headers)."""
    # What the block admitted adds to every counter of a unit alike, so the tightest counter of
    # each unit is the same for the block's whole life: found once per block and counters.
    hit = block.memo.get(id(counters))
    if hit is None or hit[0] is not counters:
        best: dict[int, tuple[int, quota.Counter, int]] = {}
        for c, base in zip(counters, block.base, strict=False):
            u = AMOUNT_UNITS.index(c.quota.unit)
            room = c.allowed - base
            if u not in best or room < best[u][0]:
                best[u] = (room, c, base)
        hit = block.memo[id(counters)] = (counters, [(u, c, base) for u, (_, c, base) in best.items()])
    out: dict[Unit, QuotaState] = {}
    held, free = block.held, block.free
    for u, c, base in hit[1]:
        used = base + held[u] - free[u]
        out[AMOUNT_UNITS[u]] = QuotaState(c.quota, c.subject, used, max(0, c.allowed - used), c.reset_ms)
    return out


def _encode_token(token: _PageToken) -> str:
    return base64.urlsafe_b64encode(json.dumps([token.offset, token.query]).encode()).decode()


def _decode_token(text: str) -> _PageToken | None:
    try:
        offset, query = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, TypeError, binascii.Error):
        return None
    if not isinstance(offset, int) or offset < 0 or not isinstance(query, str):
        return None
    return _PageToken(offset, query)
