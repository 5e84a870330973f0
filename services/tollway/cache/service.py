"""gRPC <-> domain translation for tollway.cache.v1. No caching logic lives here."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from tollway.cache.cache import Cache
from tollway.cache.entries import (
    Answer,
    Entry,
    InvalidateTarget,
    LookupOutcome,
    LookupQuery,
    NamespaceStats,
    QualitySample,
    Requester,
    StoreCommand,
)
from tollway.cache.keys import Fingerprint
from tollway.cache.scope import Scope
from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.common import codec
from tollway.common.caching import CacheMode
from tollway.common.chat import ChatMessage, Usage
from tollway.mesh.errors import InvalidArgument, rpc_errors

DOMAIN = "cache.tollway"
SERVICE_NAME = "tollway.cache.v1.CacheService"


def fingerprint_from_proto(fp: cache_pb2.RequestFingerprint) -> Fingerprint:
    """The domain fingerprint; every proto field is carried over (a unit test checks)."""
    return Fingerprint(
        model=fp.model,
        messages=tuple(ChatMessage(role=m.role, content=m.content, name=m.name) for m in fp.messages),
        max_tokens=fp.max_tokens,
        temperature=fp.temperature if fp.HasField("temperature") else None,
        top_p=fp.top_p if fp.HasField("top_p") else None,
        stop=tuple(fp.stop),
        seed=fp.seed if fp.HasField("seed") else None,
        prompt_template=fp.prompt_template,
        prompt_version=fp.prompt_version,
    )


def _mode(value: int) -> CacheMode:
    mode = codec.cache_mode_from_proto(value)
    if mode is None:
        raise InvalidArgument(f"mode {value} is not a CacheMode", [("mode", "unknown value")])
    return mode


def _scope(value: int) -> Scope:
    try:
        return Scope(value)
    except ValueError:
        raise InvalidArgument(f"scope {value} is not a Scope", [("scope", "unknown value")]) from None


def _vector(values: Sequence[float]) -> np.ndarray | None:
    # np.asarray on a protobuf repeated field walks it as generic Python objects; fromiter with
    # a known count is several times faster, and an absent vector (tier 1 only) costs nothing.
    if not len(values):
        return None
    return np.fromiter(values, dtype=np.float32, count=len(values))


def lookup_from_proto(req: cache_pb2.LookupRequest) -> LookupQuery:
    return LookupQuery(
        requester=Requester(req.namespace, req.tenant_id, req.user_id, _scope(req.scope)),
        fingerprint=fingerprint_from_proto(req.fingerprint),
        embedding=_vector(req.embedding),
        embedding_model=req.embedding_model,
        mode=_mode(req.mode),
        allow_stale=req.allow_stale,
        semantic_only=req.semantic_only,
    )


def store_from_proto(req: cache_pb2.StoreRequest) -> StoreCommand:
    return StoreCommand(
        requester=Requester(req.namespace, req.tenant_id, req.user_id, _scope(req.scope)),
        fingerprint=fingerprint_from_proto(req.fingerprint),
        answer=Answer(
            text=req.text,
            model=req.model,
            provider=req.provider,
            finish_reason=req.finish_reason,
            input_tokens=req.usage.input_tokens,
            output_tokens=req.usage.output_tokens,
            cached_input_tokens=req.usage.cached_input_tokens,
        ),
        embedding=_vector(req.embedding),
        embedding_model=req.embedding_model,
        mode=_mode(req.mode),
        document_ids=tuple(req.document_ids),
    )


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def answer_to_proto(entry: Entry) -> cache_pb2.CachedAnswer:
    a = entry.answer
    return cache_pb2.CachedAnswer(
        entry_id=str(entry.entry_id),
        text=a.text,
        usage=codec.usage_to_proto(Usage(a.input_tokens, a.output_tokens, a.cached_input_tokens)),
        model=a.model,
        provider=a.provider,
        finish_reason=a.finish_reason,
        create_time=_timestamp(entry.created_ms),
        expire_time=_timestamp(entry.expires_ms),
        document_ids=list(entry.document_ids),
    )


def lookup_to_proto(outcome: LookupOutcome) -> cache_pb2.LookupResponse:
    resp = cache_pb2.LookupResponse(
        tier=codec.cache_tier_to_proto(outcome.tier),
        similarity=outcome.similarity,
        sample_for_quality=outcome.sample_for_quality,
        miss_reason=int(outcome.miss_reason),
        cache_key=outcome.key,
        check_reason=outcome.check_reason,
    )
    if outcome.entry is not None:
        resp.answer.CopyFrom(answer_to_proto(outcome.entry))
    for r in outcome.rejections:
        rejected = resp.rejected_candidates.add(
            entry_id=str(r.entry_id), similarity=r.similarity, check=r.check, detail=r.detail
        )
        if r.score is not None:
            rejected.learned_score = r.score
    return resp


def stats_to_proto(s: NamespaceStats) -> cache_pb2.NamespaceStats:
    return cache_pb2.NamespaceStats(
        namespace=s.namespace,
        entry_count=s.entry_count,
        indexed_count=s.indexed_count,
        exact_hit_count=s.exact_hit_count,
        exact_miss_count=s.exact_miss_count,
        semantic_hit_count=s.semantic_hit_count,
        semantic_miss_count=s.semantic_miss_count,
        stale_hit_count=s.stale_hit_count,
        check_rejection_count=s.check_rejection_count,
        skip_count=s.skip_count,
        store_count=s.store_count,
        eviction_count=s.eviction_count,
        invalidation_count=s.invalidation_count,
        expiry_count=s.expiry_count,
        quality_sample_count=s.quality_sample_count,
        quality_token_f1_mean=s.quality_token_f1_mean,
        quality_embedding_cosine_mean=s.quality_embedding_cosine_mean,
        check_rejection_counts=s.check_rejection_counts,
        false_hit_threshold=s.false_hit_threshold,
    )


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """tollway.cache.v1.CacheService over a :class:`Cache`."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    @rpc_errors(DOMAIN)
    async def Lookup(
        self, request: cache_pb2.LookupRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.LookupResponse:
        return lookup_to_proto(await self.cache.lookup(lookup_from_proto(request)))

    @rpc_errors(DOMAIN)
    async def Store(
        self, request: cache_pb2.StoreRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.StoreResponse:
        outcome = await self.cache.put(store_from_proto(request))
        resp = cache_pb2.StoreResponse(
            stored=outcome.stored,
            entry_id=str(outcome.entry_id) if outcome.stored else "",
            cache_key=outcome.key,
            skip_reason=int(outcome.skip_reason),
            evicted_count=outcome.evicted_count,
        )
        if outcome.stored:
            resp.expire_time.CopyFrom(_timestamp(outcome.expires_ms))
        return resp

    @rpc_errors(DOMAIN)
    async def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.InvalidateResponse:
        removed = await self.cache.invalidate(
            InvalidateTarget(
                document_ids=tuple(request.document_ids),
                prompt_template=request.prompt_template,
                prompt_version=request.prompt_version,
                namespace=request.namespace,
                everything=request.all,
            )
        )
        return cache_pb2.InvalidateResponse(removed_count=removed)

    @rpc_errors(DOMAIN)
    async def GetStats(
        self, request: cache_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.GetStatsResponse:
        rows = await self.cache.stats(request.namespace)
        return cache_pb2.GetStatsResponse(namespaces=[stats_to_proto(s) for s in rows])

    @rpc_errors(DOMAIN)
    async def RecordQualitySample(
        self, request: cache_pb2.RecordQualitySampleRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.RecordQualitySampleResponse:
        result = self.cache.record_quality(
            QualitySample(
                namespace=request.namespace,
                cached_text=request.cached_text,
                fresh_text=request.fresh_text,
                cached_embedding=_vector(request.cached_embedding),
                fresh_embedding=_vector(request.fresh_embedding),
                entry_id=request.entry_id,
            )
        )
        resp = cache_pb2.RecordQualitySampleResponse(token_f1=result.token_f1)
        if result.embedding_cosine is not None:
            resp.embedding_cosine = result.embedding_cosine
        return resp
