"""The gateway's view of the prompts service: a ``prompt_ref`` becomes messages, parameters and
the exact version used.

One call per request, ``ResolvePrompt``: read-only, so the channel may retry it on UNAVAILABLE
(open it with ``tollway.mesh.clients.channel(addr, idempotent_services=[SERVICE_NAME])``). The
version it returns is a number, never a label, so it can go into the cache key, the call
record, the ``Started`` event and the response headers: a new version never serves an older
version's cached answers, and cost, latency and quality compare per version.

Refusals come back as the typed errors of :mod:`tollway.mesh.errors` with the violations'
fields renamed to the caller's (``prompt_ref.variables.ticket``), ready for the gateway's own
error path: NOT_FOUND (template, label or version), INVALID_ARGUMENT (variables, unsafe
template, limits), UNAVAILABLE naming the prompts service.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2

from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat
from tollway.mesh import propagation, tracing
from tollway.mesh.errors import InvalidArgument, TollwayError, Unavailable, from_rpc_error
from tollway.mesh.frozen import frozen
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc

SERVICE_NAME = "tollway.prompts.v1.PromptsService"
FIELD = "prompt_ref"
_RESOLUTIONS = {
    prompts_pb2.RESOLUTION_VERSION: "version",
    prompts_pb2.RESOLUTION_TENANT_PIN: "tenant_pin",
    prompts_pb2.RESOLUTION_VARIANT: "variant",
    prompts_pb2.RESOLUTION_LABEL: "label",
}


@frozen
class PromptRef:
    """What a request names: a template, a label or a version (neither: ``production``), and
    the variables (plain JSON values)."""

    template: str
    label: str = ""
    version: int = 0
    variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@frozen
class ResolvedPrompt:
    """A resolved ``prompt_ref``.

    Attributes:
        template: The template id.
        version: The exact version chosen (never a label).
        resolution: Why: ``version``, ``tenant_pin``, ``variant`` or ``label``.
        label: The label followed ("" when the request named a version).
        variant_index: With ``variant``: the arm's index in the label's split.
        messages: The rendered messages; the last message of the cacheable prefix carries
            ``cache_breakpoint`` so providers with explicit prompt caching cache up to it.
        cacheable_prefix_count: How many leading messages are the same for every request.
        content_hash: The version's content hash.
        input_tokens: Tokens of the rendered messages (the gateway's tokenizer).
        model: The version's model ("" = the request's).
        tier: The version's router tier ("" = any).
        temperature: The version's default, or None.
        max_tokens: The version's default (0 = none).
        top_p: The version's default, or None.
        stop: The version's stop sequences.
        response_format: The version's response format, or None for the request's.
    """

    template: str
    version: int
    resolution: str
    label: str
    variant_index: int
    messages: tuple[ChatMessage, ...]
    cacheable_prefix_count: int
    content_hash: str
    input_tokens: int
    model: str = ""
    tier: str = ""
    temperature: float | None = None
    max_tokens: int = 0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    response_format: ResponseFormat | None = None

    @property
    def version_ref(self) -> str:
        """``<template>@<version>``: the string for logs and the call record's prompt field."""
        return f"{self.template}@{self.version}"

    def apply(self, request: ChatRequest) -> ChatRequest:
        """The request with the prompt in front of its own messages and the version's
        parameters where the request left them unset (the request's own values win)."""
        return dataclasses.replace(
            request,
            model=request.model or self.model,
            messages=self.messages + tuple(request.messages),
            temperature=request.temperature if request.temperature is not None else self.temperature,
            max_tokens=request.max_tokens or self.max_tokens,
            top_p=request.top_p if request.top_p is not None else self.top_p,
            stop=request.stop or self.stop,
            response_format=(
                request.response_format
                if request.response_format.type != "text" or self.response_format is None
                else self.response_format
            ),
        )

    def headers(self) -> dict[str, str]:
        """Response headers naming the version (Envoy passes ``x-tollway-*`` through)."""
        return {
            "x-tollway-prompt-template": self.template,
            "x-tollway-prompt-version": str(self.version),
            "x-tollway-prompt-resolution": self.resolution,
        }


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(values))
    return s


