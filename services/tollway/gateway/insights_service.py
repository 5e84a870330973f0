"""gRPC <-> domain translation for tollway.gateway.v1.InsightsService. No rules live here."""

from __future__ import annotations

import grpc

from tollway.gateway.auth import KeyRing
from tollway.gateway.insights import Dimension, Insights, UsageRow, Viewer
from tollway.gateway.insights_peers import OverviewPeers
from tollway.gateway.v1 import insights_pb2, insights_pb2_grpc
from tollway.mesh.errors import rpc_errors

DOMAIN = "gateway.tollway"
GROUP_FROM_PROTO: dict[int, str] = {
    insights_pb2.USAGE_GROUP_UNSPECIFIED: Dimension.TENANT.value,
    insights_pb2.USAGE_GROUP_TENANT: Dimension.TENANT.value,
    insights_pb2.USAGE_GROUP_FEATURE: Dimension.FEATURE.value,
    insights_pb2.USAGE_GROUP_USER: Dimension.USER.value,
    insights_pb2.USAGE_GROUP_MODEL: Dimension.MODEL.value,
    insights_pb2.USAGE_GROUP_DAY: Dimension.DAY.value,
    insights_pb2.USAGE_GROUP_PROMPT_VERSION: Dimension.PROMPT.value,
    insights_pb2.USAGE_GROUP_CACHE_TIER: Dimension.TIER.value,
    insights_pb2.USAGE_GROUP_CACHE_NAMESPACE: Dimension.NAMESPACE.value,
}


def usage_row_to_proto(row: UsageRow) -> insights_pb2.UsageRow:
    return insights_pb2.UsageRow(
        group=row.group,
        request_count=row.requests,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cached_input_tokens=row.cached_tokens,
        cost_usd_micros=row.cost_usd_micros,
        mean_latency_ms=row.mean_latency_ms,
        mean_ttft_ms=row.mean_ttft_ms,
        error_count=row.errors,
        cache_hit_count=row.cache_hits,
        feedback_count=row.feedback_count,
        mean_feedback_score=row.mean_feedback or 0.0,
        agreement_sample_count=row.agreement_samples,
        mean_agreement=row.mean_agreement or 0.0,
    )


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    def __init__(self, keys: KeyRing, insights: Insights, peers: OverviewPeers | None = None) -> None:
        self.keys = keys
        self.insights = insights
        self.peers = peers or OverviewPeers()

    async def _viewer(self, context: grpc.aio.ServicerContext) -> Viewer:
        tenant = await self.keys.authenticate(context.invocation_metadata() or ())
        return self.insights.viewer(tenant.name)

    @rpc_errors(DOMAIN)
    async def GetUsage(
        self, request: insights_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> insights_pb2.GetUsageResponse:
        viewer = await self._viewer(context)
        # An unknown enum number stays unknown, for the domain to name.
        by = GROUP_FROM_PROTO.get(request.group_by, str(request.group_by))
        rows, days = await self.insights.usage(viewer, by, request.since, request.tenant_id)
        return insights_pb2.GetUsageResponse(rows=[usage_row_to_proto(r) for r in rows], days=days)

    @rpc_errors(DOMAIN)
    async def ListCalls(
        self, request: insights_pb2.ListCallsRequest, context: grpc.aio.ServicerContext
    ) -> insights_pb2.ListCallsResponse:
        viewer = await self._viewer(context)
        calls, token = await self.insights.calls(viewer, request.tenant_id, request.page_size, request.page_token)
        out = insights_pb2.ListCallsResponse(next_page_token=token)
        for call in calls:
            record = out.calls.add(fields=call.fields, raw_state=call.raw_state)
            if call.feedback_score is not None:
                record.feedback_score = call.feedback_score
        return out

    @rpc_errors(DOMAIN)
    async def GetCall(
        self, request: insights_pb2.GetCallRequest, context: grpc.aio.ServicerContext
    ) -> insights_pb2.GetCallResponse:
        viewer = await self._viewer(context)
        call, raw = await self.insights.call(viewer, request.request_id)
        out = insights_pb2.GetCallResponse(call=insights_pb2.CallRecord(fields=call.fields, raw_state=call.raw_state))
        if call.feedback_score is not None:
            out.call.feedback_score = call.feedback_score
        if raw is not None:
            out.raw_prompt, out.raw_response = raw.get("prompt", ""), raw.get("response", "")
        return out

    @rpc_errors(DOMAIN)
    async def RecordFeedback(
        self, request: insights_pb2.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> insights_pb2.RecordFeedbackResponse:
        viewer = await self._viewer(context)
        replaced = await self.insights.feedback(viewer, request.request_id, request.score, request.comment)
        return insights_pb2.RecordFeedbackResponse(replaced=replaced)

    @rpc_errors(DOMAIN)
    async def ListDriftSignals(
        self, request: insights_pb2.ListDriftSignalsRequest, context: grpc.aio.ServicerContext
    ) -> insights_pb2.ListDriftSignalsResponse:
        viewer = await self._viewer(context)
        signals = await self.insights.drift(viewer, request.tenant_id)
        return insights_pb2.ListDriftSignalsResponse(
            signals=[
                insights_pb2.DriftSignal(
                    dimension=s.dimension.value,
                    value=s.value,
                    baseline_score=s.baseline,
                    recent_score=s.recent,
                    baseline_count=s.baseline_count,
                    recent_count=s.recent_count,
                    signal=s.signal,
                )
                for s in signals
            ]
        )

    @rpc_errors(DOMAIN)
    async def GetOverview(
        self, request: insights_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext
    ) -> insights_pb2.GetOverviewResponse:
        viewer = await self._viewer(context)
        tenants, with_cache = await self.insights.overview_scope(viewer, request.tenant_id)
        return await self.peers.overview(tenants, with_cache)
