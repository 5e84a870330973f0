"""gRPC <-> domain translation for tollway.prompts.v1. No prompt logic lives here."""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from tollway.mesh.errors import InvalidArgument, rpc_errors
from tollway.prompts.prompts import Prompts
from tollway.prompts.types import (
    ChangeKind,
    Content,
    Label,
    LabelChange,
    MessageTemplate,
    ModelDefaults,
    Rendered,
    Resolution,
    Template,
    Variant,
    Version,
)
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc

DOMAIN = "prompts.tollway"
SERVICE_NAME = "tollway.prompts.v1.PromptsService"

RESOLUTION_TO_PROTO = {
    Resolution.VERSION: prompts_pb2.RESOLUTION_VERSION,
    Resolution.TENANT_PIN: prompts_pb2.RESOLUTION_TENANT_PIN,
    Resolution.VARIANT: prompts_pb2.RESOLUTION_VARIANT,
    Resolution.LABEL: prompts_pb2.RESOLUTION_LABEL,
}
KIND_TO_PROTO = {
    ChangeKind.SET: prompts_pb2.LABEL_CHANGE_KIND_SET,
    ChangeKind.ROLLBACK: prompts_pb2.LABEL_CHANGE_KIND_ROLLBACK,
}


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _plain(value: Any) -> Any:
    # Struct numbers are doubles: 3 arrives as 3.0. JSON Schema's "integer" and the rendered
    # text ("3 items", not "3.0 items") both want the integer back.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values (integral numbers as ints)."""
    return _plain(json_format.MessageToDict(s))  # type: ignore[no-any-return]


