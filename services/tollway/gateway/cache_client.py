"""The gateway's view of the cache and embedding services: domain values in and out.

Both are helpers, never gatekeepers: when either is slow or down, the request goes on
to the model (a warning is logged and a metric counted) instead of failing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import grpc

from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.common import codec
from tollway.common.caching import CacheMode, CacheTier
from tollway.common.chat import ChatRequest, FinishReason, Usage
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.gateway import metrics
from tollway.gateway.request import GatewayRequest
from tollway.mesh import propagation, tracing
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.gateway.cache")

# Misses after which a semantic lookup can still find something.
_SEMANTIC_WORTHWHILE = {cache_pb2.MISS_REASON_NOT_FOUND, cache_pb2.MISS_REASON_EXPIRED}


@frozen
class CacheHit:
    """A cached answer and how it was found."""

    tier: CacheTier  # EXACT, SEMANTIC or STALE
    text: str
    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage
    entry_id: str
    similarity: float
    sample_for_quality: bool


@frozen
class CacheRequest:
    """Who asks, where, and how.

    ``prompt_template`` and ``prompt_version`` name the stored prompt the messages were
    rendered from ("" for none). The version is the resolved number as text, never a
    label: a new version never serves an older one's answers, and moving a label changes
    which answers can be served.
    """

    chat: ChatRequest
    namespace: str
    tenant: str
    user: str
    mode: CacheMode
    prompt_template: str = ""
    prompt_version: str = ""

    @classmethod
    def of(cls, request: GatewayRequest) -> CacheRequest:
        """The cache's view of a gateway request (after its prompt_ref was resolved)."""
        prompt = request.prompt
        if prompt is None:
            return cls(request.chat, request.cache.namespace, request.chat.tenant, request.user, request.cache.mode)
        return cls(
            request.chat,
            request.cache.namespace,
            request.chat.tenant,
            request.user,
            request.cache.mode,
            prompt.template,
            str(prompt.version),
        )

    def fingerprint(self) -> cache_pb2.RequestFingerprint:
        """The canonical request the cache keys the answer by."""
        return codec.fingerprint_to_proto(
            self.chat, prompt_template=self.prompt_template, prompt_version=self.prompt_version
        )


def cacheable(chat: ChatRequest) -> bool:
    """Whether the cache may answer or keep ``chat``.

    Not with tools, a JSON answer format or tool turns: the cache's fingerprint has no
    field for them (two requests differing only there would share a key), and a stored
    answer is text with no tool calls. Such requests bypass the cache rather than risk
    serving the wrong shape. A prompt-cache breakpoint changes no answer and does not count.
    """
    if chat.tools or chat.response_format.wants_json:
        return False
    return not any(m.tool_calls or m.tool_call_id for m in chat.messages)


@dataclasses.dataclass
class Lookup:
    """What one lookup learnt: a hit, or the vector to store the answer under later."""

    hit: CacheHit | None = None
    vector: list[float] | None = None
    semantic_possible: bool = False


def lookup_request(
    req: CacheRequest,
    vector: list[float] | None,
    embedding_model: str,
    *,
    allow_stale: bool = False,
    semantic_only: bool = False,
) -> cache_pb2.LookupRequest:
    """The LookupRequest for ``req`` (with ``vector`` for tier 2, made by ``embedding_model``).

    The fingerprint's max_tokens is the effective value the gateway filled in, so a change of
    the default never serves an answer cut at another length.
    """
    return cache_pb2.LookupRequest(
        namespace=req.namespace,
        tenant_id=req.tenant,
        user_id=req.user,
        fingerprint=req.fingerprint(),
        embedding=vector or (),
        embedding_model=embedding_model if vector else "",
        mode=codec.cache_mode_to_proto(req.mode),
        allow_stale=allow_stale,
        semantic_only=semantic_only,
    )


def _hit(reply: cache_pb2.LookupResponse) -> CacheHit | None:
    tier = codec.cache_tier_from_proto(reply.tier)
    if not tier.is_hit:
        return None
    a = reply.answer
    return CacheHit(
        tier=tier,
        text=a.text,
        model=a.model,
        provider=a.provider,
        finish_reason=codec.finish_reason_from_proto(a.finish_reason, "stop"),
        usage=codec.usage_from_proto(a.usage),
        entry_id=a.entry_id,
        similarity=reply.similarity,
        sample_for_quality=reply.sample_for_quality,
    )


