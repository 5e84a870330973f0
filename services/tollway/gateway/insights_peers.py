"""The other services' state the console shows beside usage, asked for at once (GetOverview).

gRPC lives here, as in the other *_client modules: each peer is asked in parallel with a short
deadline, and one that does not answer is named in ``unavailable`` rather than failing the call
(an overview is worth having with a part missing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc

from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.gateway.v1 import insights_pb2
from tollway.mesh import clients
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc
from tollway.router.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger("tollway.gateway.insights")
TIMEOUT_S = 1.0


class OverviewPeers:
    """Stubs of the services the overview reads; a service not configured is simply skipped."""

    def __init__(self) -> None:
        self.budget: budget_pb2_grpc.BudgetServiceStub | None = None
        self.router: router_pb2_grpc.RouterServiceStub | None = None
        self.prompts: prompts_pb2_grpc.PromptsServiceStub | None = None
        self.cache: cache_pb2_grpc.CacheServiceStub | None = None

    def connect(
        self, *, router: str, cache: str, budget: str, prompts: str, **channel_args: object
    ) -> list[grpc.aio.Channel]:
        """Makes a read-only channel per configured address; returns them for the caller to close."""
        made: list[grpc.aio.Channel] = []

        def channel(address: str, service: str) -> grpc.aio.Channel:
            ch = clients.channel(address, idempotent_services=[service], **channel_args)  # type: ignore[arg-type]
            made.append(ch)
            return ch

        if router:
            self.router = router_pb2_grpc.RouterServiceStub(channel(router, "tollway.router.v1.RouterService"))
        if cache:
            self.cache = cache_pb2_grpc.CacheServiceStub(channel(cache, "tollway.cache.v1.CacheService"))
        if budget:
            self.budget = budget_pb2_grpc.BudgetServiceStub(channel(budget, "tollway.budget.v1.BudgetService"))
        if prompts:
            self.prompts = prompts_pb2_grpc.PromptsServiceStub(channel(prompts, "tollway.prompts.v1.PromptsService"))
        return made

    async def overview(self, tenants: Sequence[str], with_cache: bool) -> insights_pb2.GetOverviewResponse:
        """Budgets of ``tenants``, breakers, prompt labels and (``with_cache``) namespace quality."""
        out = insights_pb2.GetOverviewResponse()
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.budget is not None and tenants:
            parts.append(("budget", lambda: self._budgets(out, tenants)))
        if self.router is not None:
            parts.append(("router", lambda: self._breakers(out)))
        if self.prompts is not None:
            parts.append(("prompts", lambda: self._prompts(out)))
        if self.cache is not None and with_cache:
            parts.append(("cache", lambda: self._cache(out)))
        results = await asyncio.gather(*(work() for _, work in parts), return_exceptions=True)
        for (name, _), result in zip(parts, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                log.warning("overview: %s did not answer: %s", name, result.code().name)
                out.unavailable.append(name)
            elif isinstance(result, BaseException):
                raise result
        return out

    async def _budgets(self, out: insights_pb2.GetOverviewResponse, tenants: Sequence[str]) -> None:
        assert self.budget is not None
        replies = await asyncio.gather(
            *(self.budget.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=t), timeout=TIMEOUT_S) for t in tenants)
        )
        for tenant, reply in zip(tenants, replies, strict=True):
            for status in reply.statuses:
                if status.quota.scope != budget_pb2.QUOTA_SCOPE_TENANT:
                    continue
                out.budgets.add(
                    tenant_id=tenant,
                    plan=reply.budget.plan,
                    window=_name(budget_pb2.Window, status.quota.window),
                    unit=_name(budget_pb2.QuotaUnit, status.quota.unit),
                    limit=status.quota.limit,
                    used=status.used,
                    remaining=status.remaining,
                )

    async def _breakers(self, out: insights_pb2.GetOverviewResponse) -> None:
        assert self.router is not None
        reply = await self.router.ListBreakers(router_pb2.ListBreakersRequest(), timeout=TIMEOUT_S)
        for b in reply.breakers:
            out.breakers.add(
                name=b.name,
                state=_name(router_pb2.BreakerState, b.state),
                consecutive_failures=b.consecutive_failures,
                last_error=b.last_error,
            )

    async def _prompts(self, out: insights_pb2.GetOverviewResponse) -> None:
        assert self.prompts is not None
        token = ""
        while True:
            reply = await self.prompts.ListTemplates(
                prompts_pb2.ListTemplatesRequest(page_size=100, page_token=token), timeout=TIMEOUT_S
            )
            for t in reply.templates:
                # Tenant pins stay out: they name tenants.
                out.prompts.add(
                    template=t.template_id or t.name,
                    latest_version=t.latest_version,
                    labels={label.label: label.version for label in t.labels},
                )
            token = reply.next_page_token
            if not token:
                return

    async def _cache(self, out: insights_pb2.GetOverviewResponse) -> None:
        assert self.cache is not None
        reply = await self.cache.GetStats(cache_pb2.GetStatsRequest(), timeout=TIMEOUT_S)
        for n in reply.namespaces:
            out.namespaces.add(
                namespace=n.namespace,
                exact_hit_count=n.exact_hit_count,
                semantic_hit_count=n.semantic_hit_count,
                # A semantic miss follows an exact miss: it is the lookup that found nothing.
                miss_count=n.semantic_miss_count,
                quality_sample_count=n.quality_sample_count,
                agreement_token_f1=n.quality_token_f1_mean,
                agreement_cosine=n.quality_embedding_cosine_mean,
            )


def _name(enum: object, value: int) -> str:
    try:
        return enum.Name(value)  # type: ignore[attr-defined,no-any-return]
    except ValueError:
        return str(value)