def _response_format(p: prompts_pb2.ModelParameters) -> ResponseFormat | None:
    if p.response_format in ("", "text"):
        return None
    if p.response_format == "json_schema":
        return ResponseFormat(type="json_schema", schema=json.loads(p.response_schema_json))
    return ResponseFormat(type="json_object")


def resolved_from_proto(resp: prompts_pb2.ResolvePromptResponse) -> ResolvedPrompt:
    """The domain value of a ResolvePromptResponse."""
    prefix = resp.cacheable_prefix_message_count
    messages = tuple(
        ChatMessage(m.role, m.content, cache_breakpoint=(i == prefix - 1)) for i, m in enumerate(resp.messages)
    )
    p = resp.parameters
    return ResolvedPrompt(
        template=resp.template_id,
        version=resp.version,
        resolution=_RESOLUTIONS.get(resp.resolution, "label"),
        label=resp.label,
        variant_index=resp.variant_index,
        messages=messages,
        cacheable_prefix_count=prefix,
        content_hash=resp.content_hash,
        input_tokens=resp.input_token_count,
        model=p.model,
        tier=p.tier,
        temperature=p.temperature if p.HasField("temperature") else None,
        max_tokens=p.max_tokens,
        top_p=p.top_p if p.HasField("top_p") else None,
        stop=tuple(p.stop),
        response_format=_response_format(p),
    )


# ResolvePromptRequest fields that PromptRef names differently.
_CALLERS_NAMES = {"template_id": "template"}


def _as_callers(err: TollwayError) -> TollwayError:
    # The prompts service names its own fields (`variables.ticket`, `label`); the gateway's
    # caller sent them inside `prompt_ref`.
    if isinstance(err, InvalidArgument):
        violations = [(f"{FIELD}.{_CALLERS_NAMES.get(field, field)}", why) for field, why in err.violations]
        return InvalidArgument(err.message, violations, reason=err.reason, metadata=err.metadata)
    return err


class PromptsClient:
    """Resolves ``prompt_ref`` through the prompts service.

    Args:
        channel: A channel to the prompts service (or Envoy's mesh listener).
        timeout_s: Deadline of one ResolvePrompt.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 2.0) -> None:
        self._stub = prompts_pb2_grpc.PromptsServiceStub(channel)
        self._timeout_s = timeout_s

    async def resolve(self, ref: PromptRef, *, tenant: str, user: str = "") -> ResolvedPrompt:
        """Chooses the version for this caller and renders it.

        Args:
            ref: The request's prompt_ref.
            tenant: The authenticated tenant (pins; the variant when no user is given).
            user: The end user, if the request names one (the variant: sticky per user).

        Raises:
            InvalidArgument: Bad variables or ref (fields as ``prompt_ref.*``), unsafe template.
            NotFound: Unknown template, label or version.
            Unavailable: The prompts service cannot be reached (reason PROMPTS_UNAVAILABLE).
        """
        if ref.label and ref.version:
            raise InvalidArgument(
                "prompt_ref names both a label and a version; name one",
                [(f"{FIELD}.version", "set together with label")],
            )
        req = prompts_pb2.ResolvePromptRequest(
            template_id=ref.template, variables=_struct(ref.variables), tenant_id=tenant, user_id=user
        )
        if ref.version:
            req.version = ref.version
        elif ref.label:
            req.label = ref.label
        try:
            with tracing.stage("gateway", "prompt", **{"tollway.prompt.template": ref.template}):
                resp = await self._stub.ResolvePrompt(req, timeout=self._timeout_s, metadata=propagation.outgoing())
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"the prompts service did not answer ({err.code().name}); the prompt could not be resolved",
                    retry_after_s=1.0,
                    reason="PROMPTS_UNAVAILABLE",
                    metadata={"dependency": "prompts"},
                ) from None
            raise _as_callers(from_rpc_error(err)) from None
        return resolved_from_proto(resp)
