"""gRPC <-> domain translation for tollway.retrieval.v1. No retrieval logic lives here."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from tollway.mesh.errors import InvalidArgument, rpc_errors
from tollway.retrieval.retrieval import Retrieval
from tollway.retrieval.search import snippet
from tollway.retrieval.types import (
    Chunking,
    Collection,
    DocState,
    Document,
    EnsembleUnit,
    FieldType,
    Filter,
    FusionMethod,
    Mode,
    Op,
    Operation,
    OpState,
    SearchOptions,
    Strategy,
)
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

DOMAIN = "retrieval.tollway"
SERVICE_NAME = "tollway.retrieval.v1.RetrievalService"

STRATEGY_FROM_PROTO = {
    pb.CHUNKING_STRATEGY_UNSPECIFIED: Strategy.RECURSIVE,
    pb.CHUNKING_STRATEGY_FIXED: Strategy.FIXED,
    pb.CHUNKING_STRATEGY_RECURSIVE: Strategy.RECURSIVE,
    pb.CHUNKING_STRATEGY_HIERARCHICAL: Strategy.HIERARCHICAL,
}
ENSEMBLE_UNIT_FROM_PROTO = {
    pb.ENSEMBLE_UNIT_UNSPECIFIED: None,
    pb.ENSEMBLE_UNIT_WINDOW: EnsembleUnit.WINDOW,
    pb.ENSEMBLE_UNIT_SECTION: EnsembleUnit.SECTION,
}
ENSEMBLE_UNIT_TO_PROTO = {
    None: pb.ENSEMBLE_UNIT_UNSPECIFIED,
    EnsembleUnit.WINDOW: pb.ENSEMBLE_UNIT_WINDOW,
    EnsembleUnit.SECTION: pb.ENSEMBLE_UNIT_SECTION,
}
STRATEGY_TO_PROTO = {
    Strategy.FIXED: pb.CHUNKING_STRATEGY_FIXED,
    Strategy.RECURSIVE: pb.CHUNKING_STRATEGY_RECURSIVE,
    Strategy.HIERARCHICAL: pb.CHUNKING_STRATEGY_HIERARCHICAL,
}
FIELD_FROM_PROTO = {
    pb.FIELD_TYPE_UNSPECIFIED: None,
    pb.FIELD_TYPE_STRING: FieldType.STRING,
    pb.FIELD_TYPE_NUMBER: FieldType.NUMBER,
    pb.FIELD_TYPE_BOOL: FieldType.BOOL,
}
FIELD_TO_PROTO = {v: k for k, v in FIELD_FROM_PROTO.items() if v is not None}
DOC_STATE_TO_PROTO = {
    DocState.PENDING: pb.DOCUMENT_STATE_PENDING,
    DocState.INDEXED: pb.DOCUMENT_STATE_INDEXED,
    DocState.FAILED: pb.DOCUMENT_STATE_FAILED,
}
OP_STATE_TO_PROTO = {
    OpState.QUEUED: pb.OPERATION_STATE_QUEUED,
    OpState.RUNNING: pb.OPERATION_STATE_RUNNING,
    OpState.SUCCEEDED: pb.OPERATION_STATE_SUCCEEDED,
    OpState.FAILED: pb.OPERATION_STATE_FAILED,
    OpState.SUPERSEDED: pb.OPERATION_STATE_SUPERSEDED,
}
MODE_FROM_PROTO = {
    pb.SEARCH_MODE_UNSPECIFIED: Mode.HYBRID,
    pb.SEARCH_MODE_VECTOR: Mode.VECTOR,
    pb.SEARCH_MODE_KEYWORD: Mode.KEYWORD,
    pb.SEARCH_MODE_HYBRID: Mode.HYBRID,
}
MODE_TO_PROTO = {v: k for k, v in MODE_FROM_PROTO.items() if k != pb.SEARCH_MODE_UNSPECIFIED}
FUSION_FROM_PROTO = {pb.FUSION_METHOD_RRF: FusionMethod.RRF, pb.FUSION_METHOD_WEIGHTED: FusionMethod.WEIGHTED}
OP_FROM_PROTO = {
    pb.FILTER_OPERATOR_EQUAL: Op.EQ,
    pb.FILTER_OPERATOR_NOT_EQUAL: Op.NE,
    pb.FILTER_OPERATOR_IN: Op.IN,
    pb.FILTER_OPERATOR_GREATER_THAN: Op.GT,
    pb.FILTER_OPERATOR_GREATER_THAN_OR_EQUAL: Op.GTE,
    pb.FILTER_OPERATOR_LESS_THAN: Op.LT,
    pb.FILTER_OPERATOR_LESS_THAN_OR_EQUAL: Op.LTE,
}


def _enum(table: dict, value: int, field: str) -> Any:  # type: ignore[type-arg]
    if value not in table:
        raise InvalidArgument(f"{field} {value} is not a known value", [(field, "unknown or unspecified value")])
    return table[value]


def _timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _struct(values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(values))
    return s


def _value(v: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(v) if v.WhichOneof("kind") else None


def collection_to_proto(c: Collection) -> pb.Collection:
    return pb.Collection(
        name=c.name,
        description=c.description,
        embedding_model=c.embedding_model,
        chunking=pb.ChunkingConfig(
            strategy=STRATEGY_TO_PROTO[c.chunking.strategy],
            max_tokens=c.chunking.max_tokens,
            overlap_tokens=c.chunking.overlap_tokens,
            parent_max_tokens=c.chunking.parent_max_tokens,
            sentence_window=c.chunking.sentence_window,
        ),
        filterable_fields=[pb.FieldSchema(name=k, type=FIELD_TO_PROTO[v]) for k, v in c.fields.items()],
        document_count=c.document_count,
        chunk_count=c.chunk_count,
        create_time=_timestamp(c.created_ms),
        dimension=c.dimension,
        ensemble_models=list(c.ensemble),
        ensemble_unit=ENSEMBLE_UNIT_TO_PROTO[c.ensemble_unit],
        migration=pb.EmbeddingMigration(
            target_model=c.next_model,
            backfilled_chunk_count=c.backfilled_count,
            chunk_count=c.backfill_total,
            start_time=_timestamp(c.migration_started_ms),
        )
        if c.next_model
        else None,
    )


def document_to_proto(d: Document) -> pb.Document:
    return pb.Document(
        name=d.name,
        title=d.title,
        text=d.text,
        metadata=_struct(d.metadata),
        source_version=d.source_version,
        content_hash=d.content_hash,
        state=DOC_STATE_TO_PROTO[d.state],
        chunk_count=d.chunk_count,
        update_time=_timestamp(d.updated_ms),
        index_time=_timestamp(d.indexed_ms),
    )


def operation_to_proto(op: Operation, doc: Document | None) -> pb.Operation:
    out = pb.Operation(
        name=op.name,
        done=op.state.done,
        metadata=pb.IngestProgress(
            document=f"collections/{op.collection_id}/documents/{op.document_id}",
            content_hash=op.content_hash,
            state=OP_STATE_TO_PROTO[op.state],
            chunk_count=op.chunk_count,
            embedded_chunk_count=op.embedded_count,
            attempt_count=op.attempts,
            unchanged=op.unchanged,
            create_time=_timestamp(op.created_ms),
            update_time=_timestamp(op.updated_ms),
        ),
    )
    if op.state is OpState.FAILED:
        out.error.CopyFrom(pb.OperationError(code=op.error_code, reason=op.error_reason, message=op.error_message))
    elif op.state is OpState.SUPERSEDED:
        out.error.CopyFrom(
            pb.OperationError(code=10, reason="SUPERSEDED", message="newer content or a deletion replaced it")
        )
    elif op.state is OpState.SUCCEEDED and doc is not None:
        out.response.CopyFrom(document_to_proto(doc))
    return out


def search_from_proto(req: pb.SearchRequest, retrieval: Retrieval) -> SearchOptions:
    limits = retrieval.limits
    filters = []
    for i, f in enumerate(req.filters):
        filters.append(
            Filter(
                field=f.field,
                op=_enum(OP_FROM_PROTO, f.operator, f"filters[{i}].operator"),
                value=_value(f.value) if f.HasField("value") else None,
                values=[_value(v) for v in f.values],
            )
        )
    fusion = (
        FUSION_FROM_PROTO[req.fusion.method]
        if req.fusion.method in FUSION_FROM_PROTO
        else FusionMethod(limits.default_fusion)
    )
    return SearchOptions(
        query=req.query,
        top_k=req.top_k or 10,
        mode=_enum(MODE_FROM_PROTO, req.mode, "mode"),
        fusion=fusion,
        keyword_weight=req.fusion.keyword_weight if req.fusion.HasField("keyword_weight") else None,
        rrf_k=req.fusion.rrf_k or 60,
        filters=filters,
        mmr=req.rerank.mmr,
        mmr_lambda=req.rerank.mmr_lambda if req.rerank.HasField("mmr_lambda") else 0.7,
        feedback_count=req.rerank.feedback_count
        if req.rerank.HasField("feedback_count")
        else limits.default_feedback_count,
        group_by_document=req.group_by_document,
        bigram_weight=req.keyword_bigram_weight
        if req.HasField("keyword_bigram_weight")
        else limits.default_bigram_weight,
        ensemble_weight=req.ensemble_weight if req.HasField("ensemble_weight") else limits.default_ensemble_weight,
    )


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """tollway.retrieval.v1.RetrievalService over a :class:`Retrieval`."""

    def __init__(self, retrieval: Retrieval) -> None:
        self.retrieval = retrieval

    @rpc_errors(DOMAIN)
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        c = request.collection
        fields: dict[str, FieldType | None] = {}
        for i, f in enumerate(c.filterable_fields):
            if f.name in fields:
                raise InvalidArgument(f"filterable field {f.name!r} is declared twice",
                                      [(f"collection.filterable_fields[{i}].name", "declared twice")])  # fmt: skip
            fields[f.name] = _enum(FIELD_FROM_PROTO, f.type, f"collection.filterable_fields[{i}].type")
        col = await self.retrieval.create_collection(
            request.collection_id,
            embedding_model=c.embedding_model,
            chunking=Chunking(
                _enum(STRATEGY_FROM_PROTO, c.chunking.strategy, "collection.chunking.strategy"),
                c.chunking.max_tokens,
                c.chunking.overlap_tokens,
                c.chunking.parent_max_tokens,
                c.chunking.sentence_window,
            ),
            fields=fields,
            description=c.description,
            ensemble_models=list(c.ensemble_models),
            ensemble_unit=_enum(ENSEMBLE_UNIT_FROM_PROTO, c.ensemble_unit, "collection.ensemble_unit"),
        )
        return pb.CreateCollectionResponse(collection=collection_to_proto(col))

    @rpc_errors(DOMAIN)
    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCollectionResponse:
        return pb.GetCollectionResponse(
            collection=collection_to_proto(await self.retrieval.get_collection(request.name))
        )

    @rpc_errors(DOMAIN)
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        page = await self.retrieval.list_collections(request.page_size, request.page_token)
        return pb.ListCollectionsResponse(
            collections=[collection_to_proto(c) for c in page.items], next_page_token=page.next_page_token
        )

    @rpc_errors(DOMAIN)
    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCollectionResponse:
        return pb.DeleteCollectionResponse(deleted_document_count=await self.retrieval.delete_collection(request.name))

    @rpc_errors(DOMAIN)
    async def MigrateCollection(
        self, request: pb.MigrateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.MigrateCollectionResponse:
        col = await self.retrieval.migrate(request.name, request.embedding_model)
        return pb.MigrateCollectionResponse(collection=collection_to_proto(col))

    @rpc_errors(DOMAIN)
    async def UpsertDocument(
        self, request: pb.UpsertDocumentRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertDocumentResponse:
        d = request.document
        op = await self.retrieval.upsert(
            request.parent,
            request.document_id,
            text=d.text,
            title=d.title,
            metadata=json_format.MessageToDict(d.metadata),
            source_version=d.source_version,
        )
        doc = await self.retrieval.operation_document(op)
        return pb.UpsertDocumentResponse(operation=operation_to_proto(op, doc))

    @rpc_errors(DOMAIN)
    async def GetDocument(
        self, request: pb.GetDocumentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDocumentResponse:
        return pb.GetDocumentResponse(document=document_to_proto(await self.retrieval.get_document(request.name)))

    @rpc_errors(DOMAIN)
    async def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDocumentsResponse:
        page = await self.retrieval.list_documents(request.parent, request.page_size, request.page_token)
        return pb.ListDocumentsResponse(
            documents=[document_to_proto(d) for d in page.items], next_page_token=page.next_page_token
        )

    @rpc_errors(DOMAIN)
    async def DeleteDocument(
        self, request: pb.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentResponse:
        return pb.DeleteDocumentResponse(removed_chunk_count=await self.retrieval.delete_document(request.name))

    @rpc_errors(DOMAIN)
    async def GetOperation(
        self, request: pb.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOperationResponse:
        op = await self.retrieval.get_operation(request.name)
        return pb.GetOperationResponse(operation=operation_to_proto(op, await self.retrieval.operation_document(op)))

    @rpc_errors(DOMAIN)
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        opts = search_from_proto(request, self.retrieval)
        col, outcome = await self.retrieval.search(
            request.collection,
            opts,
            query_embedding=list(request.query_embedding),
            query_embedding_model=request.query_embedding_model,
        )
        results = [
            pb.SearchResult(
                document=f"{col.name}/documents/{h.chunk.document_id}",
                chunk_id=h.chunk.chunk_id,
                score=h.score,
                snippet=snippet(h.chunk.text, request.query),
                text=h.chunk.text,
                parent_text=h.chunk.parent_text,
                title=h.chunk.title,
                metadata=_struct(h.chunk.metadata),
                vector_score=h.vector_score,
                keyword_score=h.keyword_score,
            )
            for h in outcome.hits
        ]
        return pb.SearchResponse(
            results=results,
            mode=MODE_TO_PROTO[opts.mode],
            embedding_model="" if opts.mode is Mode.KEYWORD else col.embedding_model,
            candidate_count=outcome.candidate_count,
            ensemble_models=[] if opts.mode is Mode.KEYWORD else list(col.ensemble),
        )