class CacheClient:
    """Tier 1, the embedding, tier 2, stores and quality samples, over gRPC."""

    def __init__(
        self,
        cache_channel: grpc.aio.Channel,
        embedding_channel: grpc.aio.Channel | None,
        *,
        embedding_model: str = "",
        lookup_timeout_s: float = 0.5,
        embed_timeout_s: float = 2.0,
    ) -> None:
        self.cache = cache_pb2_grpc.CacheServiceStub(cache_channel)
        self.embedder = embedding_pb2_grpc.EmbeddingServiceStub(embedding_channel) if embedding_channel else None
        self.embedding_model = embedding_model
        self.lookup_timeout_s = lookup_timeout_s
        self.embed_timeout_s = embed_timeout_s

    async def _lookup(
        self, req: CacheRequest, vector: list[float] | None, allow_stale: bool, semantic_only: bool = False
    ) -> cache_pb2.LookupResponse:
        return await self.cache.Lookup(
            lookup_request(req, vector, self.embedding_model, allow_stale=allow_stale, semantic_only=semantic_only),
            timeout=self.lookup_timeout_s,
            metadata=propagation.outgoing(),
        )

    async def embed(self, text: str) -> list[float] | None:
        """The embedding of ``text``, or None when the embedding service cannot answer."""
        if self.embedder is None or not text:
            return None
        try:
            with tracing.stage("gateway", "embed"):
                reply = await self.embedder.Embed(
                    embedding_pb2.EmbedRequest(texts=[text], model=self.embedding_model),
                    timeout=self.embed_timeout_s,
                    metadata=propagation.outgoing(),
                )
        except grpc.aio.AioRpcError as exc:
            metrics.CACHE_ERRORS.labels("embed").inc()
            log.warning("embedding failed; going on without the semantic tier", extra={"code": exc.code().name})
            return None
        if not self.embedding_model:
            self.embedding_model = reply.model
        return list(reply.embeddings[0].values)

    async def lookup(self, req: CacheRequest, vector: list[float] | None = None) -> Lookup:
        """Tier 1; on a miss that tier 2 could answer, embeds the last message and tries tier 2.

        ``vector`` is the last message's embedding when the caller already made it (for
        retrieval), so the query is embedded once per request.

        The exact tier goes first and alone: an exact hit then costs one Redis read, not an
        embedding as well.
        """
        try:
            with tracing.stage("gateway", "cache.tier1") as span:
                reply = await self._lookup(req, None, False)
                hit = _hit(reply)
                tracing.annotate(span, {"tollway.cache.tier": hit.tier.value if hit else "miss"})
        except grpc.aio.AioRpcError as exc:
            return self._failed("lookup", exc)
        if hit is None and reply.miss_reason == cache_pb2.MISS_REASON_REFRESH:
            # Nothing to look up, but the fresh answer is stored with its vector, so tier 2 finds it.
            return Lookup(vector=vector or await self.embed(req.chat.messages[-1].content))
        if hit is not None or reply.miss_reason not in _SEMANTIC_WORTHWHILE:
            return Lookup(hit=hit)
        vector = vector or await self.embed(req.chat.messages[-1].content)
        if vector is None:
            return Lookup()
        try:
            with tracing.stage("gateway", "cache.tier2") as span:
                reply = await self._lookup(req, vector, False, semantic_only=True)
                hit = _hit(reply)
                tracing.annotate(span, {"tollway.cache.tier": hit.tier.value if hit else "miss"})
        except grpc.aio.AioRpcError as exc:
            failed = self._failed("lookup", exc)
            failed.vector = vector
            return failed
        return Lookup(hit=hit, vector=vector, semantic_possible=True)

    async def lookup_stale(self, req: CacheRequest, vector: list[float] | None) -> CacheHit | None:
        """The closest answer still inside its stale grace period, for when every provider failed."""
        try:
            reply = await self._lookup(req, vector, True)
        except grpc.aio.AioRpcError as exc:
            self._failed("lookup_stale", exc)
            return None
        return _hit(reply)

    async def store(
        self,
        req: CacheRequest,
        vector: list[float] | None,
        text: str,
        usage: Usage,
        model: str,
        provider: str,
        finish_reason: FinishReason,
        document_ids: Sequence[str] = (),
    ) -> None:
        """Stores a complete answer (the caller never stores a partial or failed one).

        ``document_ids`` names the documents a grounded answer used
        (``collections/{c}/documents/{d}``); the retrieval service removes the entry when one changes.
        """
        try:
            await self.cache.Store(
                cache_pb2.StoreRequest(
                    namespace=req.namespace,
                    tenant_id=req.tenant,
                    user_id=req.user,
                    fingerprint=req.fingerprint(),
                    embedding=vector or (),
                    embedding_model=self.embedding_model if vector else "",
                    mode=codec.cache_mode_to_proto(req.mode),
                    text=text,
                    usage=codec.usage_to_proto(usage),
                    model=model,
                    provider=provider,
                    finish_reason=codec.finish_reason_to_proto(finish_reason),
                    document_ids=document_ids,
                ),
                timeout=self.lookup_timeout_s * 4,
            )
        except grpc.aio.AioRpcError as exc:
            self._failed("store", exc)

    async def record_quality(self, namespace: str, hit: CacheHit, fresh_text: str) -> float | None:
        """Reports how far a semantic hit was from a fresh answer to the same request; returns
        the cache's token F1 between the two (None when the cache did not answer)."""
        cached_vec, fresh_vec = await self.embed(hit.text), await self.embed(fresh_text)
        request = cache_pb2.RecordQualitySampleRequest(
            namespace=namespace, cached_text=hit.text, fresh_text=fresh_text, entry_id=hit.entry_id
        )
        if cached_vec is not None and fresh_vec is not None:
            request.cached_embedding.extend(cached_vec)
            request.fresh_embedding.extend(fresh_vec)
        try:
            reply = await self.cache.RecordQualitySample(request, timeout=self.lookup_timeout_s * 4)
        except grpc.aio.AioRpcError as exc:
            self._failed("quality", exc)
            return None
        return reply.token_f1

    @staticmethod
    def _failed(what: str, exc: grpc.aio.AioRpcError) -> Lookup:
        metrics.CACHE_ERRORS.labels(what).inc()
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            # A request the cache refuses (unknown namespace...) is the caller's to fix: say so loudly.
            log.error("cache refused the request", extra={"op": what, "detail": exc.details()})
        else:
            log.warning("cache unavailable; going on without it", extra={"op": what, "code": exc.code().name})
        return Lookup()