def dict_to_struct(d: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def parameters_from_proto(p: prompts_pb2.ModelParameters) -> ModelDefaults:
    return ModelDefaults(
        model=p.model,
        tier=p.tier,
        temperature=p.temperature if p.HasField("temperature") else None,
        max_tokens=p.max_tokens,
        top_p=p.top_p if p.HasField("top_p") else None,
        stop=tuple(p.stop),
        response_format=p.response_format,
        response_schema_json=p.response_schema_json,
    )


def parameters_to_proto(p: ModelDefaults) -> prompts_pb2.ModelParameters:
    out = prompts_pb2.ModelParameters(
        model=p.model,
        tier=p.tier,
        max_tokens=p.max_tokens,
        stop=list(p.stop),
        response_format=p.response_format,
        response_schema_json=p.response_schema_json,
    )
    if p.temperature is not None:
        out.temperature = p.temperature
    if p.top_p is not None:
        out.top_p = p.top_p
    return out


def content_from_proto(c: prompts_pb2.PromptContent) -> Content:
    return Content(
        messages=tuple(MessageTemplate(m.role, m.content) for m in c.messages),
        schema_json=c.variables_schema_json,
        parameters=parameters_from_proto(c.parameters),
    )


def content_to_proto(c: Content) -> prompts_pb2.PromptContent:
    return prompts_pb2.PromptContent(
        messages=[prompts_pb2.MessageTemplate(role=m.role, content=m.content) for m in c.messages],
        variables_schema_json=c.schema_json,
        parameters=parameters_to_proto(c.parameters),
    )


def version_to_proto(v: Version) -> prompts_pb2.PromptVersion:
    return prompts_pb2.PromptVersion(
        name=f"templates/{v.template_id}/versions/{v.number}",
        template_id=v.template_id,
        version=v.number,
        content=content_to_proto(v.content),
        author=v.author,
        create_time=_timestamp(v.created_ms),
        change_note=v.change_note,
        content_hash=v.content_hash,
        token_count=v.token_count,
        token_encoding=v.token_encoding,
        static_prefix_message_count=v.static_prefix_count,
        evaluations={
            m: prompts_pb2.EvaluationSummary(score_count=n, mean_score=mean) for m, (n, mean) in v.evaluations.items()
        },
        example_variables=dict_to_struct(v.example_variables),
    )


def label_to_proto(lb: Label) -> prompts_pb2.Label:
    return prompts_pb2.Label(
        label=lb.name,
        version=lb.version,
        variants=[prompts_pb2.Variant(version=v.version, weight=v.weight) for v in lb.variants],
    )


def template_to_proto(t: Template) -> prompts_pb2.Template:
    return prompts_pb2.Template(
        name=f"templates/{t.template_id}",
        template_id=t.template_id,
        description=t.description,
        create_time=_timestamp(t.created_ms),
        latest_version=t.latest_version,
        labels=[label_to_proto(lb) for lb in t.labels],
        tenant_pins=[prompts_pb2.TenantPin(tenant_id=k, version=v) for k, v in t.pins.items()],
    )


def change_to_proto(c: LabelChange) -> prompts_pb2.LabelChange:
    return prompts_pb2.LabelChange(
        label=c.label,
        from_version=c.from_version,
        to_version=c.to_version,
        actor=c.actor,
        change_time=_timestamp(c.at_ms),
        kind=KIND_TO_PROTO[c.kind],
        reason=c.reason,
    )


def rendered_messages(r: Rendered) -> list[prompts_pb2.RenderedMessage]:
    return [prompts_pb2.RenderedMessage(role=role, content=text) for role, text in r.messages]


class PromptsServicer(prompts_pb2_grpc.PromptsServiceServicer):
    """tollway.prompts.v1.PromptsService over a :class:`Prompts`."""

    def __init__(self, prompts: Prompts) -> None:
        self.prompts = prompts

    @rpc_errors(DOMAIN)
    async def CreateTemplate(
        self, request: prompts_pb2.CreateTemplateRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.CreateTemplateResponse:
        template, created = await self.prompts.create_template(request.template_id, request.description, request.actor)
        return prompts_pb2.CreateTemplateResponse(template=template_to_proto(template), created=created)

    @rpc_errors(DOMAIN)
    async def GetTemplate(
        self, request: prompts_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.GetTemplateResponse:
        template = await self.prompts.get_template(request.template_id)
        return prompts_pb2.GetTemplateResponse(template=template_to_proto(template))

    @rpc_errors(DOMAIN)
    async def ListTemplates(
        self, request: prompts_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.ListTemplatesResponse:
        page = await self.prompts.list_templates(request.page_size, request.page_token)
        return prompts_pb2.ListTemplatesResponse(
            templates=[template_to_proto(t) for t in page.items], next_page_token=page.next_page_token
        )

    @rpc_errors(DOMAIN)
    async def PublishVersion(
        self, request: prompts_pb2.PublishVersionRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.PublishVersionResponse:
        if not request.HasField("content"):
            raise InvalidArgument("content is required", [("content", "required")])
        published = await self.prompts.publish(
            request.template_id,
            content_from_proto(request.content),
            request.author,
            request.change_note,
            struct_to_dict(request.example_variables) if request.HasField("example_variables") else None,
        )
        return prompts_pb2.PublishVersionResponse(
            version=version_to_proto(published.version), created=published.created, warnings=list(published.warnings)
        )

    @rpc_errors(DOMAIN)
    async def GetVersion(
        self, request: prompts_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.GetVersionResponse:
        version = await self.prompts.get_version(request.template_id, request.version)
        return prompts_pb2.GetVersionResponse(version=version_to_proto(version))

    @rpc_errors(DOMAIN)
    async def ListVersions(
        self, request: prompts_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.ListVersionsResponse:
        page = await self.prompts.list_versions(request.template_id, request.page_size, request.page_token)
        return prompts_pb2.ListVersionsResponse(
            versions=[version_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )

    @rpc_errors(DOMAIN)
    async def SetLabel(
        self, request: prompts_pb2.SetLabelRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.SetLabelResponse:
        label, change = await self.prompts.set_label(
            request.template_id,
            request.label,
            request.version,
            actor=request.actor,
            reason=request.reason,
            expected=request.expected_version if request.HasField("expected_version") else None,
        )
        resp = prompts_pb2.SetLabelResponse(label=label_to_proto(label))
        if change is not None:
            resp.change.CopyFrom(change_to_proto(change))
        return resp

    @rpc_errors(DOMAIN)
    async def RollbackLabel(
        self, request: prompts_pb2.RollbackLabelRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.RollbackLabelResponse:
        label, change = await self.prompts.rollback_label(
            request.template_id, request.label, actor=request.actor, reason=request.reason
        )
        return prompts_pb2.RollbackLabelResponse(label=label_to_proto(label), change=change_to_proto(change))

    @rpc_errors(DOMAIN)
    async def ListLabelHistory(
        self, request: prompts_pb2.ListLabelHistoryRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.ListLabelHistoryResponse:
        page = await self.prompts.label_history(
            request.template_id, request.label, request.page_size, request.page_token
        )
        return prompts_pb2.ListLabelHistoryResponse(
            changes=[change_to_proto(c) for c in page.items], next_page_token=page.next_page_token
        )

    @rpc_errors(DOMAIN)
    async def SetVariants(
        self, request: prompts_pb2.SetVariantsRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.SetVariantsResponse:
        label = await self.prompts.set_variants(
            request.template_id,
            request.label,
            [Variant(v.version, v.weight) for v in request.variants],
            request.actor,
        )
        return prompts_pb2.SetVariantsResponse(label=label_to_proto(label))

    @rpc_errors(DOMAIN)
    async def SetTenantPin(
        self, request: prompts_pb2.SetTenantPinRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.SetTenantPinResponse:
        await self.prompts.set_pin(request.template_id, request.tenant_id, request.version, request.actor)
        return prompts_pb2.SetTenantPinResponse(
            pin=prompts_pb2.TenantPin(tenant_id=request.tenant_id, version=request.version)
        )

    @rpc_errors(DOMAIN)
    async def DeleteTenantPin(
        self, request: prompts_pb2.DeleteTenantPinRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.DeleteTenantPinResponse:
        deleted = await self.prompts.delete_pin(request.template_id, request.tenant_id, request.actor)
        return prompts_pb2.DeleteTenantPinResponse(deleted=deleted)

    @rpc_errors(DOMAIN)
    async def ResolvePrompt(
        self, request: prompts_pb2.ResolvePromptRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.ResolvePromptResponse:
        which = request.WhichOneof("selector")
        resolved = await self.prompts.resolve(
            request.template_id,
            label=request.label if which == "label" else "",
            version=request.version if which == "version" else 0,
            variables=struct_to_dict(request.variables),
            tenant=request.tenant_id,
            user=request.user_id,
        )
        v = resolved.version
        return prompts_pb2.ResolvePromptResponse(
            template_id=v.template_id,
            version=v.number,
            resolution=RESOLUTION_TO_PROTO[resolved.resolution],
            label=resolved.label,
            messages=rendered_messages(resolved.rendered),
            cacheable_prefix_message_count=resolved.rendered.cacheable_prefix_count,
            parameters=parameters_to_proto(v.content.parameters),
            content_hash=v.content_hash,
            input_token_count=resolved.rendered.token_count,
            variant_index=resolved.variant_index,
        )

    @rpc_errors(DOMAIN)
    async def RenderPrompt(
        self, request: prompts_pb2.RenderPromptRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.RenderPromptResponse:
        rendered, digest, warnings = await self.prompts.render_draft(
            content_from_proto(request.content), struct_to_dict(request.variables)
        )
        return prompts_pb2.RenderPromptResponse(
            messages=rendered_messages(rendered),
            cacheable_prefix_message_count=rendered.cacheable_prefix_count,
            content_hash=digest,
            input_token_count=rendered.token_count,
            warnings=list(warnings),
        )

    @rpc_errors(DOMAIN)
    async def RecordEvaluation(
        self, request: prompts_pb2.RecordEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> prompts_pb2.RecordEvaluationResponse:
        count, mean, recorded = await self.prompts.record_evaluation(
            request.template_id, request.version, request.metric, request.score, request.request_id
        )
        return prompts_pb2.RecordEvaluationResponse(
            summary=prompts_pb2.EvaluationSummary(score_count=count, mean_score=mean), recorded=recorded
        )
