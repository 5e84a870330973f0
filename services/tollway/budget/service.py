"""gRPC <-> domain translation for tollway.budget.v1. No budget logic lives here."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tollway.budget.budget import Budget
from tollway.budget.types import (
    CommitCommand,
    Committed,
    Policy,
    Priority,
    Quota,
    QuotaState,
    Reservation,
    ReserveCommand,
    SavedCommand,
    Scope,
    State,
    UnavailablePolicy,
    Unit,
    UsageRow,
    Window,
)
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.mesh import metrics as mesh_metrics
from tollway.mesh.errors import InvalidArgument, as_tollway_error, rpc_errors, status_proto

DOMAIN = "budget.tollway"
# The most commits one BatchCommitBudget may carry (its proto says so).
MAX_BATCH_COMMITS = 1000
SERVICE_NAME = "tollway.budget.v1.BudgetService"

PRIORITY_FROM_PROTO = {
    budget_pb2.PRIORITY_UNSPECIFIED: None,
    budget_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    budget_pb2.PRIORITY_NORMAL: Priority.NORMAL,
    budget_pb2.PRIORITY_BATCH: Priority.BATCH,
}
PRIORITY_TO_PROTO = {v: k for k, v in PRIORITY_FROM_PROTO.items() if v is not None}
WINDOW_TO_PROTO = {
    Window.MINUTE: budget_pb2.WINDOW_MINUTE,
    Window.HOUR: budget_pb2.WINDOW_HOUR,
    Window.DAY: budget_pb2.WINDOW_DAY,
    Window.MONTH: budget_pb2.WINDOW_MONTH,
    Window.CONVERSATION: budget_pb2.WINDOW_CONVERSATION,
}
WINDOW_FROM_PROTO = {v: k for k, v in WINDOW_TO_PROTO.items()}
SCOPE_TO_PROTO = {
    Scope.TENANT: budget_pb2.QUOTA_SCOPE_TENANT,
    Scope.KEY: budget_pb2.QUOTA_SCOPE_KEY,
    Scope.FEATURE: budget_pb2.QUOTA_SCOPE_FEATURE,
    Scope.CONVERSATION: budget_pb2.QUOTA_SCOPE_CONVERSATION,
}
SCOPE_FROM_PROTO = {v: k for k, v in SCOPE_TO_PROTO.items()}
UNIT_TO_PROTO = {
    Unit.TOKENS: budget_pb2.QUOTA_UNIT_TOKENS,
    Unit.USD_NANOS: budget_pb2.QUOTA_UNIT_USD_NANOS,
    Unit.REQUESTS: budget_pb2.QUOTA_UNIT_REQUESTS,
}
UNIT_FROM_PROTO = {v: k for k, v in UNIT_TO_PROTO.items()}
STATE_TO_PROTO = {
    State.RESERVED: budget_pb2.RESERVATION_STATE_RESERVED,
    State.COMMITTED: budget_pb2.RESERVATION_STATE_COMMITTED,
    State.RELEASED: budget_pb2.RESERVATION_STATE_RELEASED,
    State.EXPIRED: budget_pb2.RESERVATION_STATE_EXPIRED,
}
UNAVAILABLE_TO_PROTO = {
    UnavailablePolicy.ADMIT: budget_pb2.UNAVAILABLE_POLICY_ADMIT,
    UnavailablePolicy.REFUSE: budget_pb2.UNAVAILABLE_POLICY_REFUSE,
}
GROUP_FROM_PROTO = {
    budget_pb2.USAGE_GROUP_UNSPECIFIED: "",
    budget_pb2.USAGE_GROUP_KEY: "key",
    budget_pb2.USAGE_GROUP_FEATURE: "feature",
    budget_pb2.USAGE_GROUP_MODEL: "model",
}


def _enum(table: dict, value: int, field: str):  # type: ignore[no-untyped-def, type-arg]
    if value not in table:
        raise InvalidArgument(f"{field} {value} is not a known value", [(field, "unknown or unspecified value")])
    return table[value]


def quota_to_proto(q: Quota) -> budget_pb2.Quota:
    return budget_pb2.Quota(
        scope=SCOPE_TO_PROTO[q.scope],
        subject=q.subject,
        window=WINDOW_TO_PROTO[q.window],
        unit=UNIT_TO_PROTO[q.unit],
        limit=q.limit,
    )


def quota_from_proto(q: budget_pb2.Quota, field: str) -> Quota:
    return Quota(
        scope=_enum(SCOPE_FROM_PROTO, q.scope, f"{field}.scope"),
        window=_enum(WINDOW_FROM_PROTO, q.window, f"{field}.window"),
        unit=_enum(UNIT_FROM_PROTO, q.unit, f"{field}.unit"),
        limit=q.limit,
        subject=q.subject,
    )


def _set_ms(ts: Timestamp, ms: int) -> None:
    """``ts.FromMilliseconds(ms)`` without its range check and calls: three times per answer."""
    ts.seconds, rest = divmod(ms, 1000)
    ts.nanos = rest * 1_000_000


def status_to_proto(s: QuotaState) -> budget_pb2.QuotaStatus:
    out = budget_pb2.QuotaStatus()
    status_into(out, s)
    return out


# A counter's quota, subject and reset time are the same for every reservation of its minute: the
# message with them is made once and copied (one C call), then only the two numbers are set. Filling
# the nested Quota field by field took three times as long, three times per reserve's answer.
_STATUS_TEMPLATES: dict[tuple[int, str, int], tuple[Quota, budget_pb2.QuotaStatus]] = {}
_TEMPLATES_KEPT = 4096


def _status_template(s: QuotaState) -> budget_pb2.QuotaStatus:
    key = (id(s.quota), s.subject, s.reset_ms)
    hit = _STATUS_TEMPLATES.get(key)
    if hit is not None and hit[0] is s.quota:
        return hit[1]
    q = s.quota
    out = budget_pb2.QuotaStatus(subject=s.subject)
    qp = out.quota
    qp.scope = SCOPE_TO_PROTO[q.scope]
    qp.subject = q.subject
    qp.window = WINDOW_TO_PROTO[q.window]
    qp.unit = UNIT_TO_PROTO[q.unit]
    qp.limit = q.limit
    if s.reset_ms:
        _set_ms(out.reset_time, s.reset_ms)
    if len(_STATUS_TEMPLATES) >= _TEMPLATES_KEPT:
        _STATUS_TEMPLATES.clear()  # a new minute, or many subjects: start over
    _STATUS_TEMPLATES[key] = (q, out)  # the quota is kept with it, so its id stays its own
    return out


def status_into(out: budget_pb2.QuotaStatus, s: QuotaState) -> None:
    """Fills ``out`` in place (a reserve's answer sets three of them)."""
    out.CopyFrom(_status_template(s))
    out.used = s.used
    out.remaining = s.remaining


def reservation_to_proto(r: Reservation) -> budget_pb2.Reservation:
    out = budget_pb2.Reservation()
    reservation_into(out, r)
    return out


def reservation_into(out: budget_pb2.Reservation, r: Reservation) -> None:
    """Fills ``out`` in place: a response's field filled where it is, not made apart and copied in."""
    out.name = r.name
    out.state = STATE_TO_PROTO[r.state]
    out.tenant_id = r.tenant
    if r.api_key_id:
        out.api_key_id = r.api_key_id
    if r.feature:
        out.feature = r.feature
    out.model = r.model
    if r.conversation_id:
        out.conversation_id = r.conversation_id
    out.priority = PRIORITY_TO_PROTO[r.priority]
    if r.request_id:
        out.request_id = r.request_id
    out.input_tokens = r.input_tokens
    out.granted_output_tokens = r.granted_output_tokens
    out.tokens = r.tokens
    out.cost_usd_nanos = r.cost_usd_nanos
    out.pricing_version = r.pricing_version
    out.attempt = r.attempt
    _set_ms(out.create_time, r.created_ms)
    _set_ms(out.expire_time, r.expires_ms)


def budget_to_proto(p: Policy, plans_version: str, pricing_version: str) -> budget_pb2.Budget:
    return budget_pb2.Budget(
        tenant_id=p.tenant,
        plan=p.plan,
        quotas=[quota_to_proto(q) for q in p.quotas],
        max_tokens_per_request=p.max_tokens_per_request,
        normal_threshold=p.normal_threshold,
        batch_threshold=p.batch_threshold,
        overridden=p.overridden,
        plans_version=plans_version,
        pricing_version=pricing_version,
        unavailable_policy=UNAVAILABLE_TO_PROTO[p.when_unavailable],
    )


def usage_row_to_proto(r: UsageRow) -> budget_pb2.UsageRow:
    return budget_pb2.UsageRow(
        date=r.date,
        group=r.group,
        request_count=r.request_count,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        cached_input_tokens=r.cached_input_tokens,
        cost_usd_nanos=r.cost_usd_nanos,
        expired_count=r.expired_count,
        cache_hit_count=r.cache_hit_count,
        saved_cost_usd_nanos=r.saved_cost_usd_nanos,
    )


def commit_from_proto(req: budget_pb2.CommitBudgetRequest) -> CommitCommand:
    return CommitCommand(
        name=req.name,
        input_tokens=req.input_tokens,
        output_tokens=req.output_tokens,
        cached_input_tokens=req.cached_input_tokens,
        model=req.model,
        provider=req.provider,
        partial=req.partial,
        attempt=req.attempt,
    )


def committed_into(out: budget_pb2.CommitBudgetResponse, done: Committed) -> None:
    out.delta_tokens = done.delta_tokens
    out.delta_cost_usd_nanos = done.delta_cost_usd_nanos
    reservation_into(out.reservation, done.reservation)


def reserve_from_proto(req: budget_pb2.ReserveBudgetRequest) -> ReserveCommand:
    return ReserveCommand(
        tenant=req.tenant_id,
        model=req.model,
        input_tokens=req.input_tokens,
        max_output_tokens=req.max_output_tokens,
        api_key_id=req.api_key_id,
        feature=req.feature,
        conversation_id=req.conversation_id,
        priority=_enum(PRIORITY_FROM_PROTO, req.priority, "priority"),
        min_output_tokens=req.min_output_tokens,
        provider=req.provider,
        request_id=req.request_id,
        ttl_s=req.ttl_seconds,
        admitted_while_unavailable=req.admitted_while_unavailable,
    )


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    """tollway.budget.v1.BudgetService over a :class:`Budget`."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    @rpc_errors(DOMAIN)
    async def ReserveBudget(
        self, request: budget_pb2.ReserveBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.ReserveBudgetResponse:
        granted = await self.budget.reserve(reserve_from_proto(request))
        resp = budget_pb2.ReserveBudgetResponse(unavailable_policy=UNAVAILABLE_TO_PROTO[granted.when_unavailable])
        reservation_into(resp.reservation, granted.reservation)
        for unit, field in (
            (Unit.TOKENS, resp.tightest_tokens),
            (Unit.REQUESTS, resp.tightest_requests),
            (Unit.USD_NANOS, resp.tightest_usd),
        ):
            if unit in granted.tightest:
                status_into(field, granted.tightest[unit])
        return resp

    @rpc_errors(DOMAIN)
    async def CommitBudget(
        self, request: budget_pb2.CommitBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.CommitBudgetResponse:
        resp = budget_pb2.CommitBudgetResponse()
        committed_into(resp, await self.budget.commit(commit_from_proto(request)))
        return resp

    @rpc_errors(DOMAIN)
    async def BatchCommitBudget(
        self, request: budget_pb2.BatchCommitBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.BatchCommitBudgetResponse:
        count = len(request.requests)
        if not 1 <= count <= MAX_BATCH_COMMITS:
            raise InvalidArgument(
                f"requests holds {count} commits; send between 1 and {MAX_BATCH_COMMITS}",
                [("requests", f"between 1 and {MAX_BATCH_COMMITS} commits")],
            )
        # Together, so the store batches their scripts as it batches concurrent commits.
        outcomes = await asyncio.gather(
            *(self.budget.commit(commit_from_proto(r)) for r in request.requests), return_exceptions=True
        )
        out = budget_pb2.BatchCommitBudgetResponse()
        for i, outcome in enumerate(outcomes):
            result = out.results.add()
            if isinstance(outcome, Committed):
                committed_into(result.response, outcome)
                continue
            if not isinstance(outcome, Exception):  # cancelled: the call is going away
                raise outcome
            err = as_tollway_error(outcome, "budget.BatchCommitBudget")
            # Counted as a failed RPC is: the error-rate alert sees commits whether or not they came batched.
            mesh_metrics.RPC_ERRORS.labels("budget", "BatchCommitBudget", err.code.name).inc()
            if isinstance(err, InvalidArgument):
                err.violations = [(f"requests[{i}].{field}", why) for field, why in err.violations]
            result.error.CopyFrom(status_proto(err, DOMAIN))
        return out

    @rpc_errors(DOMAIN)
    async def ReleaseBudget(
        self, request: budget_pb2.ReleaseBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.ReleaseBudgetResponse:
        reservation = await self.budget.release(request.name, request.reason, request.attempt)
        resp = budget_pb2.ReleaseBudgetResponse()
        reservation_into(resp.reservation, reservation)
        return resp

    @rpc_errors(DOMAIN)
    async def RecordSavedCost(
        self, request: budget_pb2.RecordSavedCostRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.RecordSavedCostResponse:
        saved = await self.budget.record_saved(
            SavedCommand(
                tenant=request.tenant_id,
                model=request.model,
                request_id=request.request_id,
                input_tokens=request.input_tokens,
                output_tokens=request.output_tokens,
                api_key_id=request.api_key_id,
                feature=request.feature,
                cache_tier=request.cache_tier,
            )
        )
        return budget_pb2.RecordSavedCostResponse(
            saved_cost_usd_nanos=saved.cost_usd_nanos, pricing_version=saved.pricing_version, recorded=saved.recorded
        )

    @rpc_errors(DOMAIN)
    async def GetUsage(
        self, request: budget_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.GetUsageResponse:
        rows, token = await self.budget.usage(
            request.tenant_id,
            _enum(GROUP_FROM_PROTO, request.group_by, "group_by"),
            request.start_date,
            request.end_date,
            request.page_size,
            request.page_token,
        )
        return budget_pb2.GetUsageResponse(rows=[usage_row_to_proto(r) for r in rows], next_page_token=token)

    @rpc_errors(DOMAIN)
    async def GetBudget(
        self, request: budget_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.GetBudgetResponse:
        policy, states = await self.budget.get_budget(request.tenant_id)
        return budget_pb2.GetBudgetResponse(
            budget=budget_to_proto(policy, self.budget.plans.version, self.budget.prices.version),
            statuses=[status_to_proto(s) for s in states],
        )

    @rpc_errors(DOMAIN)
    async def SetBudget(
        self, request: budget_pb2.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.SetBudgetResponse:
        policy = await self.budget.set_budget(
            request.tenant_id,
            plan=request.plan,
            quotas=[quota_from_proto(q, f"quotas[{i}]") for i, q in enumerate(request.quotas)],
            max_tokens_per_request=request.max_tokens_per_request
            if request.HasField("max_tokens_per_request")
            else None,
            clear=request.clear_overrides,
        )
        return budget_pb2.SetBudgetResponse(
            budget=budget_to_proto(policy, self.budget.plans.version, self.budget.prices.version)
        )

    @rpc_errors(DOMAIN)
    async def ReconcileBudget(
        self, request: budget_pb2.ReconcileBudgetRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.ReconcileBudgetResponse:
        result = await self.budget.reconcile(request.tenant_id)
        return budget_pb2.ReconcileBudgetResponse(
            balanced=result.balanced,
            tenant_count=result.tenant_count,
            counter_count=result.counter_count,
            ledger_entry_count=result.ledger_entry_count,
            open_reservation_count=result.open_reservation_count,
            differences=[
                budget_pb2.CounterDifference(
                    tenant_id=d.tenant, counter=d.counter, counter_value=d.counter_value, ledger_sum=d.ledger_sum
                )
                for d in result.differences
            ],
        )
