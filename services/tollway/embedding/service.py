"""gRPC <-> domain translation for tollway.embedding.v1. No embedding logic lives here."""

from __future__ import annotations

import grpc

from tollway.embedding.embedder import Embedder, EmbedOutcome, ModelInfo
from tollway.embedding.model import InputType
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.mesh.errors import InvalidArgument, rpc_errors

SERVICE_NAME = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name

INPUT_TYPE_FROM_PROTO = {
    embedding_pb2.INPUT_TYPE_UNSPECIFIED: None,
    embedding_pb2.INPUT_TYPE_QUERY: InputType.QUERY,
    embedding_pb2.INPUT_TYPE_DOCUMENT: InputType.DOCUMENT,
}


def input_type_from_proto(value: int) -> InputType | None:
    """The domain input type of an EmbedRequest.

    Raises:
        InvalidArgument: A value this version does not know.
    """
    if value not in INPUT_TYPE_FROM_PROTO:
        raise InvalidArgument(
            f"input_type {value} is not a known value; use INPUT_TYPE_QUERY or INPUT_TYPE_DOCUMENT",
            [("input_type", "unknown value")],
            reason="UNKNOWN_INPUT_TYPE",
        )
    return INPUT_TYPE_FROM_PROTO[value]


def outcome_to_proto(outcome: EmbedOutcome) -> embedding_pb2.EmbedResponse:
    """Builds the Embed response from the domain outcome."""
    return embedding_pb2.EmbedResponse(
        embeddings=[
            embedding_pb2.Embedding(values=row, truncated=truncated)
            for row, truncated in zip(outcome.vectors.tolist(), outcome.truncated, strict=True)
        ],
        dimension=outcome.dimension,
        model=outcome.model_id,
        cache_hit_count=outcome.cache_hit_count,
    )


def model_to_proto(info: ModelInfo) -> embedding_pb2.Model:
    """Describes one served model."""
    return embedding_pb2.Model(
        id=info.model_id,
        dimension=info.dimension,
        max_tokens=info.max_tokens,
        description=info.description,
        asymmetric=info.asymmetric,
    )


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """Serves tollway.embedding.v1.EmbeddingService from an :class:`Embedder`."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    @rpc_errors("embedding.tollway")
    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        input_type = input_type_from_proto(request.input_type)
        return outcome_to_proto(await self.embedder.embed(list(request.texts), request.model, input_type))

    @rpc_errors("embedding.tollway")
    async def ListModels(
        self, request: embedding_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.ListModelsResponse:
        return embedding_pb2.ListModelsResponse(
            models=[model_to_proto(m) for m in self.embedder.list_models()],
            default_model=self.embedder.default_model_id,
        )
